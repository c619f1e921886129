"""The corruption benchmark's suite: MNIST-C's corruptions and other handwriting's shifts, each at one severity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_mnist.data.corruptions import KINDS
from vit_mnist.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption of the benchmark, at one severity."""

    name: str
    kind: str
    severity: int
    level: Any  # the kind's parameter at that severity
    source: str  # mnist-c or handwriting
    seen_with: tuple[str, ...]  # data.augment keys whose training distortions resemble it


def _severity(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in SEVERITIES:
        raise UserError(f"{where}={value!r} is not a severity: use a whole number from 1 (mildest) to 5 (worst), "
                        f"e.g. severity=3, or severity=null for each corruption's own (the paper's) level.")
    return value


def build_suite(corruptions: Any, severity: Any = None, only: Sequence[str] | None = None) -> list[CorruptionSpec]:
    """The corruptions of a `corruptions:` table (conf/robustness.yaml), checked; `only` picks some by name."""
    table = OmegaConf.to_container(corruptions, resolve=True) if isinstance(corruptions, DictConfig) else corruptions
    if not isinstance(table, dict) or not table:
        raise UserError("The robustness config has no `corruptions:` table: see conf/robustness.yaml for its form.")
    if severity is not None:
        severity = _severity(severity, "severity")
    only = list(only or [])
    unknown = [n for n in only if n not in table]
    if unknown:
        raise UserError(f"only={unknown} names no corruption of the benchmark: choose from {list(table)}, "
                        "e.g. 'only=[fog,stripe]', or leave `only` out to run them all.")
    suite = []
    for name, entry in table.items():
        if only and name not in only:
            continue
        kind = entry.get("kind", name)
        if kind not in KINDS:
            raise UserError(f"corruptions.{name}.kind={kind!r} is not a corruption this project implements: use one "
                            f"of {sorted(KINDS)}.")
        levels = entry.get("levels")
        if not isinstance(levels, list) or len(levels) != len(SEVERITIES):
            raise UserError(f"corruptions.{name}.levels must list the parameter at each of the {len(SEVERITIES)} "
                            f"severities, got {levels!r}.")
        level_index = severity if severity is not None else _severity(entry.get("severity"),
                                                                       f"corruptions.{name}.severity")
        suite.append(CorruptionSpec(name, kind, level_index, levels[level_index - 1], str(entry.get("source", "")),
                                    tuple(entry.get("seen_with") or ())))
    return suite


def augmentation_keys_on(augment: dict | None) -> set[str]:
    """The data.augment keys a training run used (a range that is not zero, a flag that is on)."""
    on = set()
    for key, value in (augment or {}).items():
        if key == "scale":
            low, high = (list(value) + [1.0, 1.0])[:2] if isinstance(value, (list, tuple, ListConfig)) else (1.0, 1.0)
            if (float(low), float(high)) != (1.0, 1.0):
                on.add(key)
        elif isinstance(value, bool):
            if value:
                on.add(key)
        elif isinstance(value, (int, float)) and value:
            on.add(key)
    return on


def seen_names(suite: Sequence[CorruptionSpec], augment: dict | None) -> list[str]:
    """The corruptions that resemble a training run's augmentations ("seen kinds")."""
    on = augmentation_keys_on(augment)
    return [c.name for c in suite if on.intersection(c.seen_with)]
