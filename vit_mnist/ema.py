"""Old path of the EMA callback (now vit_mnist/training/ema.py), kept for run folders written before the move."""

# Kept on purpose, not a leftover: every `callbacks=ema` run made before vit_mnist/training/ existed has
# `_target_: vit_mnist.ema.EMA` in its .hydra/config.yaml, and re-running that config (`python -m vit_mnist.train
# --config-path <run>/.hydra --config-name config`) instantiates the callback by this path. Checkpoints do not
# need it: they hold no class paths. conf/callbacks/ema.yaml names vit_mnist.training.ema.EMA.
from vit_mnist.training.ema import EMA, check_ema_options

__all__ = ["EMA", "check_ema_options"]
