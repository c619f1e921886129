"""Export a checkpoint to ONNX (or TorchScript), checked against PyTorch before the file is kept."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vit_mnist.errors import UserError
from vit_mnist.inference.predictor import Predictor
from vit_mnist.models.outputs import logits_and_features
from vit_mnist.ood.detector import VERDICTS, OODDetector
from vit_mnist.ood.thresholds import MIN_CONFIDENCE
from vit_mnist.training.checkpoints import check_checkpoint_path
from vit_mnist.version import __version__

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
DEFAULT_OPSET = 18  # what torch's exporter writes natively; onnxruntime >= 1.14 runs all of it on CPU
MIN_OPSET = 11  # the oldest the exporter accepts; whether it can convert a given model that far is checked after
INPUT_NAME, OUTPUT_NAMES = "image", ("logits", "probabilities", "verdict")
DESCRIPTIONS = {"vit": "Vision Transformer", "cnn": "Small CNN"}  # by the checkpoint's model.arch


class ExportWrapper(nn.Module):
    """The network with its calibrated softmax and its verdict, so users of the file need no extra code.

    As the Predictor computes them: logits averaged over the test-time shifts when `tta` (inside the graph),
    probabilities softmax(logits / temperature), the checkpoint's fitted temperature divided inside the graph, and the
    verdict of each image as an index into VERDICTS (0 confident, 1 unsure, 2 out_of_domain): the checkpoint's
    out-of-domain detector (its score, statistics and thresholds in the graph), else `unsure` below MIN_CONFIDENCE."""

    def __init__(self, net: nn.Module, temperature: float = 1.0, tta: bool = False, detector: OODDetector | None = None):
        super().__init__()
        self.net, self.temperature, self.tta, self.detector = net, float(temperature), bool(tta), detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.detector is not None and self.detector.needs_features
        logits, feats = logits_and_features(self.net, image, self.tta, features)
        calibrated = (logits.double() / self.temperature).softmax(dim=-1)  # the verdict's, in float64 as predict's
        if self.detector is None:
            verdict = torch.where(calibrated.max(dim=-1).values < MIN_CONFIDENCE, 1, 0)
        else:
            verdict = self.detector.verdict_codes(calibrated, self.detector.scores(logits.double(), feats))
        return logits, (logits / self.temperature).softmax(dim=-1), verdict.long()


def metadata(predictor: Predictor, ckpt_path: Path) -> dict[str, str]:
    """What a user of the exported file needs to feed it: classes, input layout and normalisation."""
    return {
        "class_names": json.dumps(predictor.class_names),
        "normalize_mean": repr(predictor.mean),
        "normalize_std": repr(predictor.std),
        "dataset": predictor.dataset,
        "model": predictor.arch,  # vit or cnn
        "input": (f"{INPUT_NAME}: float32 [batch, 1, 28, 28]; a 28x28 grayscale digit in the MNIST layout (white on "
                  "black, fit in 20x20, centred by centre of mass), scaled to [0, 1], then (x - normalize_mean) / "
                  "normalize_std. vit_mnist.data.preprocess.preprocess does all of this."),
        "outputs": ("logits: float32 [batch, classes], the network's"
                    + (" (averaged over the image and its four one-pixel shifts, edge-filled)" if predictor.tta else "")
                    + "; probabilities: softmax(logits / temperature), calibrated; verdict: int64 [batch], an index "
                    "into verdict_codes"),
        "verdict_codes": json.dumps(dict(enumerate(VERDICTS))),
        "verdict_detector": (f"{predictor.detector.describe()}: {predictor.detector.describe_thresholds()}"
                             if predictor.detector is not None else
                             f"none in the checkpoint: unsure below a calibrated top-1 probability of {MIN_CONFIDENCE}, "
                             "never out_of_domain (python -m vit_mnist.calibrate fits one)"),
        "temperature": repr(predictor.temperature),  # fitted on the validation split (1: not calibrated)
        "tta": json.dumps(predictor.tta),
        "source_checkpoint": ckpt_path.name,
        "vit_mnist_version": __version__,
    }


def check_inputs(batch: int, seed: int = 0, mean: float = 0.1307, std: float = 0.3081) -> torch.Tensor:
    """Normalised random images in the model's input range, for the export example and the parity check."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 1, 28, 28), generator=g, device="cpu").float() / 255.0
    pixels *= torch.rand(batch, 1, 28, 28, generator=g, device="cpu") < 0.2  # mostly black, as digits are
    return (pixels - mean) / std


@contextlib.contextmanager
def quiet() -> Any:
    """Silence the exporters' progress prints and deprecation chatter; errors still raise."""
    # e.g. "torchvision is not installed. Skipping ...", version-converter notes; failures still raise.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(wrapper: ExportWrapper, path: Path, meta: dict[str, str], opset: int) -> None:
    """Write an ONNX model with a dynamic batch axis and `meta` as metadata_props."""
    import onnx

    with quiet():
        program = torch.onnx.export(
            wrapper, (check_inputs(2),), dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        program.save(str(path))
    model = onnx.load(str(path))
    # torch's exporter writes opset 18 and converts down afterwards; where that fails it warns and keeps 18
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise UserError(f"torch's ONNX exporter could not write this model at opset={opset}: it wrote opset "
                        f"{written} (onnx's version converter has no adapter for some of its operators, e.g. Pad or "
                        f"LayerNormalization), and nothing was written. Use opset={written}; onnxruntime >= 1.14 "
                        "runs it on CPU.")
    model.doc_string = f"{DESCRIPTIONS.get(meta.get('model', 'vit'), 'Image')} classifier exported by vit-mnist"
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_outputs(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    """Logits, probabilities and verdicts from onnxruntime on CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an exported ONNX file records (class names, normalisation, input layout, ...)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def export_torchscript(wrapper: ExportWrapper, path: Path, meta: dict[str, str]) -> None:
    """Write a traced TorchScript module with the metadata as an extra file `metadata.json`."""
    with quiet():
        traced = torch.jit.trace(wrapper, (check_inputs(2),))
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(meta)})


def torchscript_outputs(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    """Logits, probabilities and verdicts from the TorchScript module."""
    with quiet(), torch.inference_mode():
        return [out.numpy() for out in torch.jit.load(str(path), map_location="cpu")(x)]


def check_verdicts(predictor: Predictor, run_exported: Any, path: Path, x: torch.Tensor) -> None:
    """The exported graph's verdicts equal predict's on `x` and on noise (out-of-domain images); else an error."""
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), device="cpu")
    for batch in (x, (noise - predictor.mean) / predictor.std):
        exported = [VERDICTS[int(code)] for code in run_exported(path, batch)[2]]
        expected = predictor.answer(batch.numpy()).verdicts
        if exported != expected:
            wrong = sum(a != b for a, b in zip(exported, expected, strict=True))
            raise RuntimeError(f"The exported model's verdicts differ from predict's on {wrong} of {len(batch)} check "
                               "images; nothing was written. Please report this with your checkpoint's config.")


def check_opset(opset: int) -> None:
    """A `UserError` for opsets that this onnx package cannot write or the exporter cannot target."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UserError(f"opset={opset} is outside {MIN_OPSET}-{newest} (the installed onnx {onnx.__version__} "
                        f"writes up to {newest}); use the default opset={DEFAULT_OPSET}, which onnxruntime runs "
                        "on CPU.")


def export(ckpt_path: str | Path | None, fmt: str = "onnx", output: str | Path | None = None,
           opset: int = DEFAULT_OPSET, check_batch: int = 64, atol: float = 1e-4) -> dict[str, Any]:
    """Export a checkpoint; the file is kept only if its logits match PyTorch's within `atol`. Returns a summary."""
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r} is not one of {list(FORMATS)}: use format=onnx or format=torchscript.")
    if check_batch < 1:
        raise UserError(f"check_batch={check_batch} must be at least 1: the export is always checked.")
    if fmt == "onnx":
        check_opset(opset)
    ckpt = check_checkpoint_path(ckpt_path)
    target = Path(output).expanduser() if output else ckpt.parent / FORMATS[fmt]
    if target.is_dir():
        raise UserError(f"output={output} is a folder: give a file path, e.g. output={target / FORMATS[fmt]}.")
    if not target.parent.is_dir():
        raise UserError(f"The folder of output={target} does not exist: create it or choose another output path.")
    predictor = Predictor.from_checkpoint(ckpt)
    wrapper = ExportWrapper(predictor.net, predictor.temperature, predictor.tta, predictor.detector).eval()
    meta = metadata(predictor, ckpt)
    started = time.perf_counter()
    # Write next to the target and move into place only after the check: never a wrong or half-written file.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "onnx":
            try:
                export_onnx(wrapper, tmp, meta, opset)
                onnx_outputs(tmp, check_inputs(1))
            except UserError:
                raise
            except Exception as e:
                if opset == DEFAULT_OPSET:
                    raise  # a bug, not a setting: show the whole story
                raise UserError(f"Export at opset={opset} failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                f"use the default opset={DEFAULT_OPSET}.") from e
            run_exported = onnx_outputs
        else:
            export_torchscript(wrapper, tmp, meta)
            run_exported = torchscript_outputs
        # Another batch size than the export's example, so the check also covers the dynamic batch axis.
        x = check_inputs(check_batch, 1, predictor.mean, predictor.std)
        with torch.inference_mode():
            expected = [out.numpy() for out in wrapper(x)]
        # the logits and the calibrated probabilities (temperature and test-time shifts included) within atol; the
        # verdicts equal to predict's (vit_mnist.inference.predictor), on these images and on images that are not digits
        got = run_exported(tmp, x)
        max_diff = max(float(np.abs(g - w).max()) for g, w in zip(got[:2], expected[:2], strict=True))
        if not max_diff <= atol:
            raise RuntimeError(
                f"The exported {fmt} model differs from PyTorch by {max_diff:.2e} (more than atol={atol}) on "
                f"{check_batch} check images; nothing was written. Please report this with your checkpoint's config."
            )
        check_verdicts(predictor, run_exported, tmp, x)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes the file private; the export is an ordinary file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {"output": str(target), "format": fmt, "opset": opset if fmt == "onnx" else None,
            "size_mb": round(target.stat().st_size / 1e6, 2), "max_abs_diff": max_diff,
            "check_batch": check_batch, "seconds": round(time.perf_counter() - started, 1), "metadata": meta}


def export_from_config(cfg: Any) -> dict[str, Any]:
    """`export` with the settings of conf/export.yaml; prints what was written."""
    summary = export(cfg.ckpt_path, str(cfg.format), cfg.output, int(cfg.opset), int(cfg.check_batch),
                     float(cfg.atol))
    opset = f", opset {summary['opset']}" if summary["opset"] else ""
    print(f"wrote {summary['output']} ({summary['format']}{opset}, {summary['size_mb']} MB, "
          f"{summary['seconds']} s); max |difference| to PyTorch (logits, calibrated probabilities) on {summary['check_batch']} images: "
          f"{summary['max_abs_diff']:.2e}")
    return summary
