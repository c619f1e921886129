"""The field's small-data ViT techniques: shifted patch tokens, locality self-attention, sequence pooling and
distillation through attention, each one override, through training, checkpoints, prediction and export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, compose_config
from vit_mnist import load_model
from vit_mnist.errors import UserError
from vit_mnist.inference.export import export
from vit_mnist.models.registry import relevance_maps
from vit_mnist.models.vit import ShiftedPatchTokenizer, VisionTransformer, ViTConfig
from vit_mnist.training import module as module_of_student
from vit_mnist.training.checkpoints import load_module, read_checkpoint
from vit_mnist.training.distill import distillation_loss
from vit_mnist.training.fit import build, train
from vit_mnist.training.teacher import check_distill

pytestmark = pytest.mark.xdist_group("small_data_vit")

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_dim=32, depth=2, heads=2, mlp_dim=64, patch_size=4)
OPTIONS = {
    "spt": ["model.tokenizer=spt"],
    "lsa": ["model.attention=lsa"],
    "seq": ["model.pool=seq"],
    "all": ["model.tokenizer=spt", "model.attention=lsa", "model.pool=seq"],
}


def test_spt_stacks_the_image_and_its_four_diagonal_half_patch_shifts() -> None:
    tokenizer = ShiftedPatchTokenizer(image_size=28, patch_size=4, in_channels=1, hidden_dim=32)
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 12] = 1.0  # one bright pixel
    stack = tokenizer.shifted_stack(x)
    assert stack.shape == (1, 5, 28, 28)
    assert torch.equal(stack[:, :1], x)
    for channel, (dy, dx) in enumerate(tokenizer.shifts, start=1):
        assert (dy, dx) in {(-2, -2), (-2, 2), (2, -2), (2, 2)}  # diagonal, half of the 4-pixel patch
        assert stack[0, channel].nonzero().tolist() == [[10 + dy, 12 + dx]]
    tokens = tokenizer(torch.randn(3, 1, 28, 28))
    assert tokens.shape == (3, 49, 32)  # 7x7 patches of 4x4, each 5 x 16 values -> hidden 32


def test_lsa_masks_the_diagonal_and_learns_its_temperature() -> None:
    net = VisionTransformer(ViTConfig(**SMALL, attention="lsa"))
    images = torch.randn(2, 1, 28, 28)
    _, attentions = net(images, return_attention=True)
    for weights in attentions:
        assert torch.all(weights.diagonal(dim1=-2, dim2=-1) == 0)  # no token attends to itself
        assert torch.allclose(weights.sum(dim=-1), torch.ones(()))
    net(images).sum().backward()
    temperatures = [b.attn.log_temperature for b in net.blocks]
    assert all(t.grad is not None and t.grad.abs() > 0 for t in temperatures)
    assert math.isclose(temperatures[0].exp().item(), math.sqrt(16), rel_tol=1e-6)  # starts at sqrt(head_dim)
    # the fast path (SDPA with the mask) computes what the explicit one does
    net.eval()
    assert torch.allclose(net(images), net(images, return_attention=True)[0], atol=1e-5)


def test_sequence_pooling_weights_sum_to_one_and_it_has_no_cls_token() -> None:
    net = VisionTransformer(ViTConfig(**SMALL, pool="seq"))
    tokens, _ = net.forward_features(torch.randn(4, 1, 28, 28))
    weights = net.pool_weights(tokens)
    assert weights.shape == (4, 49) and torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert not hasattr(net, "cls_token") and net.pos_embed.shape[1] == 49
    maps = relevance_maps(net, torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    assert maps.shape == (2, 7, 7) and torch.allclose(maps.amax(dim=(1, 2)), torch.ones(2))


def test_distillation_token_heads_average_at_inference() -> None:
    net = VisionTransformer(ViTConfig(**SMALL, distill_token=True)).eval()
    images = torch.randn(3, 1, 28, 28)
    logits, dist_logits = net.forward_heads(images)
    assert torch.allclose(net(images), (logits + dist_logits) / 2, atol=1e-6)
    assert net.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}


def test_distillation_loss_is_the_formula_on_a_hand_computed_case() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    dist = torch.tensor([[0.0, 1.0]])
    labels = torch.tensor([0])
    teacher = torch.tensor([[0.0, 3.0]])  # predicts class 1
    ce_class = math.log(1 + math.exp(-2.0))  # -log softmax([2, 0])[0]
    ce_dist_hard = math.log(1 + math.exp(-1.0))  # -log softmax([0, 1])[1]
    hard = distillation_loss(logits, dist, labels, teacher, "hard", alpha=0.25)
    assert math.isclose(hard.item(), 0.75 * ce_class + 0.25 * ce_dist_hard, rel_tol=1e-6)
    tau = 2.0
    p_t = torch.softmax(teacher / tau, dim=-1)[0]
    p_s = torch.softmax(dist / tau, dim=-1)[0]
    kl = sum(float(p_t[i] * (math.log(p_t[i]) - math.log(p_s[i]))) for i in range(2))
    soft = distillation_loss(logits, dist, labels, teacher, "soft", alpha=0.5, tau=tau)
    assert math.isclose(soft.item(), 0.5 * ce_class + 0.5 * kl * tau * tau, rel_tol=1e-5)


@pytest.fixture(scope="module")
def teacher(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN trained for a moment on the synthetic MNIST: the teacher of the distillation tests."""
    out = tmp_path_factory.mktemp("teacher")
    not_vit = [o for o in TINY if not o.startswith("model.")]
    cfg = compose_config([*not_vit, f"paths.data_dir={data_dir}", "model=cnn", "model.widths=[8,16]", "trainer.max_epochs=1",
                          "logger=csv", "test=false"], out)
    return Path(train(cfg)["best_checkpoint"])


@pytest.fixture(scope="module")
def student(data_dir: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """A tiny ViT distilled from the CNN teacher (all four techniques at once); then the teacher file is gone."""
    out = tmp_path_factory.mktemp("student")
    kept = out / "teacher.ckpt"
    kept.write_bytes(teacher.read_bytes())
    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", "model.patch_size=4", *OPTIONS["all"],
                          f"distill.teacher={kept}", "distill.kind=soft", "distill.tau=2.0", "trainer.max_epochs=1",
                          "logger=csv"], out)
    metrics = train(cfg)
    kept.unlink()  # the student must never need it again
    return Path(metrics["best_checkpoint"]), metrics, out


def test_the_teacher_gets_no_gradient_and_stays_in_eval_mode(make_cfg, teacher: Path) -> None:
    cfg = make_cfg("model.patch_size=4", f"distill.teacher={teacher}", "distill.alpha=0.5")
    _, module = build(cfg)
    teacher_net = module._teacher[0]
    before = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    module.train()
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, _, _ = module._distill_step((images, labels))
    loss.backward()
    assert not teacher_net.training and all(p.grad is None and not p.requires_grad for p in teacher_net.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher_net.state_dict().items())
    assert module.teacher_time_s > 0
    assert not any(k.startswith("_teacher") or "teacher" in k for k in module.state_dict())


def test_the_teacher_is_timed_after_the_device_s_queued_work(make_cfg, teacher: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # on a GPU the teacher's forward only queues kernels: the clock must wait for them at both ends
    cfg = make_cfg("model.patch_size=4", f"distill.teacher={teacher}")
    _, module = build(cfg)
    waited: list[str] = []
    monkeypatch.setattr(module_of_student, "synchronize", lambda device: waited.append(device.type))
    module._distill_step((torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))))
    assert waited == ["cpu", "cpu"]


def test_the_teacher_takes_the_student_s_dtype_under_true_precision(data_dir: Path, teacher: Path,
                                                                    tmp_path: Path) -> None:
    # bf16-true converts the student's weights and batches, not the teacher kept outside the module
    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", "model.patch_size=4", f"distill.teacher={teacher}",
                          "trainer.precision=bf16-true", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          "trainer.limit_val_batches=1", "robustness=true", "robustness_images=20", "logger=csv"],
                         tmp_path / "bf16")
    metrics = train(cfg)  # fit, calibration, the detector, the test and the benchmark, all on bf16 weights
    assert metrics["global_step"] == 2 and "teacher_time_s" in metrics and "test/mca" in metrics


def test_a_distilled_student_loads_predicts_and_exports_without_its_teacher(student, tmp_path: Path) -> None:
    ckpt, metrics, _ = student
    assert metrics["teacher_time_s"] > 0 and 0 < metrics["teacher_share"] < 1
    hparams = read_checkpoint(ckpt)["hyper_parameters"]
    assert hparams["distill"]["kind"] == "soft" and hparams["model"]["distill_token"] is True
    assert not Path(hparams["distill"]["teacher"]).exists()
    module = load_module(ckpt)
    assert module.net.config.tokenizer == "spt" and module.net.config.pool == "seq"
    predictions = load_model(ckpt).predict(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy())
    assert predictions.probabilities.shape == (2, 10)
    summary = export(ckpt, "onnx", tmp_path / "student.onnx")  # parity with PyTorch is checked inside
    assert summary["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_trains_and_exports_with_onnx_parity(option: str, data_dir: Path, tmp_path: Path) -> None:
    no_callbacks = [o for o in TINY if not o.startswith("callbacks.")]  # debug=fdr has none
    cfg = compose_config([*no_callbacks, f"paths.data_dir={data_dir}", "model.patch_size=4", *OPTIONS[option],
                          "debug=fdr"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["global_step"] == 1 and 0.0 <= metrics["test/acc"] <= 1.0
    # debug=fdr keeps no checkpoint: a checkpoint of this config's network, as training writes one, to export
    _, module = build(cfg)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0,
                "global_step": 0}, path)
    assert export(path, "onnx", tmp_path / "model.onnx")["max_abs_diff"] <= 1e-4


def test_bad_teachers_are_refused_before_any_work(teacher: Path, tmp_path: Path, data_dir: Path,
                                                  run_in_process) -> None:
    model = {"arch": "vit", "distill_token": True}
    with pytest.raises(UserError, match="distill.teacher=.*missing.ckpt does not exist"):
        check_distill({"teacher": str(tmp_path / "missing.ckpt")}, model, "mnist")
    with pytest.raises(UserError, match="was trained on mnist .* this run trains on fashion_mnist"):
        check_distill({"teacher": str(teacher)}, model, "fashion_mnist")
    other = read_checkpoint(teacher)
    other["hyper_parameters"]["model"]["num_classes"] = 5
    fewer = tmp_path / "five_classes.ckpt"
    torch.save(other, fewer)
    with pytest.raises(UserError, match=r"\(5 classes\)"):
        check_distill({"teacher": str(fewer)}, model, "mnist")
    with pytest.raises(UserError, match="distill.kind='warm'"):
        check_distill({"teacher": str(teacher), "kind": "warm"}, model, "mnist")
    with pytest.raises(UserError, match="model=vit for the student"):
        check_distill({"teacher": str(teacher)}, {"arch": "cnn"}, "mnist")

    # from the command line: one paragraph, and no run folder left behind
    log_dir = tmp_path / "outputs"
    result = run_in_process("vit_mnist.train", f"distill.teacher={tmp_path / 'nope.ckpt'}", f"paths.log_dir={log_dir}",
                            cwd=tmp_path, VIT_MNIST_DATA_DIR=str(data_dir))
    said = result.stderr.replace("\n", " ")
    assert result.returncode == 2 and said.startswith("error: distill.teacher=") and "Traceback" not in said
    assert not log_dir.exists()


def test_spt_refuses_a_conv_stem_and_options_name_their_key() -> None:
    with pytest.raises(ValueError, match=r"model.tokenizer=spt .*\(model.stem=conv\)"):
        ViTConfig(tokenizer="spt", stem="conv")
    with pytest.raises(ValueError, match="model.attention='local'"):
        ViTConfig(attention="local")
    with pytest.raises(ValueError, match="model.pool='max'"):
        ViTConfig(pool="max")


def test_old_checkpoints_keep_their_layout() -> None:
    """A ViT without the new options has exactly the parameters it had before them (old checkpoints load)."""
    names = set(VisionTransformer(ViTConfig(**SMALL)).state_dict())
    assert {"cls_token", "pos_embed", "head.weight"} <= names
    assert not any(n.startswith(("dist_token", "head_dist", "attention_pool")) or "log_temperature" in n
                   or "mlp.local" in n for n in names)


@pytest.mark.parametrize("args", [[*OPTIONS["spt"], *OPTIONS["lsa"]], ["experiment=robust_vit"]],
                         ids=["spt+lsa", "robust_vit"])
def test_cli_debug_runs(args: list[str], data_dir: Path, tmp_path: Path, run_in_process) -> None:
    result = run_in_process("vit_mnist.train", *args, "debug=fdr", "data.val_size=100", "data.download=false",
                            "model.hidden_dim=32", "model.depth=1", "model.heads=2",
                            f"paths.log_dir={tmp_path / 'outputs'}", cwd=tmp_path, VIT_MNIST_DATA_DIR=str(data_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run finished" in result.stdout
