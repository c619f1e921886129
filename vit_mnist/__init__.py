"""vit-mnist: Vision Transformers on MNIST-family datasets with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
