"""The networks: the ViT (vit.py), the CNN baseline (cnn.py), attention rollout (rollout.py), model.arch -> network."""

from vit_mnist.models.cnn import CNNConfig, SmallCNN
from vit_mnist.models.registry import (
    ARCHS,
    MAP_TITLES,
    NAMES,
    build_network,
    check_model_config,
    model_arch,
    network_config,
    relevance_maps,
)
from vit_mnist.models.vit import VisionTransformer, ViTConfig, count_parameters

__all__ = ["ARCHS", "MAP_TITLES", "NAMES", "CNNConfig", "SmallCNN", "ViTConfig", "VisionTransformer", "build_network",
           "check_model_config", "count_parameters", "model_arch", "network_config", "relevance_maps"]
