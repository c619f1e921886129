"""What the machine is and can do: the CPU model and instruction sets that decide fp32 and bf16 speed, the devices."""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from vit_mnist.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# The instruction sets that matter here, as Linux's /proc/cpuinfo (and `lscpu`) name them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bfloat16 arithmetic: dot products or tile matrix multiplies


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo file; ("", set()) where there is none."""
    try:
        text = path.read_text()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8488C"."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (empty where the OS does not say, e.g. off Linux)."""
    return frozenset(_cpuinfo()[1])


def isa_summary(flags: frozenset[str] | set[str] | None = None) -> str:
    """The flags of ISA_FLAGS the CPU has and lacks, e.g. "avx2 avx512f avx512_bf16, no amx_bf16"."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "instruction sets unknown"
    have = [f for f in ISA_FLAGS if f in flags]
    lack = [f for f in ISA_FLAGS if f not in flags]
    return " ".join(have) + (", no " + " ".join(lack) if lack else "") if have else "no " + " ".join(lack)


def native_bf16(flags: frozenset[str] | set[str] | None = None) -> bool | None:
    """Whether the CPU computes in bfloat16 natively (None: unknown, the OS gives no flags)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return None
    return any(f in flags for f in BF16_FLAGS)


_warned: set[str] = set()


def warn_if_slow_bf16(precision: str, accelerator: str, flags: frozenset[str] | set[str] | None = None) -> bool:
    """Say once per process that bf16 on this CPU is emulated (slower than fp32); True if it said so."""
    if "bf16" not in str(precision) or str(accelerator) not in ("cpu", "auto") or native_bf16(flags) is not False:
        return False
    if accelerator == "auto":
        import torch

        if torch.cuda.is_available():
            return False
    if "bf16" in _warned:
        return False
    _warned.add("bf16")
    log.warning(
        "precision=%s on %s, a CPU without native bfloat16 (no %s): every bf16 operation is converted to and from "
        "fp32 in software, so this trains slower than fp32, not faster. Use trainer.precision=32-true on this CPU; "
        "bf16 pays on CPUs with AVX512-BF16 or AMX and on GPUs.", precision, cpu_model(), " or ".join(BF16_FLAGS))
    return True


def fastest_precision(accelerator: str, flags: frozenset[str] | set[str] | None = None,
                      cuda_bf16: bool | None = None) -> str:
    """The training precision that is fastest on this machine for `trainer.accelerator`, for recipes that race
    the clock: bf16-mixed on a CPU with native bf16 or a GPU with bf16, 16-mixed on an older GPU, else 32-true
    (bf16 on a CPU without it is emulated, slower than fp32). `cuda_bf16` overrides the GPU check (tests)."""
    import torch

    accelerator = str(accelerator)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        if cuda_bf16 is None:
            if not torch.cuda.is_available():
                return "32-true"  # Lightning's "gpu" without CUDA is Apple's MPS: fp32, its safe default
            # what the GPU computes: with emulation counted, a T4 or V100 "supports" bf16 at a fraction of fp16's speed
            cuda_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16-mixed" if cuda_bf16 else "16-mixed"
    if accelerator in ("cpu", "auto"):
        return "bf16-mixed" if native_bf16(flags) else "32-true"
    return "32-true"  # mps and others: fp32, as Lightning's default


def synchronize(device: "torch.device") -> None:
    """Wait for the device's queued work, so the clock measures it (CPU work is never queued)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def resolve_device(name: str) -> "torch.device":
    """The device a `device=` setting means (auto: cuda when there is one, else cpu); `UserError` when this machine
    has none."""
    import torch

    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device={name!r} is not a device name: use auto, cpu, cuda, cuda:<index> or mps.") from e
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise UserError(f"device={name!r} is not available on this machine: use device=auto (picks cuda when "
                        "there is one, else cpu) or device=cpu.")
    return device
