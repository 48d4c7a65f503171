"""Records into a paper table's cells: seeds averaged, the paper's number and the missing runs beside each."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

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

    @property
    def values(self) -> list[float]:
        return [self.scale * float(r.compressed["metric"]) for r in self.records if "metric" in r.compressed]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper

    def extra(self, name: str) -> float | None:
        """Mean over seeds of an extra column: a ratio (``flops_ratio``, ``speedup_b32``) or a compressed-model quantity."""
        values = [v for v in (_extra_of(r, name) for r in self.records) if v is not None]
        return statistics.fmean(values) if values else None


def aggregate(spec: Spec, run_ids: dict[tuple[Cell, int], str], records: dict[str, RunRecord]) -> list[CellResult]:
    """One result per cell of ``spec``, in table order, from the completed ``records`` (by run id)."""
    results = []
    for cell in sorted(spec.cells, key=lambda c: (spec.rows.index(c.row), spec.columns.index(c.column))):
        result = CellResult(cell, spec.scale, paper=spec.paper_number(cell))
        for seed in spec.seeds:
            record = records.get(run_ids[(cell, seed)])
            if record is None:
                result.missing_seeds.append(seed)
            else:
                result.records.append(record)
        results.append(result)
    return results


def _extra_of(record: RunRecord, name: str) -> float | None:
    """``<x>_ratio`` and ``speedup_b<n>`` from the ratios; anything else (``params``, ``flops``) of the compressed model."""
    if name.endswith("_ratio"):
        value = record.ratios.get(name.removesuffix("_ratio"))
    elif name.startswith("speedup"):
        value = record.ratios.get(name)
    else:
        value = record.compressed.get(name, record.ratios.get(name))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
