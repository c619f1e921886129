"""What a search trial's job hands back to the sweeper when the pruner stopped it (no Optuna: every entry loads it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrunedTrial:
    """The job's return value for a trial stopped by the pruner: the sweeper marks it PRUNED in the study.

    Picklable, so a launcher that runs the job in another process (submitit) brings it back too."""

    epochs: int
    value: float | None  # the objective (val/acc_best) reached before the stop; not told to the study as a result
