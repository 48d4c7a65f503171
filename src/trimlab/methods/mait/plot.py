"""A picture of MaiT's masks: for one query patch, where each head of each layer may look."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 — the backend must be chosen first
from torch import Tensor  # noqa: E402


def plot_masks(
    allowed: Tensor, masked_heads: list[int], num_heads: int, grid: tuple[int, int], num_protected: int, form: str, path: Path
) -> None:
    """Layers × heads of patch grids: bright = the centre patch's logits there are its own (global heads: everywhere);
    dark = masked, in ``form`` (multiplicative: logit 0, a small weight; additive: no attention)."""
    grid_h, grid_w = grid
    query = num_protected + (grid_h // 2) * grid_w + grid_w // 2
    local = allowed[query, num_protected:].reshape(grid_h, grid_w).float()
    layers = len(masked_heads)
    fig, axes = plt.subplots(layers, num_heads, figsize=(1.3 * num_heads + 0.8, 1.3 * layers + 0.6), squeeze=False)
    for i, count in enumerate(masked_heads):
        for j in range(num_heads):
            ax = axes[i][j]
            image = local if j < count else local.new_ones(grid_h, grid_w)
            ax.imshow(image, cmap="Blues", vmin=0, vmax=1)
            ax.plot(grid_w // 2, grid_h // 2, "r.", markersize=4)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"head {j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"layer {i}", fontsize=8)
    outside = "logit 0" if form == "multiplicative" else "no attention"
    fig.suptitle(f"MaiT masks ({form}): where the centre patch (red) keeps its logits; dark: {outside}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
