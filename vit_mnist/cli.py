"""The `vit-mnist` command: `vit-mnist <command> [hydra overrides]`, the same as `python -m vit_mnist.<command>`."""

from __future__ import annotations

import difflib
import runpy
import sys
import textwrap

from vit_mnist.errors import UserError, report

# command -> (module whose main() runs it, one line for `vit-mnist --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vit_mnist.train", "train a model (the ViT, or model=cnn) and test its best checkpoint"),
    "evaluate": ("vit_mnist.evaluate", "test a checkpoint and write its reports into a run folder"),
    "calibrate": ("vit_mnist.calibrate", "fit the temperature and the out-of-domain detector into a checkpoint"),
    "robustness": ("vit_mnist.robustness", "accuracy of checkpoints on corrupted MNIST test images (MNIST-C)"),
    "predict": ("vit_mnist.predict", "classify your own image files with a checkpoint (table or JSON)"),
    "export": ("vit_mnist.export", "export a checkpoint to ONNX or TorchScript, checked against PyTorch"),
    "serve": ("vit_mnist.serve", "the digit-drawing web app and its JSON API"),
    "bench": ("vit_mnist.bench", "training and inference images/s of the ViT on this device"),
    "sweep-report": ("vit_mnist.sweep_report", "summarise a multirun folder into sweep_summary.md, .csv, .png"),
}


def usage() -> str:
    """The text of `vit-mnist --help`: every command with one line."""
    width = max(map(len, COMMANDS)) + 2
    lines = [
        "usage: vit-mnist <command> [hydra overrides ...]",
        "",
        *textwrap.wrap(
            "Vision Transformers (and a CNN baseline) on MNIST-family datasets. `vit-mnist <command> ...` is "
            "`python -m vit_mnist.<command> ...` (sweep-report: vit_mnist.sweep_report) and takes the same Hydra "
            "overrides, such as model.depth=6; `vit-mnist <command> --help` lists its options.", width=100),
        "",
        "commands:",
        *(f"  {name:<{width}}{summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}show this message",
        f"  {'--version':<{width}}print the version",
    ]
    return "\n".join(lines)


def resolve(command: str) -> str:
    """The module that runs `command` (`sweep_report` is accepted for `sweep-report`); a `UserError` if unknown."""
    name = command.replace("_", "-")
    if name in COMMANDS:
        return COMMANDS[name][0]
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f" Did you mean `vit-mnist {close[0]}`?" if close else ""
    raise UserError(f"`{command}` is not a vit-mnist command.{hint} The commands are: {', '.join(COMMANDS)}; "
                    "`vit-mnist --help` says what each does.")


def main(argv: list[str] | None = None) -> None:
    """Run the command that `argv` (default: the command line) names with the rest of `argv` as its arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        print(usage())
        return
    if command == "--version":
        from vit_mnist.version import __version__

        print(f"vit-mnist {__version__}")
        return
    try:
        module = resolve(command)
    except UserError as e:
        report(e)
    # Exactly `python -m <module> <rest>`: Hydra names the job after the module's file as then, and Lightning's
    # DDP launcher, which restarts `python -m <__main__'s module> <sys.argv[1:]>` per rank, starts the same.
    sys.argv = [sys.argv[0], *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
