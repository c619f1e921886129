"""The LightningModule: our ViT (or the CNN baseline) with its loss, optimiser, LR schedule and torchmetrics."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from torchmetrics import ConfusionMatrix, MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from vit_mnist.errors import UserError
from vit_mnist.models.outputs import logits_and_features, prefers_channels_last
from vit_mnist.models.registry import (
    MAP_TITLES,
    build_network,
    model_arch,
    relevance_maps,
)
from vit_mnist.models.vit import count_parameters
from vit_mnist.ood.detector import CHECKPOINT_KEY as DETECTOR_KEY
from vit_mnist.ood.detector import OODDetector
from vit_mnist.reports.samples import CALIBRATION_BINS, ReportSamples
from vit_mnist.runtime.hardware import synchronize
from vit_mnist.training.distill import distillation_loss
from vit_mnist.training.outlier_exposure import uniform_cross_entropy

# the checkpoint key of the trainer precision the run trained and tested in (e.g. "bf16-mixed", "32-true")
PRECISION_KEY = "trainer_precision"

log = logging.getLogger(__name__)


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ViTClassifier(LightningModule):
    """Image classification with the network `model.arch` names (`VisionTransformer` or `SmallCNN`); every
    hyperparameter is saved in the checkpoint. The name predates the CNN: checkpoints are loaded with it."""

    def __init__(
        self,
        model: dict,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
        normalize: dict | None = None,
        dataset: str = "mnist",
        tta: bool = False,
        distill: dict | None = None,
        outlier_exposure: dict | None = None,
    ):
        super().__init__()
        model, optimizer, scheduler = _plain(model), _plain(optimizer), _plain(scheduler)
        try:
            model = {**model, "arch": model_arch(model)}  # say it even where the config did not (older checkpoints)
            net = build_network(model)
        except ValueError as e:  # the model package names the bad model.* key
            raise UserError(str(e)) from e
        self.save_hyperparameters(
            {"model": model, "optimizer": optimizer, "scheduler": scheduler, "label_smoothing": label_smoothing,
             "class_names": class_names, "normalize": normalize, "dataset": dataset, "tta": tta,
             "distill": _plain(distill) if distill and distill.get("teacher") else None,
             # outlier exposure's settings (vit_mnist.training.outlier_exposure); None: trained without it
             "outlier_exposure": _plain(outlier_exposure) or None}
        )
        self.net = net
        # The teacher of a distillation run: attached by the train job, never part of the state dict (the student's
        # checkpoint loads, evaluates and exports without it), moved to the student's device when fitting starts.
        self._teacher: list[torch.nn.Module] = []
        self.teacher_time_s = 0.0
        num_classes = int(model.get("num_classes", 10))
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]

        def acc() -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, average="micro")

        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc, self.val_acc = acc(), acc()
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives in checkpoints so a resumed run keeps its best
        self.test_metrics = MetricCollection(
            {
                "acc": acc(),
                "f1_macro": MulticlassF1Score(num_classes, average="macro"),
                "precision": MulticlassPrecision(num_classes, average=None),
                "recall": MulticlassRecall(num_classes, average=None),
                "f1": MulticlassF1Score(num_classes, average=None),
                "confusion_matrix": ConfusionMatrix(task="multiclass", num_classes=num_classes),
            }
        )
        # Fed probabilities: given logits that happen to lie in [0, 1] it would take them for probabilities.
        self.test_ece = MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS, norm="l1")
        # ..._raw: the network's own softmax, before temperature scaling (vit_mnist.training.calibration)
        self.test_ece_raw = MulticlassCalibrationError(num_classes, n_bins=CALIBRATION_BINS, norm="l1")
        self.test_nll, self.test_nll_raw = MeanMetric(), MeanMetric()
        # Temperature scaling: probabilities are softmax(logits / temperature). Kept in the checkpoint's
        # "calibration" entry, not in the state dict, so that checkpoints from before it still load strictly.
        self.temperature: float = 1.0
        self.calibration: dict[str, Any] | None = None
        # The out-of-domain detector and verdict thresholds fitted after training (vit_mnist.training.after_fit);
        # like the temperature, a checkpoint entry of its own. None: the checkpoint has none.
        self.ood_detector: OODDetector | None = None
        self.test_samples = ReportSamples()  # per-image outputs for the report figures
        self.eval_prefix = "test"  # the test stage's metric names; evaluate sets "val" to test the val split
        self.test_results: dict[str, torch.Tensor] = {}

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    @property
    def arch(self) -> str:
        """The network kind: "vit" or "cnn" (`model.arch`)."""
        return self.hparams.model["arch"]

    @property
    def map_title(self) -> str:
        """Title of the relevance maps in attention.png: attention rollout (ViT) or class activation maps (CNN)."""
        return MAP_TITLES[self.arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # whether loading a checkpoint without a temperature warns; the run that chose not to calibrate (calibrate=false,
    # after_fit=search) tests its own checkpoint without the warning
    warn_uncalibrated = True

    def set_calibration(self, calibration: dict[str, Any] | None) -> None:
        """Use a fitted calibration ({"temperature": T, ...}; None: temperature 1), saved with every checkpoint."""
        temperature = float(calibration["temperature"]) if calibration else 1.0
        if not (math.isfinite(temperature) and temperature > 0):
            raise UserError(f"The checkpoint's calibration temperature {temperature} is not a positive number: the "
                            "file was edited or is damaged. Retrain, or give another checkpoint.")
        self.calibration = dict(calibration) if calibration else None
        self.temperature = temperature

    def load_calibration(self, checkpoint: dict[str, Any], source: str = "", warn: bool = True) -> None:
        """The temperature a checkpoint holds; a checkpoint without one (written before calibration existed, or
        trained with `calibrate=false`) gets temperature 1 and, with `warn`, one log warning saying so."""
        calibration = checkpoint.get("calibration")
        if isinstance(calibration, dict) and "temperature" in calibration:
            self.set_calibration(calibration)
            return
        self.set_calibration(None)
        if warn:
            log.warning("The checkpoint %sholds no calibration (it was written before temperature scaling existed, "
                        "or trained with calibrate=false): its probabilities are the network's own softmax "
                        "(temperature 1) and may be over- or under-confident. `python -m vit_mnist.calibrate "
                        "ckpt_path=%s` fits the temperature into it, no retraining needed.",
                        f"{source} " if source else "", source or "<the checkpoint>")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # what the run computed in, its test too: `evaluate` says when it differs
            checkpoint[PRECISION_KEY] = str(self._trainer.precision)
        if self.calibration:
            checkpoint["calibration"] = dict(self.calibration)
        if self.ood_detector is not None:
            checkpoint[DETECTOR_KEY] = self.ood_detector.state_dict()

    def load_detector(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's out-of-domain detector (None when it has none); a `UserError` when it is damaged."""
        state = checkpoint.get(DETECTOR_KEY)
        self.ood_detector = OODDetector.from_state(state) if state is not None else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # resuming a fit from a checkpoint written before the calibration (last.ckpt) is no reason to warn
        fitting = self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING
        self.load_calibration(checkpoint, warn=not fitting and self.warn_uncalibrated)
        self.load_detector(checkpoint)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], tta: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits, _ = logits_and_features(self.net, images, tta, features=False)  # as calibration and predict run it
        # the labelled images come first; any after them (outlier exposure's) have logits but no label
        loss = F.cross_entropy(logits[:len(labels)], labels,
                               label_smoothing=self.hparams.label_smoothing if self.training else 0.0)
        return loss, logits, labels

    def attach_teacher(self, teacher: torch.nn.Module) -> None:
        """The frozen network whose predictions train the distillation token (`distill.teacher`)."""
        self._teacher = [teacher.eval()]

    def setup(self, stage: str) -> None:
        # fast's whole train step 42.5 -> 35 ms on a CPU (docs/results.md#fast); set before a DDP strategy wraps
        # the network, undone at teardown
        if prefers_channels_last(self.trainer.strategy.root_device):
            self.net.to(memory_format=torch.channels_last)

    def teardown(self, stage: str) -> None:
        self.net.to(memory_format=torch.contiguous_format)  # the usual layout for users, exports and checkpoints

    def on_fit_start(self) -> None:
        if self._teacher:  # onto the student's device, and its dtype under bf16-true/16-true (mixed: autocast)
            self._teacher[0].to(device=self.device, dtype=next(self.net.parameters()).dtype)

    def _distill_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        if not self._teacher:
            raise RuntimeError("distill.teacher is set but no teacher was attached: build the module with "
                               "vit_mnist.training.fit.build")
        synchronize(images.device)  # a GPU runs asynchronously: the clock waits for the work it measures
        started = time.perf_counter()
        with torch.no_grad():  # the teacher sees the same augmented digits, in eval mode, and learns nothing
            teacher_logits = self._teacher[0](images[:len(labels)])
        synchronize(images.device)
        self.teacher_time_s += time.perf_counter() - started
        logits, dist_logits = self.net.forward_heads(images)
        d = self.hparams.distill
        n = len(labels)
        loss = distillation_loss(logits[:n], dist_logits[:n], labels, teacher_logits, d.get("kind", "hard"),
                                 float(d.get("alpha", 0.5)), float(d.get("tau", 1.0)), self.hparams.label_smoothing)
        return loss, (logits + dist_logits) / 2, labels  # accuracy of what the student predicts: both heads

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, *outliers = batch  # outlier exposure's datamodule adds a third element: non-digit images
        n = len(labels)  # the digits; with outlier exposure the batch holds more images than labels
        inputs = torch.cat([images, outliers[0]]) if outliers else images  # one forward pass for both
        step = self._distill_step if self.hparams.get("distill") else self._step
        loss, logits, labels = step((inputs, labels))
        if outliers:  # pushed towards a uniform answer: the served logits (both heads averaged when distilled)
            outlier_loss = uniform_cross_entropy(logits[n:])
            loss = loss + float(self.hparams.outlier_exposure["weight"]) * outlier_loss
            self.log("train/outlier_loss", outlier_loss.detach(), on_step=False, on_epoch=True, batch_size=n)
            logits = logits[:n]
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if self._teacher:
            self.log("train/teacher_time_s", self.teacher_time_s, on_step=False, on_epoch=True, reduce_fx="max",
                     batch_size=n)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.val_loss(loss)
        self.val_acc(logits, labels)
        self.val_f1(logits, labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/f1_macro", self.val_f1, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # the sanity check must not count as a best epoch
            self.val_acc_best(self.val_acc.compute())
        if self.val_acc_best.update_count:
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, logits, labels = self._step(batch, tta=self.hparams.get("tta", False))  # `tta: true` in the run config
        self.test_loss(loss)
        self.test_metrics.update(logits, labels)
        self.log(f"{self.eval_prefix}/loss", self.test_loss, on_step=False, on_epoch=True)
        logits = logits.float()
        scaled = logits / self.temperature  # what people see: calibrated probabilities
        self.test_nll.update(F.cross_entropy(scaled, labels, reduction="none"))
        self.test_nll_raw.update(F.cross_entropy(logits, labels, reduction="none"))
        probs, raw_probs = scaled.softmax(dim=-1), logits.softmax(dim=-1)
        self.test_ece.update(probs, labels)
        self.test_ece_raw.update(raw_probs, labels)
        self._collect_samples(batch[0], probs, labels, raw_probs)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the input normalisation: pixels in [0, 1] for pictures."""
        norm = self.hparams.normalize
        return (images * norm["std"] + norm["mean"]).clamp(0.0, 1.0) if norm else images

    def _collect_samples(self, images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                         raw_probs: torch.Tensor | None = None) -> None:
        """Keep what the report figures need: probabilities (calibrated, and before calibration), the most
        confidently wrong images, relevance maps (attention rollout for the ViT, class activation maps for the CNN)."""
        self.test_samples.update(self._pixels(images), probs, labels, raw_probs)
        pick = self.test_samples.missing_examples(labels).to(images.device)
        if len(pick):  # the maps are computed only for these few images
            preds = probs[pick].argmax(dim=-1)
            self.test_samples.add_examples(self._pixels(images[pick]), labels[pick], preds,
                                           relevance_maps(self.net, images[pick], preds))

    def on_test_epoch_start(self) -> None:
        self.test_results = {}
        self.test_samples.reset()

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()  # synced across ranks
        self.test_metrics.reset()
        for name in ("ece", "ece_raw", "nll", "nll_raw"):
            metric = getattr(self, f"test_{name}")
            results[name] = metric.compute()  # synced across ranks
            metric.reset()
        self.log(f"{self.eval_prefix}/acc", results["acc"], sync_dist=False)
        self.log(f"{self.eval_prefix}/f1_macro", results["f1_macro"], sync_dist=False)
        for name in ("ece", "ece_raw", "nll", "nll_raw"):  # ece, nll: calibrated; *_raw: before calibration
            self.log(f"{self.eval_prefix}/{name}", results[name], sync_dist=False)
        results["temperature"] = torch.tensor(self.temperature, dtype=torch.float64, device="cpu")
        self.test_results = {k: v.detach().cpu() for k, v in results.items()}
        self.test_results.update(self.test_samples.compute())  # gathered from every process
        self.test_samples.reset()

    def configure_optimizers(self) -> Any:
        cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.Adam", "lr": 3e-4})
        weight_decay = float(cfg.get("weight_decay", 0.0) or 0.0)
        decay, no_decay = [], []
        skip = self.net.no_weight_decay()  # what the network lists (the ViT: position embedding, CLS token)
        for name, p in self.net.named_parameters():
            if p.requires_grad:
                # Norms and biases are not weight-decayed either (standard for ViTs and for batch-normed CNNs).
                (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        try:
            optimizer = hydra.utils.instantiate(cfg, params=groups, _convert_="all")
        except Exception as e:  # instantiate wraps a bad key or value in its own exception
            raise UserError(f"Cannot build the optimizer from optimizer={cfg}: {e}") from e
        sched = dict(self.hparams.scheduler or {})
        if sched.get("name", "none") == "none":
            return optimizer
        if sched["name"] != "warmup_cosine":
            raise ValueError(f"scheduler.name={sched['name']!r} passed the checks (vit_mnist.training.checks) but is unknown")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(total * float(sched.get("warmup_fraction", 0.05))))
        min_ratio = float(sched.get("min_lr_ratio", 0.0))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
