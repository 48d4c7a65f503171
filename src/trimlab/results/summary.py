"""The short table printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from trimlab.results.record import RunRecord


def summary_rows(record: RunRecord) -> list[tuple[str, str, str, str]]:
    """(quantity, dense, compressed, compressed/dense) rows for the measured quantities."""
    dense, comp, ratios = record.dense, record.compressed, record.ratios
    rows = [
        (dense.get("metric_name", "metric"), f"{dense.get('metric', float('nan')):.4f}", f"{comp.get('metric', float('nan')):.4f}",
         f"{ratios.get('metric_delta', 0.0):+.4f}"),
        ("GFLOPs / example", f"{dense.get('flops', 0) / 1e9:.3f}", f"{comp.get('flops', 0) / 1e9:.3f}", f"{ratios.get('flops', 1.0):.3f}x"),
        ("params (M)", f"{dense.get('params', 0) / 1e6:.2f}", f"{comp.get('params', 0) / 1e6:.2f}", f"{ratios.get('params', 1.0):.3f}x"),
    ]
    for key in sorted(k for k in dense if k.startswith("latency_ms_b")):
        b = key.removeprefix("latency_ms_b")
        rows.append(
            (f"latency ms (batch {b})", f"{dense[key]:.2f}", f"{comp.get(key, float('nan')):.2f}",
             f"{ratios.get(f'speedup_b{b}', 1.0):.2f}x faster" + _limit(ratios, b))
        )
        if f"{key}_int8_kernel" in comp:
            rows.append(
                ("  ... through int8 kernels", f"{dense[key]:.2f}", f"{comp[f'{key}_int8_kernel']:.2f}",
                 f"{ratios.get(f'speedup_b{b}_int8_kernel', 1.0):.2f}x faster")
            )
    return rows


def _limit(ratios: dict, batch: str) -> str:
    """How much of the physical limit (1 / FLOPs ratio) the speedup reaches, where FLOPs fell."""
    fraction = ratios.get(f"limit_fraction_b{batch}")
    return f" ({fraction:.0%} of the FLOPs limit)" if fraction is not None and ratios.get("flops", 1.0) < 0.99 else ""


def print_summary(record: RunRecord) -> None:
    table = Table(title=f"trimlab run {record.run_id}: {record.model} × {record.dataset} × {record.method} ({record.status})")
    for column in ("", "dense", "compressed", "ratio"):
        table.add_column(column, justify="right" if column else "left")
    for row in summary_rows(record):
        table.add_row(*row)
    console = Console()
    console.print(table)
    if record.stages:
        console.print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in record.stages.items()))
