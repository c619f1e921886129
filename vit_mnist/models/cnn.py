"""A small VGG-style CNN (`model=cnn`): the convolutional baseline that the ViT is compared against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vit_mnist.models.vit import (
    INPUT_NORMS,
    BackgroundNorm,
    conv_bn_relu,
    is_fraction,
    is_positive_int,
)

DEFAULT_WIDTHS = (32, 64, 128)


@dataclass(frozen=True)
class CNNConfig:
    """Every hyperparameter of the small CNN, named as the `model.*` keys of `model=cnn`; checked when made.

    `widths` may come as a list (YAML, checkpoints) or any sequence; it is kept as a tuple so the config stays
    immutable. Frozen, so a config that passed `validate` stays valid: change one with `dataclasses.replace`.
    """

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    convs_per_block: int = 2
    dropout: float = 0.1
    input_norm: str = "none"

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "widths", tuple(self.widths))  # frozen: the dataclass's own way to set a field

    def validate(self) -> None:
        """`ValueError` naming the `model.*` key and how to fix it when this CNN cannot be built."""
        problems = [f"model.{key}={value!r} must be a positive integer"
                    for key in ("image_size", "in_channels", "num_classes", "convs_per_block")
                    if not is_positive_int(value := getattr(self, key))]
        if problems:
            raise ValueError("Invalid model=cnn configuration: " + "; ".join(problems) + ".")
        widths, image_size, dropout = self.widths, self.image_size, self.dropout
        # a list from YAML, a tuple from code (or OmegaConf's ListConfig); a string is a sequence too, but no widths
        is_sequence = isinstance(widths, Sequence) and not isinstance(widths, (str, bytes))
        if not is_sequence or not widths or not all(is_positive_int(w) for w in widths):
            shown = list(widths) if is_sequence else widths  # as the user wrote it, whether list or tuple
            raise ValueError(f"model.widths={shown!r} must be a non-empty list of positive integers, one channel "
                             f"count per conv block, e.g. 'model.widths=[32,64,128]' (quote the brackets for the "
                             f"shell).")
        # Every block but the last halves the image (2x2 max-pool); the last one must still see at least 1x1.
        if image_size >> (len(widths) - 1) < 1:
            fit = image_size.bit_length()
            raise ValueError(f"model.widths={list(widths)} makes {len(widths)} conv blocks, but each block but the "
                             f"last halves the {image_size}x{image_size} image, so at most {fit} blocks fit: give "
                             "fewer widths.")
        if not is_fraction(dropout):
            raise ValueError(f"model.dropout={dropout!r} must be in [0, 1), e.g. model.dropout=0.1; 0 turns it off.")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"model.input_norm={self.input_norm!r} is not one of {list(INPUT_NORMS)}: `tophat` "
                             "removes each image's smooth background and stretches its contrast before the first "
                             "convolution; `none` feeds the image as it is.")


class SmallCNN(nn.Module):
    """A small VGG-style classifier: conv blocks, global average pooling, dropout and one linear layer.

    Each block is `convs_per_block` 3x3 conv-BN-ReLU layers; every block but the last ends with a 2x2 max-pool.
    With the defaults (widths 32-64-128, two convs per block) a 28x28 digit goes 28 -> 14 -> 7, and the last
    block's 7x7 maps are averaged into 128 features: 288,170 parameters, about a third of the note's ViT.

    Why this design: stacked 3x3 convolutions with batch norm are the standard strong, easily trained
    MNIST baseline (above 99% test accuracy within a few epochs), so a ViT-vs-CNN comparison measures the ViT
    against a well-tuned convolutional net rather than a weak one; LeNet-5 (61k parameters, no batch norm) is
    a historical reference, not a strong baseline. Global average pooling instead of a large fully connected
    head keeps the parameters in the convolutions (well under the 1.0M budget) and makes class activation
    maps exact: a class's logit is the spatial mean of its map plus the bias, so `class_activation_maps` shows
    where the evidence lies, as attention rollout does for the ViT.
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        # the ViT's weight-free background normalisation (model.input_norm=tophat), for a like-for-like comparison
        self.input_norm = BackgroundNorm() if config.input_norm == "tophat" else nn.Identity()
        blocks: list[nn.Module] = []
        channels, widths = config.in_channels, config.widths
        for i, width in enumerate(widths):
            layers = []
            for _ in range(config.convs_per_block):
                layers += conv_bn_relu(channels, width)
                channels = width
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, config.num_classes)
        self._init_weights()

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exempt from weight decay besides norms and biases: none in a CNN."""
        return set()

    def _init_weights(self) -> None:
        # He (fan-out) initialisation for ReLU convolutions, as torchvision's VGG and ResNet.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, num_classes) for images (B, C, H, W)."""
        pooled = self.features(self.input_norm(x)).mean(dim=(2, 3))  # global average pool; exports to ONNX as ReduceMean
        return self.head(self.drop(pooled))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """In one pass, the logits `forward` gives and the pooled (B, C) features the head reads (out-of-domain
        scores)."""
        pooled = self.features(self.input_norm(x)).mean(dim=(2, 3))
        return self.head(self.drop(pooled)), pooled

    @torch.no_grad()
    def class_activation_maps(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class activation maps (Zhou et al., 2016) of `classes` (B,), shape (B, h, w), each scaled to max 1.

        The map is the head's weights for the class applied at every position of the last feature maps; its
        mean plus the bias is the class's logit. Negative evidence is clipped, as in the CAM paper.
        """
        features = self.features(self.input_norm(x))  # (B, C, h, w)
        weights = self.head.weight[classes]  # (B, C)
        maps = torch.einsum("bchw,bc->bhw", features.float(), weights.float()).clamp_min(0.0)
        return maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
