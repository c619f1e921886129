"""The search space of a sweep: Hydra override syntax (`choice`, `range`, `interval`, `tag(log|int, ...)`) to Optuna.

    optimizer.lr: tag(log, interval(1e-4, 3e-3))    a float, sampled on a log scale
    model.depth: choice(2, 4, 6)                    one of the values (categorical)
    data.batch_size: range(32, 257, 32)             an integer grid; as Hydra's range, the stop is left out
    model.mlp_dim: tag(int, interval(64, 256))      an integer in [64, 256] (`tag(log, int, ...)`: on a log scale)
    model.heads: 4                                  not searched: every trial runs with it

The sweeper's `params` come first, the command line's overrides after them (same key: the command line wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from vit_mnist.errors import UserError

SYNTAX = ("`choice(a, b, ...)` or `a,b`, `range(start, stop[, step])`, `interval(low, high)`, "
          "`tag(log, interval(low, high))`, `tag(int, interval(low, high))`, or a plain value to fix it")


@dataclass
class SearchSpace:
    """What each trial samples (`distributions`) and what every trial runs with unchanged (`fixed`)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> the override line passed to every trial

    def fixed_values(self) -> dict[str, str]:
        """The fixed overrides as key -> value text, kept with each trial as user attributes."""
        return {key: line.split("=", 1)[1] if "=" in line else "" for key, line in self.fixed.items()}


def parse_search_space(params: Mapping[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """The search space of the sweeper's `params` (key -> override text) and the command line's overrides."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space = SearchSpace()
    for line in lines:
        override = _parse(line)
        key = override.get_key_element()
        space.distributions.pop(key, None)  # a later line for the same key replaces an earlier one
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = to_distribution(override)
        else:
            space.fixed[key] = override.input_line
    return space


def _parse(line: str) -> Override:
    try:
        return OverridesParser.create().parse_overrides([line])[0]
    except HydraException as e:
        said = " ".join(str(e).split("See https")[0].split())
        raise UserError(f"The search space entry `{line}` cannot be read: {said}. Write each searched key as "
                        f"{SYNTAX} (docs/scaling.md#optuna-search).") from e


def to_distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override; a UserError naming the key for what Optuna cannot sample."""
    key, value = override.get_key_element(), override.value()
    if isinstance(value, RangeSweep) and not value.shuffle:
        return _range(key, value, override)
    if isinstance(value, (ChoiceSweep, RangeSweep)):  # shuffle(...) has no order: categorical
        return _categorical(key, override)
    if isinstance(value, IntervalSweep):
        return _interval(key, value)
    raise UserError(f"The search space entry `{override.input_line}` is a {type(value).__name__}, which Optuna "
                    f"cannot sample: write {key} as {SYNTAX}.")


def _categorical(key: str, override: Override) -> CategoricalDistribution:
    # encoded: each choice as the text of its override (a list choice becomes '[1,2]'), which Optuna can store
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    if not choices:
        raise UserError(f"The search space entry `{override.input_line}` has no choices: give {key} at least one.")
    if len(set(map(repr, choices))) < len(choices):
        raise UserError(f"The search space entry `{override.input_line}` repeats a choice: list each value of "
                        f"{key} once.")
    return CategoricalDistribution(choices)


def _range(key: str, value: RangeSweep, override: Override) -> BaseDistribution:
    values = list(override.sweep_iterator())
    if not values:
        raise UserError(f"The search space entry `{override.input_line}` is empty (Hydra's range leaves out its "
                        f"stop): give {key} a stop past its start, e.g. range(1, 5) for 1, 2, 3, 4.")
    if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
        return IntDistribution(values[0], values[-1], step=abs(value.step)) if value.step > 0 else \
            CategoricalDistribution(values)
    return CategoricalDistribution([float(v) for v in values])  # float steps: the grid Hydra would sweep


def _interval(key: str, value: IntervalSweep) -> BaseDistribution:
    low, high, tags = value.start, value.end, set(value.tags)
    unknown = tags - {"log", "int"}
    if unknown:
        raise UserError(f"The search space entry for {key} has the tag(s) {sorted(unknown)}: an interval takes "
                        "`log` (sample on a log scale) and `int` (whole numbers) only.")
    if low is None or high is None or not low < high:
        raise UserError(f"The search space entry for {key} is interval({low}, {high}): its low end must be below "
                        "its high end.")
    log = "log" in tags
    if log and low <= 0:
        raise UserError(f"The search space entry for {key} is tag(log, interval({low}, {high})): a log scale needs "
                        "a low end above 0.")
    if "int" in tags:
        if int(low) != low or int(high) != high:
            raise UserError(f"The search space entry for {key} is tag(int, interval({low}, {high})): give whole "
                            "numbers for an integer interval.")
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def override_value(value: Any) -> str:
    """A sampled value as override text: floats in full precision, strings as Optuna stored them (already encoded)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid sampler's search space: every value of each distribution, which must all be discrete."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise UserError(f"The grid sampler (hydra/sweeper/sampler=grid) needs a finite set of values, but {key} "
                            "is an interval: give it as choice(...) or range(...), or use another sampler "
                            "(tpe, random, cmaes).")
    return grid
