"""The benchmark command runs on a tiny setting and prints its table (it is a command, not a test of speed)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from tests.builders import TINY_BENCH
from tests.conftest import compose_config, subprocess_env
from vit_mnist.benchmark.throughput import (
    check_options,
    matmul_share,
    matmul_share_of,
    print_table,
    run,
)
from vit_mnist.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def test_bench_measures_ours_and_the_hugging_face_peers(tmp_path: Path, capsys) -> None:
    results = run(compose_config(TINY_BENCH, tmp_path, config_name="bench"))
    rows = {r["model"]: r for r in results["rows"]}
    ours = rows["ours"]
    assert results["matmul_gflops"] > 0 and results["threads"] >= 1
    assert ours["batch"] == 8 and ours["train_step"] > 0 and ours["inference"] > 0 and ours["pipeline"] > 0
    # forward + backward is about 3 forwards; the forward of 17 tokens (CLS + 4x4 patches of 7x7) at width 32:
    blocks = 2 * 17 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)  # qkv, attention output, MLP
    attention = 2 * (2 * 17 * 17 * 32)  # q @ k and weights @ v: counted on the CPU kernel too
    forward = blocks + attention + 2 * 16 * 49 * 32 + 2 * 32 * 10  # + patch projection and head
    assert ours["train_mflop"] * 1e6 == pytest.approx(3 * forward, rel=0.05)
    assert 0.0 < ours["matmul_share"] < 1.0
    if HAS_TRANSFORMERS:
        same = rows["HF ViT, same shape"]
        # the same shape: the same parameters and, within the head's share, the same FLOPs
        assert same["params"] == ours["params"]
        assert same["train_mflop"] == pytest.approx(ours["train_mflop"], rel=0.05)
        assert rows["HF ViT, the note's (MLP 3072)"]["params"] > 3_000_000
        assert same["pipeline"] is None and same["train_step"] > 0
    print_table(results)
    out = capsys.readouterr().out
    assert "ours" in out and "GFLOP/s" in out and ("HF ViT, same shape" in out) == HAS_TRANSFORMERS
    assert results["cpu"] and f"CPU: {results['cpu']} ({results['cpu_isa']})" in " ".join(out.split())


def test_bench_prints_the_per_op_profile_when_asked(tmp_path: Path, capsys) -> None:
    run(compose_config(TINY_BENCH + ["peers=false", "profile_table=40", "precision=bf16-mixed"], tmp_path,
                       config_name="bench"))
    out = capsys.readouterr().out
    assert "Per-op profile of our train step, batch 8, bf16-mixed" in out and "aten::" in out
    assert "_backward" in out  # backward kernels are listed apart from the forward ones


def test_bench_times_our_network_in_the_layout_cpu_training_gives_it(tmp_path: Path, monkeypatch) -> None:
    """On a CPU the fit runs the convolutions on channels-last weights (ViTClassifier.setup); the bench's train step,
    profile and inference must time that network, not a contiguous one, whose pooling and convolutions are slower."""
    import vit_mnist.benchmark.throughput as throughput

    seen: dict[str, list[bool]] = {"train": [], "inference": []}

    def recorded(name: str, timer):
        def timed(net, *args, **kwargs):
            conv = net.patch_embed.stem[3]  # a 3x3 convolution of 8 channels: the two layouts differ
            seen[name].append(conv.weight.is_contiguous(memory_format=torch.channels_last))
            return timer(net, *args, **kwargs)
        return timed

    monkeypatch.setattr(throughput, "time_train_step", recorded("train", throughput.time_train_step))
    monkeypatch.setattr(throughput, "time_inference", recorded("inference", throughput.time_inference))
    run(compose_config(TINY_BENCH + ["peers=false", "model.patch_size=4", "model.stem=cct", "model.pool=seq"],
                       tmp_path, config_name="bench"))
    assert seen == {"train": [True], "inference": [True]}


def test_matmul_share_tells_matrix_products_from_other_work() -> None:
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    assert matmul_share(lambda i: a @ b, 3, torch.device("cpu")) > 0.9
    assert matmul_share(lambda i: torch.tanh(a).exp(), 3, torch.device("cpu")) == 0.0


def _event(key: str, device_type: DeviceType, device_us: float, cpu_us: float = 0.0, annotation: bool = False):
    # what torch's profiler.key_averages() lists: one entry per op or kernel name and device type
    return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=device_us,
                           self_cpu_time_total=cpu_us, is_user_annotation=annotation)


def test_matmul_share_on_cuda_counts_each_kernel_once_and_finds_attention_kernels() -> None:
    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    # A CUDA profile as kineto records it: each kernel is an event of its own and also the self device time of
    # the op that launched it; attention runs under aten::_flash_attention_* / aten::_efficient_attention_*.
    events = [
        _event("aten::mm", cpu, 30, cpu_us=5), _event("sm90_xmma_gemm_f32f32_tf32f32", cuda, 30),
        _event("aten::addmm", cpu, 10, cpu_us=5), _event("ampere_sgemm_64x64_nn", cuda, 10),
        _event("aten::scaled_dot_product_attention", cpu, 0, cpu_us=2),
        _event("aten::_scaled_dot_product_flash_attention", cpu, 0, cpu_us=2),
        _event("aten::_flash_attention_forward", cpu, 15, cpu_us=3),
        _event("pytorch_flash::flash_fwd_kernel", cuda, 15),
        _event("aten::_efficient_attention_backward", cpu, 25, cpu_us=3),
        _event("fmha_cutlassB_f32_aligned_64x64_k64_sm80", cuda, 25),
        _event("aten::add_", cpu, 20, cpu_us=9), _event("vectorized_elementwise_kernel", cuda, 20),
        _event("ProfilerStep#1", cuda, 100, annotation=True),  # a span over the others, not time of its own
    ]
    assert matmul_share_of(events, on_device=True) == pytest.approx(80 / 100)  # before: 40 of 300
    # on the CPU the ops' own CPU time counts, attention included
    assert matmul_share_of(events, on_device=False) == pytest.approx((5 + 5 + 2 + 2 + 3 + 3) / 29)
    assert math.isnan(matmul_share_of([], on_device=True))


def test_entry_points_compute_fp32_matmuls_in_tf32_where_there_is_one() -> None:
    # the SLURM launcher calls train's Hydra task function without main(); bench has no main() of its own
    procs = {module: subprocess.Popen([sys.executable, "-c", f"import torch, {module}; "
                                       "print(torch.get_float32_matmul_precision())"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=subprocess_env())
             for module in ("vit_mnist.train", "vit_mnist.bench")}  # each in a fresh interpreter, side by side
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert out.strip() == "high", (module, err[-2000:])


def test_bench_options_are_checked(tmp_path: Path) -> None:
    for bad, named in (("batch_sizes=[0]", "batch_sizes"), ("steps=0", "steps"), ("precision=fp8", "precision"),
                       ("profile_steps=-1", "profile_steps")):
        with pytest.raises(UserError, match=named):
            check_options(compose_config(TINY_BENCH + [bad], tmp_path, config_name="bench"))


def test_bench_command_prints_its_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vit_mnist.bench", *TINY_BENCH, "peers=false", f"output={tmp_path / 'bench.json'}"],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Throughput on cpu" in result.stdout and "full pipeline" in result.stdout
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "outputs").exists()
