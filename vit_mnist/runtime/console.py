"""A clean training console: known third-party noise filtered by message, and a summary of the network alone."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary as LightningSummary
from lightning.pytorch.utilities.model_summary.model_summary import (
    NOT_APPLICABLE,
    get_formatted_model_size,
    get_human_readable_count,
)

# Info lines that Lightning logs through `rank_zero_info` and that say nothing about this run.
_NOISY_INFO = re.compile("|".join([
    r"💡 Tip: ",  # litlogger/litmodels adverts: Lightning 2.6 prints them unless a LitLogger is used (no switch)
    r"Trainer already configured with model summary callbacks",  # NetworkSummary replaces the default on purpose
    r"TPU available: False, using: 0 TPU cores",  # the project never runs on TPUs; a present TPU still prints
    r"Loading `train_dataloader` to estimate number of stepping batches",  # the LR schedule asks; nothing to act on
]))
# (message regex, category, module regex): each warning names its exact text, nothing is silenced by category alone.
_NOISY_WARNINGS = [
    # torch deprecated LeafSpec, which Lightning 2.6's own _pytree still builds: nothing for us to change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\."),
    # every metric is logged per epoch (on_step=False), so the step logging interval changes nothing
    (r"The number of training batches \(\d+\) is smaller than the logging interval", PossibleUserWarning, ""),
    # data.num_workers=0 on purpose: the datasets are tensors in memory, workers would only copy them
    (r"The '\w+' does not have many workers", PossibleUserWarning, ""),
]


class _DropNoisyInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISY_INFO.match(record.getMessage())


_DROP_NOISY_INFO = _DropNoisyInfo()


def quiet_known_noise() -> None:
    """Install the filters above (idempotent: the same filter is never added twice)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DROP_NOISY_INFO)  # the loggers rank_zero_info writes through
    for message, category, module in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class _NetSummary(LightningSummary):
    """Lightning's layer summary of `module.<attr>` alone (no metric rows); `max_depth` counts from that network."""

    def __init__(self, module: pl.LightningModule, max_depth: int, attr: str = "net") -> None:
        self.net, self._prefix = getattr(module, attr), attr + "."
        # names keep the prefix inside, so that measured FLOPs (with an example_input_array) still match the rows
        super().__init__(module, max_depth + 1 if max_depth > 0 else max_depth)

    @property
    def named_modules(self) -> list[tuple[str, Any]]:
        return [(n, m) for n, m in super().named_modules if n.startswith(self._prefix)]

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    @property
    def total_training_modes(self) -> dict[str, int]:
        modes = [m.training for m in self.net.modules()]
        return {"train": modes.count(True), "eval": modes.count(False)}

    def _add_leftover_params_to_summary(self, arrays: list, total_leftover_params: int) -> None:
        pass  # the network's own parameters get a named row in _get_summary_data instead

    def _get_summary_data(self) -> list[tuple[str, list[str]]]:
        columns = dict(super()._get_summary_data())
        columns["Name"] = [n.removeprefix(self._prefix) for n in columns["Name"]]
        own = dict(self.net.named_parameters(recurse=False))  # e.g. the ViT's cls_token and pos_embed
        if own:
            row = {" ": " ", "Name": ", ".join(own), "Type": "Parameter",
                   "Params": get_human_readable_count(sum(p.numel() for p in own.values()))}
            for key, values in columns.items():
                values.append(row.get(key, NOT_APPLICABLE))
        if not self.total_flops:  # FLOPs are measured only with an example_input_array: zeros mean "not measured"
            columns.pop("FLOPs")
        return list(columns.items())


class NetworkSummary(RichModelSummary):
    """Rich table of the LightningModule's network (`net`: the ViT or the CNN) down to `max_depth` levels below it,
    then its exact parameter count; the torchmetrics children are left out. `max_depth=0` prints nothing."""

    def __init__(self, max_depth: int = 2, attr: str = "net", **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self._attr = attr

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._max_depth or not hasattr(pl_module, self._attr):
            return super().on_fit_start(trainer, pl_module)
        summary = _NetSummary(pl_module, self._max_depth, self._attr)
        if trainer.is_global_zero:
            self.print(summary)

    def print(self, summary: _NetSummary) -> None:
        from rich import get_console
        from rich.table import Table

        table = Table(title=f"{self._attr}: {type(summary.net).__name__}", title_justify="left",
                      header_style=self._summarize_kwargs.get("header_style", "bold magenta"))
        data = summary._get_summary_data()
        for name, _ in data:
            table.add_column(name, justify="right" if name in ("Params", "FLOPs") else "left",
                             style="dim" if name == " " else None)
        for row in zip(*(values for _, values in data)):
            table.add_row(*row)
        total, trainable = summary.total_parameters, summary.trainable_parameters
        notes = [f"trainable {trainable:,}" if trainable != total else "all trainable",
                 f"{get_formatted_model_size(summary.model_size)} MB"]
        if summary.total_flops:
            notes.append(f"FLOPs {summary.total_flops:,}")
        if summary.total_training_modes["eval"]:
            notes.append(f"{summary.total_training_modes['eval']} modules in eval mode")
        console = get_console()
        console.print(table)
        console.print(f"[bold]Total params[/]: {total:,} ({', '.join(notes)})")
