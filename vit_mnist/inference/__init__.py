"""Using a trained checkpoint: the predictor (images in, probabilities out), predicting files, the web app, export."""

from vit_mnist.inference.predictor import Predictor

__all__ = ["Predictor"]
