"""The Pareto plot of a paper table: task metric against FLOPs ratio and against measured speedup, one line per method,
and the front all methods make together (the points no other point beats on both axes). A point averaged over
several seeds carries its 95% interval as a vertical bar, so two points closer than their bars are not ranked."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 — the backend must be chosen first

from trimlab.results.aggregate import CellResult  # noqa: E402

SPEEDUP = re.compile(r"speedup_b(\d+)")


def pareto_plot(results: list[CellResult], stem: Path, title: str, metric: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg: one line per trimlab method and model × dataset; cells without records are left out."""
    lines: dict[str, list[CellResult]] = defaultdict(list)
    for result in results:
        if result.records:
            first = result.records[0]
            lines[f"{first.method} · {first.model} × {first.dataset}"].append(result)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    speed_key = _speedup_key(results)
    for ax, key, label in (
        (axes[0], "flops_ratio", "FLOPs ratio (compressed / dense)"),
        (axes[1], speed_key, f"measured speedup ({speed_key.replace('_', ' ')}, dense time / compressed time)"),
    ):
        everything = []
        for method, points in lines.items():
            xy = sorted((p.extra(key), p.mean, p.half_width or 0.0) for p in points if p.extra(key) is not None)
            if xy:
                x, y, bars = zip(*xy)
                ax.errorbar(x, y, yerr=bars, fmt="o-", capsize=3, label=method)
                everything += list(zip(x, y))
        if len(lines) > 1 and everything:
            front = pareto_front(everything, lower_x_is_better=key == "flops_ratio")
            ax.plot(*zip(*front), "-", color="grey", linewidth=6, alpha=0.25, zorder=0, label="front (all methods)")
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    has_bars = any(r.half_width is not None for r in results)
    axes[0].set_ylabel(f"{metric}, bars: 95% CI over seeds" if has_bars else metric)
    if lines:
        axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return paths


def pareto_front(points: list[tuple[float, float]], lower_x_is_better: bool) -> list[tuple[float, float]]:
    """The (x, metric) points no other point matches or beats on both axes, sorted by x; higher metric is better."""
    sign = 1.0 if lower_x_is_better else -1.0

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return sign * a[0] <= sign * b[0] and a[1] >= b[1] and a != b

    return sorted({p for p in points if not any(beats(q, p) for q in points)})


def _speedup_key(results: list[CellResult]) -> str:
    """The float model's speedup at the largest batch any record measured (throughput), else batch 1.

    ``speedup_b<n>_int8_kernel`` (an 8-bit model's integer-kernel copy) is another model's speedup, not a batch size."""
    batches = {int(m.group(1)) for r in results for rec in r.records for k in rec.ratios if (m := SPEEDUP.fullmatch(k))}
    return f"speedup_b{max(batches)}" if batches else "speedup_b1"
