"""SaiT's accuracy–throughput curve: one checkpoint, every density."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 — the backend must be chosen first


def plot_density_curve(curve: list[dict[str, Any]], path: Path, title: str) -> None:
    """Task metric against measured throughput speedup and FLOPs ratio, one point per density."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, label in ((axes[0], "throughput_speedup", "throughput speedup vs dense path"), (axes[1], "flops_ratio", "FLOPs ratio")):
        xs, ys = [p[key] for p in curve], [100 * p["metric"] for p in curve]
        ax.plot(xs, ys, "o-", color="tab:blue")
        for point, x, y in zip(curve, xs, ys):
            ax.annotate(point["density"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("task metric (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
