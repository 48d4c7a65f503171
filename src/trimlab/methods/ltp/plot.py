"""Kept tokens per layer: where in the stack token pruning removes work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 — the backend must be chosen first


def plot_kept_tokens(kept_fraction: Sequence[float], path: Path, title: str) -> None:
    """Bar chart of the mean share of input tokens left after each layer."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    layers = range(len(kept_fraction))
    ax.bar(layers, [100 * k for k in kept_fraction], color="tab:blue")
    ax.set(title=title, xlabel="layer", ylabel="% of input tokens kept", ylim=(0, 105), xticks=list(layers))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
