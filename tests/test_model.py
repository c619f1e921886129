"""The ViT encoder: output shapes, parameter count, attention paths, its config's errors and the models' imports."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from vit_mnist.models.cnn import CNNConfig, SmallCNN
from vit_mnist.models.registry import build_network, check_model_config, network_config
from vit_mnist.models.vit import (
    CPU_BF16_EXPLICIT_TOKENS,
    Attention,
    VisionTransformer,
    ViTConfig,
    count_parameters,
    sincos_2d,
)

MODELS_DIR = Path(__file__).resolve().parents[1] / "vit_mnist" / "models"


@pytest.mark.parametrize(("patch", "depth", "heads", "pool"), [(7, 4, 4, "cls"), (4, 2, 8, "mean"), (14, 1, 2, "cls"), (28, 3, 1, "mean")])
def test_logits_shape(patch: int, depth: int, heads: int, pool: str) -> None:
    config = ViTConfig(patch_size=patch, depth=depth, heads=heads, hidden_dim=32, mlp_dim=64, pool=pool)
    model = VisionTransformer(config)
    logits = model(torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert model.patch_embed.num_patches == (28 // patch) ** 2


def expected_parameters(image: int, patch: int, channels: int, dim: int, depth: int, mlp: int, classes: int) -> int:
    """Hand count: conv patch embedding, CLS, positions, per block 2 LNs + qkv + proj + MLP, final LN, head."""
    tokens = (image // patch) ** 2 + 1
    embed = channels * patch * patch * dim + dim
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    return embed + dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


@pytest.mark.parametrize(("patch", "dim", "depth", "mlp"), [(7, 128, 4, 512), (4, 64, 6, 128), (14, 48, 2, 96)])
def test_parameter_count(patch: int, dim: int, depth: int, mlp: int) -> None:
    model = VisionTransformer(ViTConfig(patch_size=patch, hidden_dim=dim, depth=depth, heads=4, mlp_dim=mlp))
    assert count_parameters(model) == expected_parameters(28, patch, 1, dim, depth, mlp, 10)


def test_note_model_size() -> None:
    # The note's ViT: patch 7, hidden 128, 4 layers, MLP 512.
    assert count_parameters(VisionTransformer(ViTConfig())) == 803_338


def test_attention_weights_path_matches_sdpa() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=2, heads=4, mlp_dim=64)).eval()
    x = torch.randn(3, 1, 28, 28)
    fast = model(x)
    slow, attentions = model(x, return_attention=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert len(attentions) == 2
    assert attentions[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(3, 4, 17))


def test_conv_stem_keeps_token_grid() -> None:
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=4, stem="conv"))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.patch_embed.num_patches == 49


def test_drop_path_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=3, heads=2, mlp_dim=64, drop_path=0.5))
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_cct_tokenizer_pools_to_a_quarter_resolution_grid_of_local_features() -> None:
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=4, stem="cct",
                                        pool="seq"))
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10) and model.patch_embed.num_patches == 49
    assert model.patch_embed.stem(x).shape == (2, 16, 7, 7)  # two conv stages, each max-pooled: 28 -> 14 -> 7
    # a token sees a neighbourhood, not its own patch alone: a pixel changed outside token (0, 0)'s 4x4 patch
    # still moves that token (a plain patch embedding would not)
    model.eval()
    moved = x.clone()
    moved[:, :, 5, 5] += 3.0
    tokens, changed = model.patch_embed(x), model.patch_embed(moved)
    assert not torch.allclose(tokens[:, 0], changed[:, 0])
    with pytest.raises(ValueError) as error:
        ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=14, stem="cct")
    assert "model.stem=cct" in str(error.value) and "multiples of 4" in str(error.value)


@pytest.mark.parametrize("pool", ["seq", "cls"])
def test_local_feed_forward_mixes_each_patch_token_with_its_grid_neighbours_only(pool: str) -> None:
    config = ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=48, patch_size=4, pool=pool, ffn="leff")
    model = VisionTransformer(config).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    mlp, prefix = model.blocks[0].mlp, model.num_prefix_tokens
    tokens = torch.randn(1, prefix + 49, 32)
    moved = tokens.clone()
    moved[:, prefix + 3 * 7 + 3] += 5.0  # the token at grid row 3, column 3
    changed = (mlp(moved) - mlp(tokens)).abs().amax(dim=-1)[0, prefix:].reshape(7, 7) > 1e-6
    near = torch.zeros(7, 7, dtype=torch.bool)
    near[2:5, 2:5] = True  # the 3x3 convolution's reach: the token and its eight neighbours
    assert torch.equal(changed, near)
    if prefix:  # the CLS token skips the convolution: a patch token moved does not move it
        assert torch.equal(mlp(moved)[:, 0], mlp(tokens)[:, 0])
    # the plain feed-forward is per token: only the moved token changes
    plain = VisionTransformer(dataclasses.replace(config, ffn="mlp")).eval().blocks[0].mlp
    assert int(((plain(moved) - plain(tokens)).abs().amax(dim=-1) > 1e-6).sum()) == 1


@pytest.mark.parametrize(("stem", "tokenizer", "ffn", "pool"),
                         [("cct", "patch", "leff", "seq"), ("patch", "spt", "mlp", "cls"), ("conv2", "patch", "leff", "cls")])
def test_a_centrally_cropped_image_reads_with_the_central_tokens_positions(stem: str, tokenizer: str, ffn: str,
                                                                          pool: str) -> None:
    """The crop warmup's batches: the central 20x20 of a 28x28 image is 5x5 of the 7x7 tokens, each at its place."""
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=48, patch_size=4, stem=stem,
                                        tokenizer=tokenizer, ffn=ffn, pool=pool)).eval()
    crop = torch.randn(3, 1, 20, 20)
    with torch.no_grad():
        before = model(crop)
        prefix = model.num_prefix_tokens
        grid = model.pos_embed[0, prefix:].view(7, 7, -1)
        step = torch.randn(grid.shape[-1])  # not a constant: the layer norms would take that out again
        grid[0].add_(step), grid[-1].add_(step), grid[:, 0].add_(step), grid[:, -1].add_(step)  # the outer ring only
        ring_moved = model(crop)
        grid[3, 3].add_(step)  # the centre token's position
        centre_moved = model(crop)
    assert before.shape == (3, 10)
    torch.testing.assert_close(ring_moved, before)  # the ring's positions belong to the cut margin
    assert not torch.allclose(centre_moved, before)
    with pytest.raises(ValueError, match="central square"):
        model(torch.randn(1, 1, 24, 24))  # 6x6 tokens: an odd margin of tokens has no central place
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"patch_size": 5}, ["model.patch_size=5", "model.image_size=28", "[1, 2, 4, 7, 14, 28]"]),
        ({"hidden_dim": 130, "heads": 4}, ["model.hidden_dim=130", "model.heads=4"]),
        ({"pool": "max"}, ["model.pool='max'"]),
        ({"depth": 0}, ["model.depth=0"]),
        ({"dropout": 1.5}, ["model.dropout=1.5"]),
        ({"pos_init": "zeros"}, ["model.pos_init='zeros'"]),
        ({"ffn": "conv"}, ["model.ffn='conv'", "mlp", "leff"]),
        ({"hidden_dim": 6, "heads": 2}, ["model.pos_init=sincos", "model.hidden_dim=6", "divisible by 4"]),
    ],
)
def test_shape_errors_name_the_keys(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        ViTConfig(**kwargs)
    for word in words:
        assert word in str(error.value)


def test_sincos_positions_tell_every_patch_apart_and_encode_distance() -> None:
    codes = sincos_2d(7, 64)
    assert codes.shape == (49, 64)
    distances = torch.cdist(codes, codes)
    assert (distances + torch.eye(49) * 1e3).min() > 0.1  # no two patches share a code
    # neighbours are closer than far-away patches: (0,0)-(0,1) vs (0,0)-(6,6)
    assert distances[0, 1] < distances[0, 48]
    model = VisionTransformer(ViTConfig(patch_size=4, hidden_dim=64, heads=4, mlp_dim=64, depth=1))
    torch.testing.assert_close(model.pos_embed[0, 1:].detach(), codes)
    assert model.pos_embed.requires_grad  # an initialisation, still learned
    random = VisionTransformer(ViTConfig(patch_size=4, hidden_dim=64, heads=4, mlp_dim=64, depth=1, pos_init="random"))
    assert random.pos_embed.std() < 0.05


@pytest.mark.parametrize(("tokens", "sdpa_dtypes"), [(17, []), (CPU_BF16_EXPLICIT_TOKENS + 1, [torch.float32])])
def test_cpu_bf16_attention_avoids_the_slow_bf16_kernel(monkeypatch: pytest.MonkeyPatch, tokens: int,
                                                        sdpa_dtypes: list) -> None:
    # torch's bf16 CPU flash-attention backward is many times slower than fp32's: short sequences take explicit bf16
    # products around a bf16 softmax, longer ones fp32 SDPA; both must agree with the fp32 attention
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    torch.manual_seed(0)
    attention = Attention(dim=32, heads=2)
    x = torch.randn(3, tokens, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attention(x)
    assert seen == sdpa_dtypes and out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    grad_bf16, x.grad = x.grad.clone(), None
    seen.clear()
    reference, _ = attention(x)  # fp32 as it was
    assert seen == [torch.float32]
    reference.square().sum().backward()
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)
    torch.testing.assert_close(grad_bf16, x.grad, atol=0.1, rtol=0.1)
    # and the explicit attention weights are a distribution over the tokens
    _, weights = attention(x, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, tokens))


def test_two_conv_stem_keeps_token_grid_at_half_resolution() -> None:
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=4, stem="conv2"))
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10) and model.patch_embed.num_patches == 49
    assert model.patch_embed.stem(x).shape == (2, 16, 14, 14)
    assert model.patch_embed.proj.kernel_size == (2, 2)
    full = VisionTransformer(ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=4, stem="conv"))
    assert full.patch_embed.stem(x).shape == (2, 16, 28, 28)
    # the one-conv stem keeps the parameter names its checkpoints were saved with
    assert {k for k in full.state_dict() if k.startswith("patch_embed.stem.")} >= {
        "patch_embed.stem.0.weight", "patch_embed.stem.1.weight", "patch_embed.stem.1.running_mean"}


def test_two_conv_stem_needs_an_even_patch() -> None:
    with pytest.raises(ValueError) as error:
        ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=7, stem="conv2")
    assert "model.stem=conv2" in str(error.value) and "model.patch_size" in str(error.value)
    assert "even" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"patch_size": 6}, ["model.patch_size=6", "does not divide model.image_size=28", "[1, 2, 4, 7, 14, 28]"]),
        ({"hidden_dim": 96, "heads": 5}, ["model.hidden_dim=96", "model.heads=5", "Pick heads from [1, 2, 3, 4, 6, 8"]),
        ({"pool": "max"}, ["model.pool='max'", "['cls', 'mean', 'seq']"]),
    ],
)
def test_vit_config_raises_a_plain_value_error_naming_the_key(kwargs: dict, words: list[str]) -> None:
    # the model package knows nothing of the CLI's UserError: callers turn this into one
    with pytest.raises(ValueError) as error:
        ViTConfig(**kwargs)
    assert type(error.value) is ValueError
    assert all(word in str(error.value) for word in words), str(error.value)
    with pytest.raises(ValueError, match="model.pool='max'"):  # the registry checks through the same dataclass
        network_config({"arch": "vit", "pool": "max"})


def test_config_is_checked_once_and_stays_valid() -> None:
    config = ViTConfig(depth=2)
    assert VisionTransformer(config).config is config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="model.depth=0"):
        dataclasses.replace(config, depth=0)


@pytest.mark.parametrize(
    "net",
    [VisionTransformer(ViTConfig(hidden_dim=32, depth=2, heads=2, mlp_dim=64)),
     VisionTransformer(ViTConfig(hidden_dim=32, depth=1, heads=2, mlp_dim=64, patch_size=4, stem="conv2")),
     SmallCNN(CNNConfig(widths=(8, 16)))],
    ids=["vit", "vit-conv2", "cnn"],
)
def test_no_weight_decay_names_existing_parameters(net: torch.nn.Module) -> None:
    names = dict(net.named_parameters())
    assert net.no_weight_decay() <= names.keys()
    if isinstance(net, VisionTransformer):
        assert net.no_weight_decay() == {"pos_embed", "cls_token"}


def test_default_vit_keeps_the_checkpoint_keys() -> None:
    # checkpoints saved before the config dataclass must keep loading: same keys, same shapes
    state = VisionTransformer(ViTConfig()).state_dict()
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = ({"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight",
                 "norm.bias", "head.weight", "head.bias"}
                | {f"blocks.{i}.{name}" for i in range(ViTConfig().depth) for name in per_block})
    assert set(state) == expected
    assert state["patch_embed.proj.weight"].shape == (128, 1, 7, 7)
    assert state["pos_embed"].shape == (1, 17, 128) and state["cls_token"].shape == (1, 1, 128)
    assert state["blocks.0.attn.qkv.weight"].shape == (384, 128) and state["head.weight"].shape == (10, 128)
    # and a config built from a checkpoint's hyperparameters makes the same network
    net = build_network({"arch": "vit", "compile": False, "init_from": None, **dataclasses.asdict(ViTConfig())})
    net.load_state_dict(state)


def test_forward_is_features_then_head() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(hidden_dim=32, depth=2, heads=2, mlp_dim=64, pool="mean")).eval()
    x = torch.randn(2, 1, 28, 28)
    tokens, attentions = model.forward_features(x)
    assert tokens.shape == (2, 17, 32) and attentions == [None, None]
    torch.testing.assert_close(model.forward_head(tokens), model(x))
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)


def test_network_config_takes_a_mapping_and_names_keys_of_the_other_model() -> None:
    config = network_config({"arch": "cnn", "widths": [16, 32], "compile": True, "_target_": "x"})
    assert config == CNNConfig(widths=(16, 32))
    assert network_config({"hidden_dim": 64}) == ViTConfig(hidden_dim=64)  # no arch: a ViT (older checkpoints)
    with pytest.raises(ValueError, match=r"model.patch_size is not an option of model=cnn .*pick the network "
                                         r"with `model=cnn` \(not model.arch=cnn\)"):
        check_model_config({"arch": "cnn", "patch_size": 7})
    with pytest.raises(ValueError, match="model.arch='resnet' is not a network this project builds"):
        check_model_config({"arch": "resnet"})


def test_model_package_imports_only_stdlib_torch_and_itself() -> None:
    files = sorted(MODELS_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "vit.py", "cnn.py", "registry.py", "rollout.py"}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        docstring = ast.get_docstring(tree, clean=False)
        assert docstring and "\n" not in docstring.strip(), f"{path.name} must start with a one-line docstring"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue  # relative imports stay inside the package
            for module in modules:
                top = module.split(".")[0]
                assert (top in sys.stdlib_module_names or top == "torch" or module == "vit_mnist.models"
                        or module.startswith("vit_mnist.models.")), f"{path.name} imports {module}"
