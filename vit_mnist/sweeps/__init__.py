"""Hyperparameter searches: the Optuna sweeper behind `hparams_search=optuna`, its search space, and pruning."""
