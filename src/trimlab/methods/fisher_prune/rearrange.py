"""Mask rearrangement (Kwon et al. 2022, §4.2): re-choose which units a layer keeps, keeping how many.

The diagonal Fisher ignores interactions, but units of one layer interact.
With the block-diagonal Fisher, the loss of pruning a set P of a layer's units
is ≈ Σ_batches (Σ_{i∈P} g_i)², i.e. ‖Σ_{i∈P} g_i‖² over the per-batch gradient
vectors g_i. A greedy pass lowers it: start from the least important units,
and for each further candidate (in ascending importance) add it, then drop
whichever unit of the enlarged set leaves the smallest norm.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rearrange_layer(mask: Tensor, grads: Tensor) -> Tensor:
    """A new 0/1 mask for one layer with as many zeros as ``mask``; ``grads`` is ``[batches, units]``."""
    units = mask.shape[0]
    num_pruned = int((mask == 0).sum())
    if num_pruned in (0, units):
        return (mask != 0).to(mask.dtype)
    vectors = grads.t().double()  # [units, batches]
    order = vectors.pow(2).sum(1).argsort().tolist()
    pruned = order[:num_pruned]
    for candidate in order[num_pruned:]:
        pruned.append(candidate)
        chosen = vectors[pruned]
        without_each = chosen.sum(0, keepdim=True) - chosen
        del pruned[int(without_each.pow(2).sum(1).argmin())]
    new = torch.ones_like(mask)
    new[pruned] = 0
    return new


def rearrange(mask: Tensor, grads: Tensor) -> Tensor:
    """:func:`rearrange_layer` on every layer of ``mask`` ``[layers, units]`` with ``grads`` ``[batches, layers, units]``."""
    return torch.stack([rearrange_layer(mask[i], grads[:, i]) for i in range(mask.shape[0])])
