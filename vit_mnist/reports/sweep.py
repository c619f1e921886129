"""The sweep summary of a Hydra multirun folder: one row per job in sweep_summary.md/.csv and an accuracy-vs-size plot."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vit_mnist.errors import UserError
from vit_mnist.reports.figures import save_figure
from vit_mnist.reports.files import write_atomic

SUMMARY_STEM = "sweep_summary"
# model.* keys that describe a ViT's shape, shown as their own columns.
SHAPE_KEYS = ("patch_size", "depth", "heads", "hidden_dim")


@dataclass
class JobRow:
    """One job of a sweep as it appears in the summary."""

    job: str
    # ok, pruned (stopped early by an Optuna pruner), failed, or incomplete (no metrics.json: running, or killed)
    status: str
    val_acc_best: float | None
    test_acc: float | None
    test_mca: float | None  # mean corruption accuracy, when the jobs ran the benchmark (robustness=true)
    test_other_writers: float | None  # accuracy on the digits of writers outside MNIST (vit_mnist.data.other_writers)
    test_pen_photos: float | None  # accuracy on test digits photographed as fine-pen notes (vit_mnist.data.pen_photos)
    num_parameters: int | None
    patch_size: int | None
    depth: int | None
    heads: int | None
    hidden_dim: int | None
    epochs: int | None
    train_time_s: float | None  # the training loop alone (the fit, without validation's and the after-fit's time)
    wall_time_s: float | None  # the whole job, from the start of the entry point to its metrics.json
    train_images_per_s: float | None
    overrides: str
    error: str
    override_list: tuple[str, ...] = field(default=(), repr=False)  # the same overrides, one by one


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders of a sweep: those holding Hydra's `.hydra/overrides.yaml` or a `metrics.json`."""
    marks = list(sweep_dir.glob("**/.hydra/overrides.yaml")) + list(sweep_dir.glob("**/metrics.json"))
    jobs = {m.parent.parent if m.parent.name == ".hydra" else m.parent for m in marks}
    # A `.hydra` right in the sweep folder belongs to a single run, which is its own one job.
    return sorted(jobs, key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))


def _natural_key(name: str) -> list[tuple[int, Any]]:
    # Job folders are numbered: 2 sorts before 10 (and numbers before names, never compared with them).
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split("/")]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def read_job(job_dir: Path, sweep_dir: Path) -> JobRow:
    """The summary row of one job folder."""
    overrides: list[str] = []
    shape: dict[str, Any] = {}
    hydra_dir = job_dir / ".hydra"
    if (hydra_dir / "overrides.yaml").is_file():
        overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml") or []]
    if (hydra_dir / "config.yaml").is_file():
        config = OmegaConf.load(hydra_dir / "config.yaml")
        shape = {k: OmegaConf.select(config, f"model.{k}", default=None, throw_on_resolution_failure=False)
                 for k in SHAPE_KEYS}

    metrics: dict[str, Any] = {}
    metrics_file = job_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as e:
            metrics = {"status": "failed", "error": f"unreadable metrics.json: {e}"}
        status = metrics.get("status") if metrics.get("status") in ("failed", "pruned") else "ok"
        error = str(metrics.get("error") or metrics.get("reason") or "")  # a pruned job's reason
    else:
        status, error = "incomplete", "no metrics.json: the job is still running, or was killed"

    return JobRow(
        job=job_dir.relative_to(sweep_dir).as_posix() or ".",
        status=status,
        val_acc_best=_number(metrics.get("val/acc_best")),
        test_acc=_number(metrics.get("test/acc")),
        test_mca=_number(metrics.get("test/mca")),
        test_other_writers=_number(metrics.get("test/other_writers")),
        test_pen_photos=_number(metrics.get("test/pen_photos")),
        num_parameters=_int(metrics.get("num_parameters")),
        **{k: _int(shape.get(k)) for k in SHAPE_KEYS},
        epochs=_int(metrics.get("epochs")),
        train_time_s=_number(metrics.get("train_time_s")),
        wall_time_s=_number(metrics.get("wall_time_s")),
        train_images_per_s=_number(metrics.get("train_images_per_s")),
        overrides=" ".join(overrides),
        error=" ".join(error.split()),
        override_list=tuple(overrides),
    )


def sort_rows(rows: list[JobRow]) -> list[JobRow]:
    """Best first by val/acc_best (the sweep's objective), then test/acc; pruned jobs after the finished ones, jobs
    without a result last."""
    def key(row: JobRow) -> tuple:
        return ({"ok": 0, "pruned": 1}.get(row.status, 2), -(row.val_acc_best if row.val_acc_best is not None else -1.0),
                -(row.test_acc if row.test_acc is not None else -1.0), _natural_key(row.job))

    return sorted(rows, key=key)


def _cell(value: Any, name: str) -> str:
    if value is None:
        return ""
    if name in ("val_acc_best", "test_acc", "test_mca", "test_other_writers", "test_pen_photos"):
        return f"{value:.4f}"
    if name in ("train_time_s", "wall_time_s", "train_images_per_s"):
        return f"{value:.1f}"
    return str(value)


def to_csv(rows: list[JobRow]) -> str:
    columns = [f.name for f in fields(JobRow) if f.name != "override_list"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items() if k in columns})
    return buffer.getvalue()


def split_overrides(rows: list[JobRow]) -> tuple[list[str], dict[str, str]]:
    """The overrides every job shares, and for each job the ones that tell it apart (what the sweep varied)."""
    per_job = {r.job: dict(o.split("=", 1) if "=" in o else (o, "") for o in r.override_list) for r in rows}
    keys = list(dict.fromkeys(k for overrides in per_job.values() for k in overrides))
    shared = [k for k in keys if len({o.get(k) for o in per_job.values()}) == 1]
    common = [f"{k}={v}" if v else k for k, v in next(iter(per_job.values()), {}).items() if k in shared]
    varied = {job: " ".join(f"{k}={v}" if v else k for k, v in o.items() if k not in shared)
              for job, o in per_job.items()}
    return common, varied



def to_markdown(rows: list[JobRow], sweep_dir: Path) -> str:
    """A heading with the counts, the shared overrides and the best job; the table; the reason of every failure."""
    # the table's last column: only the overrides that differ between jobs (all of them are in the CSV)
    robustness = [k for k in ("test_mca", "test_other_writers", "test_pen_photos")  # the benchmark's, when measured
                  if any(getattr(r, k) is not None for r in rows)]
    columns = ["job", "status", "val_acc_best", "test_acc", *robustness, "num_parameters", *SHAPE_KEYS, "epochs",
               "train_time_s", "wall_time_s", "train_images_per_s", "overrides"]
    titles = {"val_acc_best": "val/acc_best", "test_acc": "test/acc", "test_mca": "test/mca",
              "test_other_writers": "test/other_writers", "test_pen_photos": "test/pen_photos",
              "num_parameters": "parameters",
              "train_time_s": "training loop (s)", "wall_time_s": "whole job (s)", "train_images_per_s": "train images/s"}
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "pruned", "failed", "incomplete")}
    pruned = f"{counts['pruned']} pruned, " if counts["pruned"] else ""  # only sweeps with a pruner have any
    lines = [f"# Sweep summary: {sweep_dir}", "",
             f"{len(rows)} jobs: {counts['ok']} ok, {pruned}{counts['failed']} failed, {counts['incomplete']} incomplete. "
             "Sorted by val/acc_best (the sweep's objective); test/acc is reported, never used to choose.", ""]
    common, varied = split_overrides(rows)
    if common and len(rows) > 1:
        lines += ["Overrides of every job: `" + " ".join(common) + "`", ""]
    best = next((r for r in rows if r.status == "ok" and r.val_acc_best is not None), None)
    if best:
        lines += [f"Best: job {best.job} (`{varied[best.job] or best.overrides or 'no overrides'}`), "
                  f"val/acc_best {best.val_acc_best:.4f}"
                  + (f", test/acc {best.test_acc:.4f}" if best.test_acc is not None else "") + ".", ""]
    lines.append("| " + " | ".join(titles.get(c, c) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c not in ("job", "status", "overrides") else "---" for c in columns) + "|")
    for row in rows:
        values = asdict(row)
        cells = [_cell(values[c], c) for c in columns]
        cells[-1] = f"`{varied[row.job]}`" if varied[row.job] else ""
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    stopped = [r for r in rows if r.status == "pruned"]
    if stopped:
        lines += ["", "## Jobs stopped by the pruner", ""]
        lines += [f"- job {r.job} (`{varied[r.job] or r.overrides}`): {r.error}" for r in stopped]
    failed = [r for r in rows if r.status not in ("ok", "pruned")]
    if failed:
        lines += ["", "## Jobs without a result", ""]
        lines += [f"- job {r.job} ({r.status}, `{varied[r.job] or r.overrides}`): {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def plot(rows: list[JobRow], sweep_dir: Path, path: Path) -> None:
    """val/acc_best against parameter count, one colour per patch size, each point labelled with depth and heads."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    done = [r for r in rows if r.status == "ok" and r.val_acc_best is not None and r.num_parameters]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    patch_sizes = sorted({r.patch_size for r in done}, key=lambda p: (p is None, p))
    colours = plt.get_cmap("tab10")
    for i, patch in enumerate(patch_sizes):
        group = [r for r in done if r.patch_size == patch]
        ax.scatter([r.num_parameters for r in group], [r.val_acc_best for r in group], s=45,
                   color=colours(i % 10), label=f"patch {patch}" if patch is not None else "patch ?", zorder=3)
        for r in group:
            if r.depth is not None and r.heads is not None:
                ax.annotate(f"d{r.depth} h{r.heads}", (r.num_parameters, r.val_acc_best), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
    if done:
        sizes = [r.num_parameters for r in done]
        if max(sizes) > 10 * min(sizes):  # several decades: a log axis keeps the small models apart
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 120k, 1.2M
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(title="model.patch_size", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished jobs yet", ha="center", va="center", transform=ax.transAxes)
    not_done = len(rows) - len(done)
    ax.set_xlabel("parameters")
    ax.set_ylabel("val/acc_best")
    where = "/".join(sweep_dir.parts[-2:])  # e.g. 2026-11-24/05-12-33
    ax.set_title(f"Sweep {where}: {len(done)} jobs" + (f" ({not_done} without a result)" if not_done else ""),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def write_sweep_report(sweep_dir: str | Path) -> list[JobRow]:
    """Write sweep_summary.md, .csv and .png into `sweep_dir`; return the rows, best first."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a folder: give the folder of a multirun, "
                        "e.g. `python -m vit_mnist.sweep_report outputs/multirun/<date>/<time>`.")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise UserError(f"{sweep_dir} holds no Hydra job folders (none has .hydra/overrides.yaml or metrics.json): "
                        "give the folder of a multirun, e.g. outputs/multirun/<date>/<time>.")
    rows = sort_rows([read_job(job, sweep_dir) for job in jobs])
    write_atomic(sweep_dir / f"{SUMMARY_STEM}.csv", to_csv(rows))
    write_atomic(sweep_dir / f"{SUMMARY_STEM}.md", to_markdown(rows, sweep_dir))
    plot(rows, sweep_dir, sweep_dir / f"{SUMMARY_STEM}.png")
    return rows
