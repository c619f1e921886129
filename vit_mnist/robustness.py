"""Hydra entry point: a corruption benchmark (MNIST-C and other handwriting shifts) for one or more checkpoints."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics.classification import MulticlassAccuracy

from vit_mnist.config import CONFIG_DIR, checkpoint_entry_main, run_job
from vit_mnist.data.corruptions import KINDS, corrupt
from vit_mnist.data.other_writers import DESCRIPTION as OTHER_WRITERS, load_other_writers
from vit_mnist.data.pen_photos import DESCRIPTION as PEN_PHOTOS, PEN_PHOTOS_IMAGES, make_pen_photos
from vit_mnist.data.sources import is_handwritten
from vit_mnist.errors import UserError
from vit_mnist.reports.classification import write_atomic, write_json
from vit_mnist.training.tta import tta_logits

log = logging.getLogger(__name__)

SEVERITIES = (1, 2, 3, 4, 5)
SUITE_FILE = CONFIG_DIR / "robustness.yaml"
OUTPUT_FILES = ("robustness.md", "robustness.json", "robustness.csv", "robustness.png", "robustness_examples.png")
# Digits that reach the model the way a user's do, through predict's preprocessing (MNIST models only); each is
# reported apart from the mCA. name -> (row label, what it is)
DIGIT_SETS = {"other_writers": ("other writers", OTHER_WRITERS), "pen_photos": ("pen photos", PEN_PHOTOS)}


# ------------------------------------------------------------------------------------------------ the suite

@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption of the benchmark, at one severity."""

    name: str
    kind: str
    severity: int
    level: Any  # the kind's parameter at that severity
    source: str  # mnist-c or handwriting
    seen_with: tuple[str, ...]  # data.augment keys whose training distortions resemble it


def _severity(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in SEVERITIES:
        raise UserError(f"{where}={value!r} is not a severity: use a whole number from 1 (mildest) to 5 (worst), "
                        f"e.g. severity=3, or severity=null for each corruption's own (the paper's) level.")
    return value


def build_suite(corruptions: Any, severity: Any = None, only: Sequence[str] | None = None) -> list[CorruptionSpec]:
    """The corruptions of a `corruptions:` table (conf/robustness.yaml), checked; `only` picks some by name."""
    table = OmegaConf.to_container(corruptions, resolve=True) if isinstance(corruptions, DictConfig) else corruptions
    if not isinstance(table, dict) or not table:
        raise UserError("The robustness config has no `corruptions:` table: see conf/robustness.yaml for its form.")
    if severity is not None:
        severity = _severity(severity, "severity")
    only = list(only or [])
    unknown = [n for n in only if n not in table]
    if unknown:
        raise UserError(f"only={unknown} names no corruption of the benchmark: choose from {list(table)}, "
                        "e.g. 'only=[fog,stripe]', or leave `only` out to run them all.")
    suite = []
    for name, entry in table.items():
        if only and name not in only:
            continue
        kind = entry.get("kind", name)
        if kind not in KINDS:
            raise UserError(f"corruptions.{name}.kind={kind!r} is not a corruption this project implements: use one "
                            f"of {sorted(KINDS)}.")
        levels = entry.get("levels")
        if not isinstance(levels, list) or len(levels) != len(SEVERITIES):
            raise UserError(f"corruptions.{name}.levels must list the parameter at each of the {len(SEVERITIES)} "
                            f"severities, got {levels!r}.")
        level_index = severity if severity is not None else _severity(entry.get("severity"),
                                                                       f"corruptions.{name}.severity")
        suite.append(CorruptionSpec(name, kind, level_index, levels[level_index - 1], str(entry.get("source", "")),
                                    tuple(entry.get("seen_with") or ())))
    return suite


def load_suite(num_images: int | None = None, severity: Any = None, only: Sequence[str] | None = None
               ) -> list[CorruptionSpec]:
    """The benchmark of conf/robustness.yaml, for training runs that report robustness after their test."""
    return build_suite(OmegaConf.load(SUITE_FILE)["corruptions"], severity, only)


def augmentation_keys_on(augment: dict | None) -> set[str]:
    """The data.augment keys a training run used (a range that is not zero, a flag that is on)."""
    on = set()
    for key, value in (augment or {}).items():
        if key == "scale":
            low, high = (list(value) + [1.0, 1.0])[:2] if isinstance(value, (list, tuple, ListConfig)) else (1.0, 1.0)
            if (float(low), float(high)) != (1.0, 1.0):
                on.add(key)
        elif isinstance(value, bool):
            if value:
                on.add(key)
        elif isinstance(value, (int, float)) and value:
            on.add(key)
    return on


def seen_names(suite: Sequence[CorruptionSpec], augment: dict | None) -> list[str]:
    """The corruptions that resemble a training run's augmentations ("seen kinds")."""
    on = augmentation_keys_on(augment)
    return [c.name for c in suite if on.intersection(c.seen_with)]


# ----------------------------------------------------------------------------------------------- evaluation

@dataclass
class ModelResult:
    """One checkpoint's accuracy on the clean and every corrupted test set."""

    name: str
    source: str
    clean: float
    accuracy: dict[str, float]
    seen: list[str]
    num_parameters: int = 0
    arch: str = "vit"
    # accuracy on each of DIGIT_SETS that was measured (MNIST models only)
    digit_sets: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, list[int]] = field(default_factory=dict)  # the example digits' predicted classes

    @property
    def other_writers(self) -> float | None:
        """Accuracy on digits by writers outside MNIST (None: not measured)."""
        return self.digit_sets.get("other_writers")

    @property
    def mca(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else math.nan

    @property
    def unseen_mca(self) -> float:
        unseen = [v for k, v in self.accuracy.items() if k not in self.seen]
        return sum(unseen) / len(unseen) if unseen else math.nan

    def worst(self, n: int = 3) -> list[tuple[str, float]]:
        return sorted(self.accuracy.items(), key=lambda kv: kv[1])[:n]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "ckpt_path": self.source, "arch": self.arch, "num_parameters": self.num_parameters,
            "clean_acc": self.clean, "mca": self.mca, "unseen_mca": self.unseen_mca,
            **{f"{name}_acc": self.digit_sets.get(name) for name in DIGIT_SETS},
            "mean_drop": self.clean - self.mca if self.accuracy else math.nan,
            "seen": self.seen, "worst": [{"corruption": k, "acc": v} for k, v in self.worst()],
            "acc": self.accuracy,
        }


class Scorer:
    """A model ready to score uint8 images: the module, its normalisation, its test-time augmentation, its device."""

    def __init__(self, module: torch.nn.Module, mean: float, std: float, tta: bool, device: torch.device,
                 num_classes: int, batch_size: int):
        self.module, self.mean, self.std, self.tta = module.eval().to(device), mean, std, tta
        self.device, self.num_classes, self.batch_size = device, num_classes, batch_size

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes of uint8 (N, 1, H, W), batch by batch as `evaluate` runs them (same numbers)."""
        preds = []
        for start in range(0, len(images), self.batch_size):
            x = images[start:start + self.batch_size].to(self.device).float().div_(255.0)
            x = (x - self.mean) / self.std  # the data module's transform, op for op
            logits = tta_logits(self.module, x) if self.tta else self.module(x)
            preds.append(logits.argmax(dim=-1).cpu())
        return torch.cat(preds)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        preds = self.predict(images)
        metric = MulticlassAccuracy(self.num_classes, average="micro")
        return float(metric(preds, labels)), preds


def load_digit_set(name: str, images: torch.Tensor, labels: torch.Tensor, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One of DIGIT_SETS as uint8 (N, 1, 28, 28) images in the MNIST layout and their labels."""
    if name == "other_writers":
        return load_other_writers()
    return make_pen_photos(images[:PEN_PHOTOS_IMAGES], seed), labels[:PEN_PHOTOS_IMAGES]


def run_suite(scorers: Sequence[tuple[str, str, Scorer, list[str], dict]], images: torch.Tensor, labels: torch.Tensor,
              suite: Sequence[CorruptionSpec], seed: int = 0, examples: int = 6, digit_sets: Sequence[str] = ()
              ) -> tuple[list[ModelResult], dict[str, torch.Tensor]]:
    """Every model on the clean images, on each corruption (each corrupted once, shared by the models) and on
    each of `digit_sets` (names in DIGIT_SETS: digits through predict's preprocessing).

    Returns the results and the first `examples` images of each set for the examples figure.
    """
    results = []
    shown = {"clean": images[:examples]}
    for name, source, scorer, seen, extra in scorers:
        clean, preds = scorer.accuracy(images, labels)
        predictions = {"_targets": labels[:examples].tolist(), "clean": preds[:examples].tolist()}
        results.append(ModelResult(name, source, clean, {}, seen, predictions=predictions, **extra))
    for set_name in digit_sets:
        set_images, set_labels = load_digit_set(set_name, images, labels, seed)
        for result, (_, _, scorer, _, _) in zip(results, scorers):
            result.digit_sets[set_name] = scorer.accuracy(set_images, set_labels)[0]
        log.info("%-14s %s", set_name, "  ".join(f"{r.digit_sets[set_name]:.4f}" for r in results))
    for spec in suite:
        started = time.perf_counter()
        corrupted = corrupt(images, spec.kind, spec.level, seed=seed, name=spec.name)
        shown[spec.name] = corrupted[:examples]
        for result, (_, _, scorer, _, _) in zip(results, scorers):
            acc, preds = scorer.accuracy(corrupted, labels)
            result.accuracy[spec.name] = acc
            result.predictions[spec.name] = preds[:examples].tolist()
        log.info("%-14s %s  (%.1f s)", spec.name, "  ".join(f"{r.accuracy[spec.name]:.4f}" for r in results),
                 time.perf_counter() - started)
    return results, shown


# -------------------------------------------------------------------------------------------------- reports

def _pct(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def robustness_markdown(results: Sequence[ModelResult], suite: Sequence[CorruptionSpec], num_images: int,
                        seed: int) -> str:
    """The side-by-side table: accuracy (%) per corruption, clean, mCA, unseen mean, drops from clean."""
    names = [r.name for r in results]
    lines = ["# Robustness", "",
             f"Accuracy (%) on {num_images} official test images, clean and corrupted (seed {seed}). "
             "mCA: mean corruption accuracy over the corruptions below; unseen: the mean over those that resemble "
             "none of the model's training augmentations (a `*` marks a seen kind).", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| **clean** | " + " | ".join(f"**{_pct(r.clean)}**" for r in results) + " |")
    lines.append("| **mCA** | " + " | ".join(f"**{_pct(r.mca)}**" for r in results) + " |")
    lines.append("| **unseen mean** | " + " | ".join(f"**{_pct(r.unseen_mca)}**" for r in results) + " |")
    for name, (label, _) in _measured_sets(results).items():
        lines.append(f"| **{label}** | " + " | ".join(f"**{_pct(r.digit_sets.get(name))}**" for r in results) + " |")
    lines.append("| drop from clean | " + " | ".join(_pct(r.clean - r.mca) for r in results) + " |")
    for spec in suite:
        cells = [f"{_pct(r.accuracy[spec.name])}{'*' if spec.name in r.seen else ''}" for r in results]
        lines.append(f"| {spec.name} (s{spec.severity}) | " + " | ".join(cells) + " |")
    lines += ["", "| model | checkpoint | parameters | worst three |", "|---|---|---:|---|"]
    for r in results:
        worst = ", ".join(f"{k} {_pct(v)}" for k, v in r.worst())
        lines.append(f"| {r.name} | `{r.source}` | {r.num_parameters:,} | {worst} |")
    lines += ["", "Corruptions: " + "; ".join(f"{s.name} = {s.kind} at severity {s.severity} ({s.level}, {s.source})"
                                               for s in suite) + ".", ""]
    for label, description in _measured_sets(results).values():
        lines += [f"{label.capitalize()}: {description}; not part of mCA.", ""]
    return "\n".join(lines)


def _measured_sets(results: Sequence[ModelResult]) -> dict[str, tuple[str, str]]:
    """The entries of DIGIT_SETS that some model was scored on."""
    return {k: v for k, v in DIGIT_SETS.items() if any(k in r.digit_sets for r in results)}


def robustness_csv(results: Sequence[ModelResult], suite: Sequence[CorruptionSpec]) -> str:
    """Rows: clean, mca, unseen_mca, then each corruption; one accuracy column per model (fractions)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["corruption", "severity", "source", *[r.name for r in results]])
    writer.writerow(["clean", "", "", *[f"{r.clean:.6f}" for r in results]])
    writer.writerow(["mca", "", "", *[f"{r.mca:.6f}" for r in results]])
    writer.writerow(["unseen_mca", "", "", *[f"{r.unseen_mca:.6f}" for r in results]])
    for name in _measured_sets(results):
        writer.writerow([name, "", "deployment", *["" if r.digit_sets.get(name) is None
                                                   else f"{r.digit_sets[name]:.6f}" for r in results]])
    for spec in suite:
        writer.writerow([spec.name, spec.severity, spec.source, *[f"{r.accuracy[spec.name]:.6f}" for r in results]])
    return buffer.getvalue()


def robustness_json(results: Sequence[ModelResult], suite: Sequence[CorruptionSpec], num_images: int, seed: int
                    ) -> dict[str, Any]:
    return {
        "num_images": num_images, "seed": seed,
        "corruptions": [{"name": s.name, "kind": s.kind, "severity": s.severity, "level": s.level,
                         "source": s.source, "seen_with": list(s.seen_with)} for s in suite],
        "models": [r.summary() for r in results],
    }


def write_reports(results: Sequence[ModelResult], suite: Sequence[CorruptionSpec], shown: dict[str, torch.Tensor],
                  out_dir: Path, class_names: list[str], num_images: int, seed: int, loggers: Sequence[Any] = (),
                  step: int = 0) -> dict[str, Path]:
    """robustness.md/.json/.csv, the bar chart and the examples figure into `out_dir`, and TensorBoard entries."""
    from vit_mnist.reports.classification import tensorboard_writers
    from vit_mnist.reports.figures import figure_to_array, robustness_examples_figure, robustness_figure, save_figure

    paths = {name: out_dir / name for name in OUTPUT_FILES}
    markdown = robustness_markdown(results, suite, num_images, seed)
    write_json(paths["robustness.json"], robustness_json(results, suite, num_images, seed))
    write_atomic(paths["robustness.csv"], robustness_csv(results, suite))
    write_atomic(paths["robustness.md"], markdown)
    save_figure(robustness_figure(results, [s.name for s in suite]), paths["robustness.png"])
    save_figure(robustness_examples_figure(shown, results[0], class_names), paths["robustness_examples.png"])
    for writer in tensorboard_writers(list(loggers)):
        for r in results:
            prefix = "robustness" if len(results) == 1 else f"robustness/{r.name}"
            writer.add_scalar(f"{prefix}/clean", r.clean, step)
            writer.add_scalar(f"{prefix}/mca", r.mca, step)
            writer.add_scalar(f"{prefix}/unseen_mca", r.unseen_mca, step)
            for name, acc in r.digit_sets.items():
                writer.add_scalar(f"{prefix}/{name}", acc, step)
            for name, acc in r.accuracy.items():
                writer.add_scalar(f"{prefix}/acc/{name}", acc, step)
        writer.add_image("robustness/accuracy", figure_to_array(paths["robustness.png"]), step, dataformats="HWC")
        writer.add_image("robustness/examples", figure_to_array(paths["robustness_examples.png"]), step,
                         dataformats="HWC")
        writer.add_text("robustness/table", markdown, step)
        writer.flush()
    return paths


def print_results(results: Sequence[ModelResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Robustness (accuracy %)")
    table.add_column("")
    for r in results:
        table.add_column(r.name, justify="right")
    for label, fn in (("clean", lambda r: r.clean), ("mCA", lambda r: r.mca), ("unseen mean", lambda r: r.unseen_mca)):
        table.add_row(label, *[_pct(fn(r)) for r in results])
    for name, (label, _) in _measured_sets(results).items():
        table.add_row(label, *[_pct(r.digit_sets.get(name)) for r in results])
    for name in results[0].accuracy:
        table.add_row(name, *[_pct(r.accuracy[name]) + ("*" if name in r.seen else "") for r in results])
    Console().print(table)


# --------------------------------------------------------------------------------------- for a training run

def training_robustness(module: Any, datamodule: Any, augment: dict | None, out_dir: Path, loggers: Sequence[Any],
                        step: int, num_images: int | None = None, seed: int = 0) -> dict[str, float]:
    """After a training run's test: the benchmark on the tested weights; returns the metrics.json entries."""
    suite = load_suite()
    datamodule.setup("test")
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if num_images:
        images, labels = images[:num_images], labels[:num_images]
    device = next(module.parameters()).device
    scorer = Scorer(module, datamodule.mean, datamodule.std, bool(module.hparams.get("tta", False)), device,
                    len(datamodule.class_names), datamodule.hparams.eval_batch_size)
    extra = {"num_parameters": module.num_parameters, "arch": str(module.hparams.model.get("arch", "vit"))}
    was_training = module.training
    sets = list(DIGIT_SETS) if reads_digits(datamodule.hparams.name) else []
    results, shown = run_suite([("this run", str(out_dir), scorer, seen_names(suite, augment), extra)], images, labels,
                               suite, seed, digit_sets=sets)
    module.train(was_training)
    write_reports(results, suite, shown, out_dir, datamodule.class_names, len(labels), seed, loggers, step)
    r = results[0]
    sets = {f"test/{name}": acc for name, acc in r.digit_sets.items()}
    return {"test/mca": r.mca, "test/mca_unseen": r.unseen_mca, **sets, "test/acc_clean_suite": r.clean,
            "robustness_images": len(labels), **{f"test/corrupt/{k}": v for k, v in r.accuracy.items()}}


def reads_digits(dataset: str) -> bool:
    """Whether DIGIT_SETS are a fair test: the model was trained on handwritten digits."""
    return is_handwritten(dataset)


# ------------------------------------------------------------------------------------------------ the entry

def checkpoint_list(cfg: DictConfig) -> list[str]:
    paths = [str(p) for p in (cfg.get("ckpt_paths") or [])]
    if cfg.get("ckpt_path"):
        paths.insert(0, str(cfg.ckpt_path))
    return paths


def model_names(cfg: DictConfig, paths: Sequence[str]) -> list[str]:
    """Names for the table: `names=[...]`, else each checkpoint's run folder (made unique)."""
    given = [str(n) for n in (cfg.get("names") or [])]
    if given and len(given) != len(paths):
        raise UserError(f"names={given} has {len(given)} names for {len(paths)} checkpoints: give one name per "
                        "checkpoint, in the same order, or leave `names` out.")
    if given:
        return given
    names = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        base = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def check_config(cfg: DictConfig) -> list[dict[str, Any]]:
    """Check the benchmark config and every checkpoint before any work; return the checkpoints' contents."""
    from vit_mnist.checkpoints import read_checkpoint
    from vit_mnist.evaluate import check_matches_data

    paths = checkpoint_list(cfg)
    if not paths:
        raise UserError("No checkpoint to test: add ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt, or "
                        "several as 'ckpt_paths=[a.ckpt,b.ckpt]'.")
    build_suite(cfg.corruptions, cfg.get("severity"), list(cfg.get("only") or []))
    num_images = cfg.get("num_images")
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1):
        raise UserError(f"num_images={num_images!r} must be a positive whole number (the first N test images), "
                        "or null for all of them.")
    for key in ("batch_size", "examples"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{key}={value!r} must be a positive whole number.")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise UserError(f"seed={cfg.get('seed')!r} must be a whole number: it fixes the corrupted images.")
    model_names(cfg, paths)
    ckpts = []
    for i, path in enumerate(paths):
        key = "ckpt_path" if cfg.get("ckpt_path") and i == 0 else f"ckpt_paths[{i - bool(cfg.get('ckpt_path'))}]"
        ckpt = read_checkpoint(path, key)
        check_matches_data(ckpt, cfg.data.name, path)
        ckpts.append(ckpt)
    resolve_device(cfg.get("device", "auto"))
    return ckpts


def resolve_device(setting: Any) -> torch.device:
    if setting in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(setting))
    except RuntimeError as e:
        raise UserError(f"device={setting!r} is not a device: use auto, cpu or cuda (cuda:1 for another GPU).") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={setting} but no GPU is usable here: use device=auto or device=cpu.")
    return device


def robustness(cfg: DictConfig) -> dict[str, Any]:
    """Run the benchmark for every checkpoint of `cfg`; write the reports; return the JSON summary."""
    from vit_mnist.checkpoints import load_module
    from vit_mnist.train import instantiate_group

    started = time.perf_counter()
    ckpts = check_config(cfg)
    paths = checkpoint_list(cfg)
    names = model_names(cfg, paths)
    suite = build_suite(cfg.corruptions, cfg.get("severity"), list(cfg.get("only") or []))
    out_dir = Path(cfg.paths.output_dir)
    device = resolve_device(cfg.get("device", "auto"))
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.test_set.images, datamodule.test_set.labels
    if cfg.get("num_images"):
        images, labels = images[: cfg.num_images], labels[: cfg.num_images]
    scorers = []
    for name, path, ckpt in zip(names, paths, ckpts):
        module = load_module(path)
        tta = bool(module.hparams.get("tta", False)) if cfg.get("tta") is None else bool(cfg.tta)
        augment = (ckpt.get("datamodule_hyper_parameters") or {}).get("augment")
        scorer = Scorer(module, datamodule.mean, datamodule.std, tta, device, len(datamodule.class_names),
                        int(cfg.batch_size))
        extra = {"num_parameters": module.num_parameters, "arch": str(module.hparams.model.get("arch", "vit"))}
        scorers.append((name, str(Path(path).expanduser().resolve()), scorer, seen_names(suite, augment), extra))
    sets = [name for name in DIGIT_SETS if bool(cfg.get(name, True))] if reads_digits(cfg.data.name) else []
    results, shown = run_suite(scorers, images, labels, suite, int(cfg.seed), int(cfg.examples), sets)
    loggers = instantiate_group(cfg.get("logger"))
    write_reports(results, suite, shown, out_dir, datamodule.class_names, len(labels), int(cfg.seed), loggers)
    for logger in loggers:
        logger.finalize("success")
    summary = robustness_json(results, suite, len(labels), int(cfg.seed))
    summary["wall_time_s"] = round(time.perf_counter() - started, 2)
    summary["device"] = str(device)
    write_json(out_dir / "metrics.json", {"status": "ok", "models": [
        {"name": r.name, "clean_acc": r.clean, "mca": r.mca, "unseen_mca": r.unseen_mca,
         **{f"{name}_acc": r.digit_sets.get(name) for name in DIGIT_SETS}} for r in results],
        "wall_time_s": summary["wall_time_s"]})
    print_results(results)
    print(f"reports in {out_dir}")
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="robustness")
def hydra_main(cfg: DictConfig) -> float | None:
    """The first checkpoint's mCA (for sweeps over the benchmark's settings)."""
    summary = run_job(cfg, robustness, failed=None)
    return None if summary is None else summary["models"][0]["mca"]


def main() -> None:
    """Check the checkpoint and config before Hydra makes a folder, then run."""
    checkpoint_entry_main("robustness", check_config, hydra_main)


if __name__ == "__main__":
    main()
