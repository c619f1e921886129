"""Hydra's entry to vit-mnist's Optuna sweeper: Hydra instantiates sweepers only from the hydra_plugins namespace."""
