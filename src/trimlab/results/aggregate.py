"""Records into a paper table's cells: seeds averaged with their interval, the paper's number, the missing runs, and
whether compressed − dense is more than the noise of the test set and of the seeds together."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from trimlab.results.intervals import includes_zero, paired_bootstrap, pooled_interval, seed_interval
from trimlab.results.predictions import Predictions, score
from trimlab.results.record import RunRecord
from trimlab.results.spec import Cell, Spec


@dataclass
class CellResult:
    """One table cell: our records over the spec's seeds, the paper's number, the seeds still to run."""

    cell: Cell
    scale: float
    records: list[RunRecord] = field(default_factory=list)
    missing_seeds: list[int] = field(default_factory=list)
    paper: float | None = None
    predictions: dict[int, Predictions] = field(default_factory=dict)
    """The per-example test predictions of those records that stored them, by seed."""

    @property
    def values(self) -> list[float]:
        return [self.scale * float(r.compressed["metric"]) for r in self.records if "metric" in r.compressed]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @functools.cached_property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Student-t interval of the mean over seeds; None below two seeds."""
        if len(self.values) < 2:
            return None
        _, low, high = seed_interval(self.values)
        return low, high

    @property
    def half_width(self) -> float | None:
        return None if self.interval is None else (self.interval[1] - self.interval[0]) / 2

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    @functools.cached_property
    def vs_dense(self) -> tuple[float, float, float] | None:
        """Compressed − dense (× scale), averaged over seeds, and its 95% interval over the test examples and the seeds.

        The seeds share the test split (``dataset.split_seed`` fixes it), so each
        resample draws one set of examples for all of them (see
        :func:`~trimlab.results.intervals.paired_bootstrap`); with two seeds or more
        the interval is widened by the spread of the per-seed differences (each seed
        its own calibration sample and training order:
        :func:`~trimlab.results.intervals.pooled_interval`). None for the dense
        column, and unless every seed stored its predictions on one split.
        """
        runs = list(self.predictions.values())
        if not runs or len(runs) != len(self.records) or all(r.method == "dense" for r in self.records):
            return None
        if len({len(p.labels) for p in runs}) != 1 or len({p.metric for p in runs}) != 1:
            return None
        return self._difference([(p.labels, p.dense, p.compressed) for p in runs], runs[0].metric)

    def versus(self, other: CellResult) -> tuple[float, float, float] | None:
        """This cell − ``other`` (× scale, compressed models both), over the seeds both ran, and its 95% interval.

        The same paired bootstrap as :attr:`vs_dense`, with ``other``'s model in the dense one's place: each seed's
        two runs must have stored predictions on one test split (same labels, same metric). None otherwise, and
        when the two cells share no seed.
        """
        seeds = sorted(self.predictions.keys() & other.predictions.keys())
        pairs = [(self.predictions[s], other.predictions[s]) for s in seeds]
        if not pairs or len(seeds) != len({r.seed for r in self.records} & {r.seed for r in other.records}):
            return None
        if any(mine.metric != theirs.metric or not np.array_equal(mine.labels, theirs.labels) for mine, theirs in pairs):
            return None
        if len({len(mine.labels) for mine, _ in pairs}) != 1 or len({mine.metric for mine, _ in pairs}) != 1:
            return None
        return self._difference([(mine.labels, theirs.compressed, mine.compressed) for mine, theirs in pairs], pairs[0][0].metric)

    def _difference(self, runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], metric: str) -> tuple[float, float, float]:
        """``metric(b) − metric(a)`` (× scale) of (labels, a, b) per seed, averaged, with its pooled 95% interval."""
        stack = [np.stack(part) for part in zip(*runs)]
        per_seed = [float(score(metric, labels, b) - score(metric, labels, a)) for labels, a, b in runs]
        delta, low, high = pooled_interval(*paired_bootstrap(*stack, metric=metric), per_seed)
        return self.scale * delta, self.scale * low, self.scale * high

    @property
    def undecided(self) -> bool:
        """The interval of compressed − dense includes 0: this test set does not tell the two models apart."""
        return self.vs_dense is not None and includes_zero(*self.vs_dense[1:])

    def extra(self, name: str) -> float | None:
        """Mean over seeds of an extra column: a ratio (``flops_ratio``, ``speedup_b32``) or a compressed-model quantity."""
        values = [v for v in (_extra_of(r, name) for r in self.records) if v is not None]
        return statistics.fmean(values) if values else None


def aggregate(
    spec: Spec,
    run_ids: dict[tuple[Cell, int], str],
    records: dict[str, RunRecord],
    predictions: Mapping[str, Predictions] | None = None,
) -> list[CellResult]:
    """One result per cell of ``spec``, in table order, from the completed ``records`` and their ``predictions`` (by run id)."""
    predictions = predictions or {}
    results = []
    for cell in sorted(spec.cells, key=lambda c: (spec.rows.index(c.row), spec.columns.index(c.column))):
        result = CellResult(cell, spec.scale, paper=spec.paper_number(cell))
        for seed in spec.seeds:
            record = records.get(run_ids[(cell, seed)])
            if record is None:
                result.missing_seeds.append(seed)
            else:
                result.records.append(record)
                if record.run_id in predictions:
                    result.predictions[seed] = predictions[record.run_id]
        results.append(result)
    return results


def _extra_of(record: RunRecord, name: str) -> float | None:
    """``<x>_ratio``, ``speedup_b<n>`` and ``limit_fraction_b<n>`` from the ratios; anything else (``params``, ``flops``) of the compressed model."""
    if name.endswith("_ratio"):
        value = record.ratios.get(name.removesuffix("_ratio"))
    elif name.startswith(("speedup", "limit_fraction")):
        value = record.ratios.get(name)
    else:
        value = record.compressed.get(name, record.ratios.get(name))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
