"""Which network a `model` config builds, by `model.arch`: the ViT (`model=vit`) or the small CNN (`model=cnn`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from vit_mnist.models.cnn import CNNConfig, SmallCNN
from vit_mnist.models.rollout import attention_rollout
from vit_mnist.models.vit import VisionTransformer, ViTConfig

# model.arch -> the network class and its config dataclass (whose fields are the network's model.* keys).
ARCHS: dict[str, tuple[type[nn.Module], type[ViTConfig] | type[CNNConfig]]] = {
    "vit": (VisionTransformer, ViTConfig),
    "cnn": (SmallCNN, CNNConfig),
}
NAMES = {"vit": "the Vision Transformer", "cnn": "the small CNN"}
# Checkpoints written before `model.arch` existed hold a ViT: a config without the key means one.
DEFAULT_ARCH = "vit"
# model.* keys that configure training around the network rather than the network itself.
NON_NETWORK_KEYS = ("arch", "compile", "init_from", "_target_")
# Titles of the report figure attention.png, which shows each architecture's own relevance maps.
MAP_TITLES = {
    "vit": "Attention rollout: where the classifier token reads from",
    "cnn": "Class activation maps: where the evidence for the predicted class lies",
}


def _options(arch: str) -> list[str]:
    """The network keys of `arch`, in the order of its config's fields."""
    return [f.name for f in fields(ARCHS[arch][1])]


def model_arch(model_cfg: Mapping[str, Any]) -> str:
    """The `model.arch` of a model config or checkpoint hyperparameters; `ValueError` for an unknown one."""
    arch = model_cfg.get("arch", DEFAULT_ARCH)
    if not isinstance(arch, str) or arch not in ARCHS:
        options = ", ".join(f"model={a} ({NAMES[a]})" for a in ARCHS)
        raise ValueError(f"model.arch={arch!r} is not a network this project builds: choose the config group "
                         f"{options}, e.g. `model=cnn`, rather than setting model.arch by hand.")
    return arch


def network_config(model_cfg: Mapping[str, Any]) -> ViTConfig | CNNConfig:
    """The typed config of the network a `model` config (or a checkpoint's `hyper_parameters.model`) describes;
    `ValueError` naming the `model.*` keys when it cannot build one. Keys in NON_NETWORK_KEYS are not the
    network's and are left out; keys not given take the config's defaults."""
    arch = model_arch(model_cfg)
    options = _options(arch)
    values = {k: v for k, v in model_cfg.items() if k not in NON_NETWORK_KEYS}
    unknown = [k for k in values if k not in options]
    if unknown:
        other = [a for a in ARCHS if a != arch and all(k in _options(a) for k in unknown)]
        # They come from an override, from setting model.arch by hand, or from an experiment config (all of
        # them ViT recipes, which a later `model=cnn` does not undo).
        they, them = ("It is a", "it") if len(unknown) == 1 else ("They are", "them")
        belongs = (f" {they} model={other[0]} ({NAMES[other[0]]}) setting{'s' * (len(unknown) > 1)}: pick the "
                   f"network with `model={arch}` (not model.arch={arch}) and leave {them} out." if other else "")
        if other and arch != "vit":
            belongs += " The experiment configs are recipes for model=vit and cannot be combined with model=cnn."
        raise ValueError(
            f"{', '.join(f'model.{k}' for k in unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} "
            f"of model={arch} ({NAMES[arch]}), whose options are {', '.join(f'model.{k}' for k in options)}.{belongs}"
        )
    return ARCHS[arch][1](**values)


def check_model_config(model_cfg: Mapping[str, Any]) -> None:
    """`ValueError` naming the config keys when `model_cfg` cannot build its network (before any work starts)."""
    network_config(model_cfg)


def build_network(model_cfg: Mapping[str, Any]) -> nn.Module:
    """The network a `model` config (or a checkpoint's `hyper_parameters.model`) describes; `ValueError` if bad."""
    network, _ = ARCHS[model_arch(model_cfg)]
    return network(network_config(model_cfg))


@torch.no_grad()
def relevance_maps(net: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-image maps (B, h, w) scaled to max 1 of where the prediction draws from: attention rollout for the
    ViT, the class activation map of `classes` for the CNN."""
    if isinstance(net, SmallCNN):
        return net.class_activation_maps(images, classes)
    tokens, attentions = net.forward_features(images, return_attention=True)  # the explicit path: few images
    readout = net.pool_weights(tokens) if net.pool == "seq" else None
    return attention_rollout(attentions, net.pool, net.num_prefix_tokens, readout)
