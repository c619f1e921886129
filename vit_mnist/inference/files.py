"""Classify image files with a trained checkpoint: one result per file, printed as a table or JSON."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig

from vit_mnist.data.preprocess import check_layout
from vit_mnist.errors import UserError
from vit_mnist.inference.predictor import Predictor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
OUTPUTS = ("table", "json")
VERDICT_STYLE = {"confident": "{}", "unsure": "[yellow]{}[/yellow]", "out_of_domain": "[red]{}[/red]"}


def expand_images(entries: Iterable[str]) -> list[str]:
    """Files as given, folders replaced by the image files directly inside them (sorted).

    Missing paths are kept so that they get their own error line instead of silently vanishing.
    """
    files: list[str] = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            inside = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(inside or [str(entry)])  # an empty folder is reported as one failed entry
        else:
            files.append(str(entry))
    return files


def top_classes(probabilities: np.ndarray, class_names: list[str], k: int) -> list[dict[str, Any]]:
    """The `k` most probable classes, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": int(i), "class_name": class_names[i], "probability": float(probabilities[i])} for i in order]


def predict_files(predictor: Predictor, files: list[str], layout: str = "auto", top_k: int = 3) -> list[dict[str, Any]]:
    """One result per file: label, class name, calibrated probability, verdict (`confident`, `unsure` or
    `out_of_domain`, with a sentence for the last two) and top-k, or an `error` for files that failed."""
    results: list[dict[str, Any]] = [{"file": f} for f in files]
    inputs, ok = [], []
    for i, file in enumerate(files):
        if Path(file).expanduser().is_dir():
            results[i]["error"] = f"{file} is a folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES))})."
            continue
        try:
            x, _ = predictor.prepare(file, layout)
        except UserError as e:
            results[i]["error"] = " ".join(str(e).split())
            continue
        inputs.append(x)
        ok.append(i)
    if inputs:
        answers = predictor.answer(np.stack(inputs))
        for i, p, verdict in zip(ok, answers.probabilities, answers.verdicts, strict=True):
            top = top_classes(p, predictor.class_names, top_k)
            results[i].update(label=top[0]["label"], class_name=top[0]["class_name"],
                              probability=top[0]["probability"], verdict=verdict,
                              message=predictor.message(p, verdict), top_k=top)
    return results


def print_table(results: list[dict[str, Any]], checkpoint: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(caption=f"checkpoint: {checkpoint}")
    for column in ("file", "label", "probability", "verdict", f"top-{len(results[0].get('top_k', [])) or 'k'}"):
        table.add_column(column, overflow="fold")
    for r in results:
        if "error" in r:
            table.add_row(r["file"], "[red]error[/red]", "", "", f"[red]{r['error']}[/red]")
        else:
            top = ", ".join(f"{t['class_name']} {t['probability']:.3f}" for t in r["top_k"])
            verdict = VERDICT_STYLE[r["verdict"]].format(r["message"] or r["verdict"])
            table.add_row(r["file"], r["class_name"], f"{r['probability']:.3f}", verdict, top)
    Console(soft_wrap=False).print(table)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every image in `cfg.images`, print the results; return them with the exit status (1 when some files
    failed) under "status"."""
    if cfg.output not in OUTPUTS:
        raise UserError(f"output={cfg.output!r} is not one of {list(OUTPUTS)}: use output=table or output=json.")
    entries = list(cfg.images) if isinstance(cfg.images, (list, ListConfig)) else [cfg.images] if cfg.images else []
    if not entries:
        raise UserError("No images given: list image files or folders, e.g. 'images=[my_digit.png,scan.jpg]' "
                        "(quote the brackets for the shell).")
    layout = check_layout(str(cfg.layout))
    predictor = Predictor.from_checkpoint(cfg.ckpt_path)
    top_k = int(cfg.top_k) if str(cfg.top_k).isdigit() else 0
    if not 1 <= top_k <= len(predictor.class_names):
        raise UserError(f"top_k={cfg.top_k} must be a whole number between 1 and the number of classes "
                        f"({len(predictor.class_names)}).")
    results = predict_files(predictor, expand_images(entries), layout, top_k)
    try:
        if cfg.output == "json":
            print(json.dumps({"checkpoint": str(cfg.ckpt_path), "predictions": results}, indent=2))
        else:
            print_table(results, str(cfg.ckpt_path))
    except BrokenPipeError:  # e.g. `| head` stopped reading: end quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return {"status": 0, "predictions": results}
    failed = [r for r in results if "error" in r]
    if failed and len(failed) == len(results):
        raise UserError(f"None of the {len(results)} images could be read: {failed[0]['error']}")
    return {"status": 1 if failed else 0, "predictions": results}
