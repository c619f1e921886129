"""Which network a `model` config builds, by `model.arch`: the ViT (`model=vit`) or the small CNN (`model=cnn`)."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vit_mnist.errors import UserError
from vit_mnist.models.cnn import SmallCNN, check_cnn_config
from vit_mnist.models.rollout import attention_rollout
from vit_mnist.models.vit import VisionTransformer, check_vit_shape

# model.arch -> the network class and the check of its arguments (same argument names as the class).
ARCHS: dict[str, tuple[type[nn.Module], Callable[..., None]]] = {
    "vit": (VisionTransformer, check_vit_shape),
    "cnn": (SmallCNN, check_cnn_config),
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


def _plain(model_cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else dict(model_cfg)


def model_arch(model_cfg: Any) -> str:
    """The `model.arch` of a model config or checkpoint hyperparameters; `UserError` for an unknown one."""
    arch = model_cfg.get("arch", DEFAULT_ARCH)
    if not isinstance(arch, str) or arch not in ARCHS:
        options = ", ".join(f"model={a} ({NAMES[a]})" for a in ARCHS)
        raise UserError(f"model.arch={arch!r} is not a network this project builds: choose the config group "
                        f"{options}, e.g. `model=cnn`, rather than setting model.arch by hand.")
    return arch


def network_kwargs(model_cfg: dict) -> dict:
    """The network's constructor arguments in a `model` config."""
    return {k: v for k, v in model_cfg.items() if k not in NON_NETWORK_KEYS}


def check_model_config(model_cfg: Any) -> None:
    """`UserError` naming the config keys when `model_cfg` cannot build its network (before any work starts)."""
    cfg = _plain(model_cfg)
    arch = model_arch(cfg)
    cls, check = ARCHS[arch]
    signature = inspect.signature(cls.__init__).parameters
    options = [name for name in signature if name != "self"]
    unknown = [k for k in network_kwargs(cfg) if k not in options]
    if unknown:
        other = [a for a, (c, _) in ARCHS.items()
                 if a != arch and all(k in inspect.signature(c.__init__).parameters for k in unknown)]
        # They come from an override, from setting model.arch by hand, or from an experiment config (all of
        # them ViT recipes, which a later `model=cnn` does not undo).
        they, them = ("It is a", "it") if len(unknown) == 1 else ("They are", "them")
        belongs = (f" {they} model={other[0]} ({NAMES[other[0]]}) setting{'s' * (len(unknown) > 1)}: pick the "
                   f"network with `model={arch}` (not model.arch={arch}) and leave {them} out." if other else "")
        if other and arch != "vit":
            belongs += " The experiment configs are recipes for model=vit and cannot be combined with model=cnn."
        raise UserError(
            f"{', '.join(f'model.{k}' for k in unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} "
            f"of model={arch} ({NAMES[arch]}), whose options are {', '.join(f'model.{k}' for k in options)}.{belongs}"
        )
    values = {name: p.default for name, p in signature.items() if p.default is not inspect.Parameter.empty}
    values.update(network_kwargs(cfg))
    check(**{name: values[name] for name in inspect.signature(check).parameters})


def build_network(model_cfg: Any) -> nn.Module:
    """The network a `model` config (or a checkpoint's `hyper_parameters.model`) describes; `UserError` if bad."""
    cfg = _plain(model_cfg)
    check_model_config(cfg)  # a stray key is a clear error here too, not a TypeError from the constructor
    cls, _ = ARCHS[model_arch(cfg)]
    return cls(**network_kwargs(cfg))


@torch.no_grad()
def relevance_maps(net: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-image maps (B, h, w) scaled to max 1 of where the prediction draws from: attention rollout for the
    ViT, the class activation map of `classes` for the CNN."""
    if isinstance(net, SmallCNN):
        return net.class_activation_maps(images, classes)
    _, attentions = net(images, return_attention=True)  # the explicit attention path, only for these few images
    return attention_rollout(attentions, net.pool)
