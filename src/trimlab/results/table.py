"""``trimlab-table``: collect ``record.json`` files into a table.

For now it lists every completed run under a runs folder as Markdown; the
paper-table layouts (``experiments/<paper>.yaml``) build on :func:`collect`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from trimlab.config import ConfigError
from trimlab.results.record import RECORD_FILE, RunRecord, read_record

COLUMNS = ("run", "model", "dataset", "method", "budget", "metric", "dense", "compressed", "flops ratio", "speedup b1")


def collect(runs_dir: Path) -> list[RunRecord]:
    """Completed records under ``runs_dir`` (any depth), sorted by model, dataset, method."""
    records = []
    for path in sorted(runs_dir.rglob(RECORD_FILE)):
        record = read_record(path)
        if record.status == "completed":
            records.append(record)
    return sorted(records, key=lambda r: (r.model, r.dataset, r.method, str(r.budget)))


def markdown(records: Iterable[RunRecord]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        budget = f"{r.budget.get('kind')} {r.budget.get('target'):g}"
        cells = (
            r.run_id,
            r.model,
            r.dataset,
            r.method,
            budget,
            str(r.dense.get("metric_name", "")),
            f"{r.dense.get('metric', float('nan')):.4f}",
            f"{r.compressed.get('metric', float('nan')):.4f}",
            f"{r.ratios.get('flops', float('nan')):.3f}",
            f"{r.ratios.get('speedup_b1', float('nan')):.2f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console script ``trimlab-table``."""
    parser = argparse.ArgumentParser(
        prog="trimlab-table", description="Print the completed trimlab runs under a folder as a Markdown table."
    )
    parser.add_argument("--runs", type=Path, default=Path("outputs/runs"), help="folder of run folders (default: outputs/runs)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        print(f"trimlab-table: no runs folder at {args.runs}; run `trimlab` first or pass --runs", file=sys.stderr)
        return 2
    try:
        records = collect(args.runs)
    except ConfigError as err:
        print(f"trimlab-table: error: {err}", file=sys.stderr)
        return 2
    if not records:
        print(f"no completed runs under {args.runs}")
        return 0
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
