"""Training: the LightningModule (module.py) and what a run adds: EMA, TTA, init_from, callbacks, DDP, sweeps."""
