"""Runs as few Hydra multiruns: ``trimlab -m`` sweeps a grid (``key=a,b`` for every key that varies), so runs
whose overrides name the same keys in the same order and whose values fill a whole grid share one multirun.

A launcher (Submitit, Ray) runs the jobs of one multirun side by side; fewer multiruns, fewer waits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def grid_sweeps(runs: Sequence[Sequence[str]]) -> list[list[str]]:
    """The override lists of ``trimlab -m`` commands that together make each of ``runs`` once, and nothing else.

    Runs are grouped by their keys, in order; a group whose values fill the grid of each key's values is one
    multirun. Otherwise it is split by the values of its first key that varies and each part is tried again,
    down to one run per multirun.
    """
    by_keys: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for run in runs:
        by_keys.setdefault(tuple(_key(o) for o in run), []).append(tuple(run))
    return [sweep for group in by_keys.values() for sweep in _split_into_grids(list(dict.fromkeys(group)))]


def _split_into_grids(runs: list[tuple[str, ...]]) -> list[list[str]]:
    """``runs`` (distinct, same keys) as grids: one when they fill it, else split on the first key that varies."""
    choices = [list(dict.fromkeys(run[i] for run in runs)) for i in range(len(runs[0]))]
    if len(runs) == math.prod(len(c) for c in choices):
        return [[_sweep(c) for c in choices]]
    first = next(i for i, c in enumerate(choices) if len(c) > 1)
    return [sweep for value in choices[first] for sweep in _split_into_grids([r for r in runs if r[first] == value])]


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _sweep(overrides: list[str]) -> str:
    """``["k=a", "k=b"]`` → ``k=a,b``; a single override stays as it is (also one without a value, ``~k``)."""
    if len(overrides) == 1:
        return overrides[0]
    return f"{_key(overrides[0])}=" + ",".join(o.split("=", 1)[1] for o in overrides)
