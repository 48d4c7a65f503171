"""A heat map of what Fisher pruning kept: heads per layer (with mask values) and the FFN width per layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 — the backend must be chosen first
from trimlab.methods.fisher_prune.search import Masks  # noqa: E402


def plot_masks(masks: Masks, path: Path) -> None:
    """Left: mask value of every head (0 = removed); right: kept neurons per layer out of the full width."""
    layers, heads = masks.heads.shape
    width = masks.neurons.shape[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.45 * layers + 1.6), gridspec_kw={"width_ratios": [heads, 6]})
    image = left.imshow(masks.heads.cpu().numpy(), cmap="viridis", aspect="auto", vmin=0)
    left.set(title="head mask (0 = removed)", xlabel="head", ylabel="layer", yticks=range(layers))
    fig.colorbar(image, ax=left, fraction=0.05)
    kept = (masks.neurons != 0).sum(1).cpu().numpy()
    right.barh(range(layers), kept, color="tab:blue")
    right.barh(range(layers), width - kept, left=kept, color="lightgrey")
    right.set(title="FFN neurons kept", xlabel=f"of {width}", yticks=range(layers), xlim=(0, width))
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
