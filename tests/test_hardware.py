"""CPU facts for timings, the bf16 warning and the fastest precision: read from /proc/cpuinfo-style text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from vit_mnist.runtime import hardware
from vit_mnist.runtime.hardware import (
    _cpuinfo,
    fastest_precision,
    isa_summary,
    native_bf16,
    warn_if_slow_bf16,
)

EPYC_AVX2 = {"fpu", "sse2", "avx", "avx2", "fma"}
XEON_AMX = EPYC_AVX2 | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


def test_cpuinfo_gives_the_first_model_name_and_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert _cpuinfo(info) == ("AMD EPYC 9R14", {"fpu", "avx2", "avx512f", "avx512_bf16"})
    assert _cpuinfo(tmp_path / "missing") == ("", set())


def test_isa_summary_and_native_bf16() -> None:
    assert isa_summary(EPYC_AVX2) == "avx2, no avx512f avx512_bf16 amx_bf16"
    assert isa_summary(XEON_AMX) == "avx2 avx512f avx512_bf16 amx_bf16"
    assert isa_summary(set()) == "instruction sets unknown"
    assert native_bf16(EPYC_AVX2) is False and native_bf16(XEON_AMX) is True and native_bf16(set()) is None


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "_warned", set())


def test_bf16_on_a_cpu_without_it_is_said_once(fresh_warning: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vit_mnist.runtime.hardware"):
        assert warn_if_slow_bf16("bf16-mixed", "cpu", EPYC_AVX2)
        assert not warn_if_slow_bf16("bf16-mixed", "cpu", EPYC_AVX2)  # once per process
    assert len(caplog.records) == 1
    assert "without native bfloat16" in caplog.text and "trainer.precision=32-true" in caplog.text


@pytest.mark.parametrize(("precision", "accelerator", "flags"), [
    ("bf16-mixed", "cpu", XEON_AMX),   # native bf16: nothing to say
    ("32-true", "cpu", EPYC_AVX2),     # not bf16
    ("bf16-mixed", "gpu", EPYC_AVX2),  # the GPU computes
    ("bf16-mixed", "cpu", set()),      # flags unknown: no guess
])
def test_bf16_warning_stays_quiet_where_it_is_not_due(fresh_warning: None, precision: str, accelerator: str,
                                                      flags: set[str]) -> None:
    assert not warn_if_slow_bf16(precision, accelerator, flags)


@pytest.mark.parametrize(("accelerator", "flags", "cuda_bf16", "expected"), [
    ("cpu", XEON_AMX, None, "bf16-mixed"),
    ("cpu", EPYC_AVX2 | {"avx512_bf16"}, None, "bf16-mixed"),  # AVX512-BF16 without AMX: native too
    ("cpu", EPYC_AVX2, None, "32-true"),       # emulated bf16 is slower than fp32
    ("cpu", set(), None, "32-true"),           # flags unknown: the safe choice
    ("gpu", EPYC_AVX2, True, "bf16-mixed"),    # the GPU computes, whatever the CPU
    ("cuda", XEON_AMX, False, "16-mixed"),     # a GPU without bf16 (e.g. V100)
    ("mps", XEON_AMX, None, "32-true"),
])
def test_fastest_precision(accelerator: str, flags: set[str], cuda_bf16: bool | None, expected: str) -> None:
    assert fastest_precision(accelerator, flags, cuda_bf16) == expected


def test_fastest_precision_on_a_gpu_accelerator_without_cuda_is_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # e.g. trainer.accelerator=gpu on Apple's MPS
    assert fastest_precision("gpu", XEON_AMX) == "32-true"
    assert fastest_precision("auto", XEON_AMX) == "bf16-mixed"  # auto without CUDA trains on the CPU


@pytest.mark.parametrize(("native", "expected"), [(False, "16-mixed"), (True, "bf16-mixed")])
def test_fastest_precision_on_a_gpu_ignores_emulated_bf16(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                          expected: str) -> None:
    # a T4 or V100: torch counts bf16 as supported by emulation, which is slower than fp16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert fastest_precision("gpu") == expected
    assert fastest_precision("auto") == expected


def test_fastest_precision_resolves_in_a_config() -> None:
    import torch
    from omegaconf import OmegaConf

    import vit_mnist.runtime  # noqa: F401  (registers the resolvers)

    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "${vit_mnist.fastest_precision:${trainer.accelerator}}"}})
    assert cfg.trainer.precision == fastest_precision("cpu")
    if not torch.cuda.is_available():
        cfg.trainer.accelerator = "auto"
        assert cfg.trainer.precision == fastest_precision("cpu")
