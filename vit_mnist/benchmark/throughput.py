"""The throughput benchmark: training and inference images/s of our ViT (or CNN), and of Hugging Face's ViT."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.autograd import DeviceType
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from vit_mnist.data.datamodule import InMemoryDataset, MNISTDataModule
from vit_mnist.errors import UserError
from vit_mnist.models.outputs import prefers_channels_last
from vit_mnist.models.registry import build_network, model_arch
from vit_mnist.models.vit import count_parameters
from vit_mnist.reports.files import write_json
from vit_mnist.runtime.hardware import (
    cpu_model,
    isa_summary,
    resolve_device,
    synchronize,
    warn_if_slow_bf16,
)
from vit_mnist.training.checks import check_model
from vit_mnist.training.fit import compile_network
from vit_mnist.training.module import ViTClassifier

PRECISIONS = ("32-true", "bf16-mixed")
OURS = "ours"
# the dense matrix products (attention's own kernels are matched by name, see is_matmul_op)
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
# The technical note's model: Hugging Face's ViT at hidden 128, 4 layers, 4 heads and its default MLP of 3072.
NOTE_SHAPE = {"hidden_dim": 128, "depth": 4, "heads": 4, "mlp_dim": 3072, "patch_size": 7}


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention kernel, given its argument shapes (torch's formula for the CUDA ones)."""
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of its backward."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode counts the CUDA attention kernels but not the CPU one that SDPA picks here (given shapes).
CPU_ATTENTION_FLOPS = {
    op: formula for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention),
                                      ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward))
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


@dataclass
class Row:
    """One model at one batch size; throughputs in images per second."""

    model: str
    batch: int
    params: int
    train_mflop: float  # forward + backward FLOPs per image, in millions
    train_step: float  # forward, backward and optimizer step on batches already on the device
    inference: float
    pipeline: float | None = None  # our DataLoader + on-device augmentation + the Lightning training step
    matmul_share: float | None = None  # of the profiled train step's time, in matrix multiplies and attention


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for `bf16-mixed`, nothing for `32-true` (as Lightning's precision plugins do)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_gflops(device: torch.device, size: int, seconds: float = 2.0) -> float:
    """The machine's fp32 matrix-multiply rate: the fastest of repeated (size x size) @ (size x size) products."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    torch.matmul(a, b)  # warm up the BLAS
    fastest, count, start = math.inf, 0, time.perf_counter()
    while count < 5 or time.perf_counter() - start < seconds:
        synchronize(device)
        begin = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        fastest, count = min(fastest, time.perf_counter() - begin), count + 1
    return 2 * size**3 / fastest / 1e9


def train_flops_per_image(net: nn.Module, image_shape: tuple[int, ...], num_classes: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one image, counted by torch's FlopCounterMode on a small batch."""
    n = 4
    x = torch.randn(n, *image_shape, device=device)
    y = torch.randint(0, num_classes, (n,), device=device)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def best_rate(stamps: list[float], images_per_step: int, repeats: int) -> float:
    """Images/s of the fastest of `repeats` equal runs of steps, given the time before the first step and after
    each: the fastest is the one least slowed by other processes on a shared machine."""
    steps = len(stamps) - 1
    size = max(1, steps // max(1, repeats))
    seconds = min(stamps[i + size] - stamps[i] for i in range(0, steps - size + 1, size))
    return images_per_step * size / seconds


def time_loop(step: Callable[[int], Any], steps: int, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Call `step(i)` `warmup` times untimed, then `steps` times; the clock before the first and after each
    `steps // repeats` of them (the device synchronised there, so the clock waits for the work)."""
    for i in range(warmup):
        step(i)
    size = max(1, steps // max(1, repeats))
    synchronize(device)
    stamps = [time.perf_counter()]
    for i in range(steps):
        step(warmup + i)
        if (i + 1) % size == 0:
            synchronize(device)
        stamps.append(time.perf_counter())
    return stamps


def make_batches(batch: int, image_shape: tuple[int, ...], num_classes: int, device: torch.device, count: int = 4):
    """A few normalised-looking float batches and labels, made on the device before timing."""
    return [(torch.randn(batch, *image_shape, device=device), torch.randint(0, num_classes, (batch,), device=device))
            for _ in range(count)]


def train_step(net: nn.Module, make_optimizer: Callable, batches: list, device: torch.device,
               precision: str) -> Callable[[int], None]:
    """One training step on the i-th batch: forward, cross-entropy, backward, optimizer step."""
    optimizer = make_optimizer(net.parameters())
    net.train()

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with autocast(device, precision):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_train_step(net: nn.Module, make_optimizer: Callable, batches: list, steps: int, warmup: int, repeats: int,
                    device: torch.device, precision: str) -> float:
    """Training images/s of the model step alone: forward, cross-entropy, backward, optimizer step."""
    step = train_step(net, make_optimizer, batches, device, precision)
    return best_rate(time_loop(step, steps, warmup, repeats, device), len(batches[0][0]), repeats)


def profile_step(step: Callable[[int], Any], steps: int, device: torch.device) -> Any:
    """torch profiler's per-op averages over `steps` calls of `step` (CUDA kernels too on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        synchronize(device)
    return prof.key_averages()


def matmul_share(step: Callable[[int], Any], steps: int, device: torch.device) -> float:
    """Fraction of the profiled time of `steps` calls of `step` spent in matrix multiplies and attention kernels:
    1 / share bounds how much faster the step could get by removing everything else."""
    return matmul_share_of(profile_step(step, steps, device), on_device=device.type == "cuda")


def op_table(averages: Any, device: torch.device, rows: int) -> str:
    """The per-op table of `profile_step`'s averages, the most self time first (forward and backward ops apart:
    backward kernels carry `_backward` in their names)."""
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return averages.table(sort_by=sort_by, row_limit=rows, max_name_column_width=70)


def is_matmul_op(name: str) -> bool:
    """Whether profiler op `name` is a matrix product or attention: on CUDA attention runs under
    `aten::_flash_attention_*`, `aten::_efficient_attention_*` or cuDNN's, on CPU under
    `aten::_scaled_dot_product_flash_attention_for_cpu*`."""
    return name in MATMUL_OPS or (name.startswith("aten::") and "attention" in name)


def matmul_share_of(events: Iterable[Any], on_device: bool) -> float:
    """The matmul and attention share of a profile's time, counted as torch's profiler table counts its totals.

    On a GPU each kernel appears twice: as an event of its own (device type CUDA) and in the self device time of
    the CPU op that launched it. The total is over the kernels alone (the table's "Self CUDA time total"), the
    matmul part over the CPU ops that launched matrix products and attention. On the CPU: self CPU times.
    """
    events = list(events)
    if not on_device:
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if is_matmul_op(e.key))
        return matmul / total if total else math.nan
    total = sum(e.self_device_time_total for e in events
                if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False))
    matmul = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CPU and is_matmul_op(e.key))
    return matmul / total if total else math.nan


def time_inference(net: nn.Module, batches: list, steps: int, warmup: int, repeats: int, device: torch.device,
                   precision: str) -> float:
    """Inference images/s: forward passes in eval mode without autograd."""
    net.eval()

    def step(i: int) -> None:
        with torch.inference_mode(), autocast(device, precision):
            net(batches[i % len(batches)][0])

    return best_rate(time_loop(step, steps, warmup, repeats, device), len(batches[0][0]), repeats)


class _RandomImages(MNISTDataModule):
    """Our datamodule (loader, transfer, on-device augmentation) over random in-memory uint8 images: no files."""

    def __init__(self, count: int, **kwargs: Any):
        super().__init__(**kwargs)
        shape = (count, self.hparams.in_channels, self.hparams.image_size, self.hparams.image_size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8)
        labels = torch.randint(0, self.hparams.num_classes, (count,))
        self.train_set = self.val_set = self.test_set = InMemoryDataset(images, labels)

    def prepare_data(self) -> None:  # nothing to fetch
        pass


class _Clock(L.Callback):
    """The clock at the end of training batch `warmup - 1` and of each later one, as `time_loop` takes it."""

    def __init__(self, warmup: int, chunk: int, device: torch.device):
        self.warmup, self.chunk, self.device = warmup, chunk, device
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        timed = batch_idx - self.warmup + 1  # batches timed so far
        if timed >= 0:
            if timed % self.chunk == 0:
                synchronize(self.device)
            self.stamps.append(time.perf_counter())


def time_pipeline(cfg: DictConfig, batch: int, device: torch.device) -> float:
    """Training images/s of the real thing: Lightning fitting our module on our datamodule, augmentation on."""
    warmup, steps = max(1, int(cfg.warmup)), int(cfg.steps)
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"}
    data.update(batch_size=batch, download=False, val_size=0)
    datamodule = _RandomImages(count=batch * (warmup + steps), **data)
    module = ViTClassifier(model=cfg.model, optimizer=cfg.optimizer, class_names=datamodule.class_names,
                           normalize={"mean": datamodule.mean, "std": datamodule.std}, dataset=datamodule.spec.name)
    if cfg.model.get("compile"):
        compile_network(module.net, cfg.model.compile)
    clock = _Clock(warmup, max(1, steps // max(1, int(cfg.repeats))), device)
    trainer = L.Trainer(
        accelerator=device.type, devices=[device.index] if device.index is not None else 1,
        precision=cfg.precision, max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock],
    )
    trainer.fit(module, datamodule=datamodule)
    return best_rate(clock.stamps, batch, int(cfg.repeats))


def hugging_face_peers(model_cfg: dict[str, Any]) -> dict[str, Callable[[], nn.Module]]:
    """Builders of the same-shape Hugging Face ViT and the note's; empty when `transformers` is not installed."""
    try:
        from transformers import ViTConfig, ViTForImageClassification
        from transformers.utils import logging as hf_logging
    except ImportError:
        return {}
    hf_logging.set_verbosity_error()

    class Logits(nn.Module):
        """ViTForImageClassification called like ours: images in, logits out."""

        def __init__(self, shape: dict[str, Any]):
            super().__init__()
            config = ViTConfig(
                image_size=model_cfg["image_size"], num_channels=model_cfg["in_channels"],
                num_labels=model_cfg["num_classes"], patch_size=shape["patch_size"], hidden_size=shape["hidden_dim"],
                num_hidden_layers=shape["depth"], num_attention_heads=shape["heads"],
                intermediate_size=shape["mlp_dim"],
            )
            self.model = ViTForImageClassification(config)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=x).logits

    same = {k: model_cfg[k] for k in NOTE_SHAPE}
    return {"HF ViT, same shape": lambda: Logits(same), "HF ViT, the note's (MLP 3072)": lambda: Logits(NOTE_SHAPE)}


def check_options(cfg: DictConfig) -> None:
    """`UserError` for options the benchmark cannot run with."""
    sizes = list(cfg.batch_sizes) if OmegaConf.is_list(cfg.batch_sizes) else [cfg.batch_sizes]
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in sizes):
        raise UserError(f"batch_sizes={cfg.batch_sizes} must be a list of positive integers, e.g. batch_sizes=[64,256].")
    for key in ("steps", "warmup", "repeats", "matmul_size", "profile_steps", "profile_table"):
        value = cfg.get(key, 0)
        zero_ok = key in ("warmup", "profile_steps", "profile_table")
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero_ok else 1):
            raise UserError(f"{key}={value!r} must be a {'non-negative' if zero_ok else 'positive'} integer.")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"precision={cfg.precision!r} is not one of {list(PRECISIONS)}.")
    check_model(cfg.model)
    resolve_device(str(cfg.device))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Measure everything the config asks for; return the machine's figures and one `Row` per model and batch."""
    check_options(cfg)
    device = resolve_device(str(cfg.device))
    if device.type == "cpu":
        warn_if_slow_bf16(cfg.precision, "cpu")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    compile_ours = model_cfg.get("compile") or False
    shape = (model_cfg["in_channels"], model_cfg["image_size"], model_cfg["image_size"])
    classes = model_cfg["num_classes"]

    def make_optimizer(params):
        return hydra.utils.instantiate(cfg.optimizer, params=params, _convert_="all")

    builders: dict[str, Callable[[], nn.Module]] = {OURS: lambda: build_network(model_cfg)}
    vit = model_arch(model_cfg) == "vit"  # model=cnn: no Hugging Face peer, and convolutions are no matmuls
    peers = hugging_face_peers(model_cfg) if cfg.peers and vit else {}
    builders.update(peers)
    peak = matmul_gflops(device, cfg.matmul_size)
    rows = []
    for batch in cfg.batch_sizes:
        batches = make_batches(batch, shape, classes, device)
        for name, build in builders.items():
            torch.manual_seed(0)
            net = build().to(device)
            flops = train_flops_per_image(net, shape, classes, device)
            if prefers_channels_last(device):  # the layout training and inference give the network here
                net.to(memory_format=torch.channels_last)
            if compile_ours and (name == OURS or cfg.compile_peers):
                compile_network(net, model_cfg["compile"])
            timing = (cfg.steps, cfg.warmup, cfg.repeats, device)
            step = time_train_step(net, make_optimizer, batches, *timing, cfg.precision)
            table = bool(cfg.profile_table) and name == OURS
            share = None
            if (cfg.profile_steps and vit) or table:  # one profile serves the matmul share and the op table
                averages = profile_step(train_step(net, make_optimizer, batches, device, cfg.precision),
                                        max(1, int(cfg.profile_steps)), device)
                if cfg.profile_steps and vit:
                    share = matmul_share_of(averages, on_device=device.type == "cuda")
                if table:
                    print(f"Per-op profile of our train step, batch {batch}, {cfg.precision}:\n"
                          f"{op_table(averages, device, int(cfg.profile_table))}")
            inference = time_inference(net, batches, *timing, cfg.precision)
            pipeline = time_pipeline(cfg, batch, device) if name == OURS else None
            rows.append(Row(name, batch, count_parameters(net), flops / 1e6, step, inference, pipeline, share))
    return {
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_isa": isa_summary(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": cfg.precision,
        "compile": compile_ours,
        "matmul_gflops": peak,
        "matmul_size": cfg.matmul_size,
        "peers_missing": bool(cfg.peers) and vit and not peers,  # asked for, but transformers does not import
        "rows": [asdict(r) for r in rows],
    }


def device_name(device: torch.device) -> str:
    """A readable name for the table's title."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({cpu_model()})"


def print_table(results: dict[str, Any]) -> None:
    """The results as a rich table: images/s, share of the matmul rate, and how many times faster ours is."""
    from rich.console import Console
    from rich.table import Table

    peak = results["matmul_gflops"]
    table = Table(title=f"Throughput on {results['device']}, {results['threads']} threads, {results['precision']}"
                        f"{', ours compiled' if results['compile'] else ''} (images/s)")
    for column in ("model", "batch", "params", "train MFLOP/img", "train step", "full pipeline", "pipeline/step",
                   "inference", "% of fp32 matmul", "matmul share of step", "ours ÷ this: train",
                   "ours ÷ this: inference"):
        table.add_column(column, justify="left" if column == "model" else "right")
    ours = {r["batch"]: r for r in results["rows"] if r["model"] == OURS}
    for r in results["rows"]:
        mine = ours[r["batch"]]
        share = r["train_mflop"] * r["train_step"] / 1e3 / peak  # achieved GFLOP/s over the matmul rate
        table.add_row(
            r["model"], str(r["batch"]), f"{r['params']:,}", f"{r['train_mflop']:.1f}", f"{r['train_step']:,.0f}",
            "—" if r["pipeline"] is None else f"{r['pipeline']:,.0f}",
            "—" if r["pipeline"] is None else f"{r['pipeline'] / r['train_step']:.2f}",
            f"{r['inference']:,.0f}", f"{100 * share:.0f}%",
            "—" if r.get("matmul_share") is None else f"{100 * r['matmul_share']:.0f}%",
            "—" if r is mine else f"{mine['train_step'] / r['train_step']:.2f}×",
            "—" if r is mine else f"{mine['inference'] / r['inference']:.2f}×",
        )
    table.caption = (f"CPU: {results['cpu']} ({results['cpu_isa']}). fp32 matmul rate: {peak:,.1f} GFLOP/s ({results['matmul_size']}² matrices, torch "
                     f"{results['torch']}). Train step: forward, backward "
                     "and optimizer step on batches already on the device; full pipeline: our DataLoader, on-device "
                     "augmentation and the Lightning step; matmul share: of the train step's profiled time, the part in matrix "
                     "multiplies and attention kernels (1 / share bounds the speed-up from removing all the rest).")
    if results["peers_missing"]:
        table.caption += ' Install the bench extra (pip install -e ".[bench]") to compare with Hugging Face\'s ViT.'
    Console(width=200).print(table)


def bench(cfg: DictConfig) -> dict[str, Any]:
    """The benchmark job: measure, print the table, write the results to `cfg.output` when set; return them."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners between measurements
    warnings.filterwarnings("ignore", module="lightning")
    results = run(cfg)
    print_table(results)
    if cfg.output:
        write_json(Path(cfg.output), results)
        print(f"wrote {cfg.output}", file=sys.stdout)
    return results
