"""Mask search under a FLOPs or latency budget (Kwon et al. 2022, Algorithm 1).

With the diagonal Fisher, the loss of pruning a set of units is the sum of
their importances, so the search keeps the most important units the budget
allows. Heads and neurons cost different amounts, so the FLOPs search tries
every head count, fills the rest of the budget with the most important
neurons, and keeps the split with the largest kept importance. The latency
search does the same on top of a per-layer latency model that is constant up
to a threshold count and linear after it, which lets it also drop whole
attention or FFN sublayers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trimlab.config import ConfigError
from trimlab.methods.fisher_prune.latency_lut import LatencyFn


@dataclass
class Masks:
    """Binary (or, after tuning, real-valued) masks: zero means removed."""

    heads: Tensor
    """``[layers, heads]``."""
    neurons: Tensor
    """``[layers, ffn]``."""

    def counts(self) -> tuple[list[int], list[int]]:
        """Kept heads and kept neurons per layer."""
        return (self.heads != 0).sum(1).tolist(), (self.neurons != 0).sum(1).tolist()

    def clone(self) -> Masks:
        return Masks(self.heads.clone(), self.neurons.clone())


def _mask_from_flat(indices: Tensor, shape: tuple[int, int], like: Tensor) -> Tensor:
    """A 0/1 mask of ``shape`` with ones at the flat ``indices``, on the device and in the dtype of ``like``."""
    mask = like.new_zeros(shape[0] * shape[1])
    mask[indices] = 1.0
    return mask.view(shape)


def _best_fill(
    head_gains: Tensor, neuron_gains: Tensor, budget: float, head_cost: float, neuron_cost: float
) -> tuple[float, int, int]:
    """Best (importance, k heads, n neurons) taking the top ``k`` / ``n`` of each sorted list within ``budget``."""
    zero = head_gains.new_zeros(1, dtype=torch.float64)
    cum_h = torch.cat([zero, head_gains.double().cumsum(0)])
    cum_n = torch.cat([zero, neuron_gains.double().cumsum(0)])
    k = torch.arange(len(head_gains) + 1, dtype=torch.float64, device=head_gains.device)
    left = budget - k * head_cost
    if neuron_cost > 0:
        n = torch.floor(left / neuron_cost + 1e-9).clamp(0, len(neuron_gains)).long()
    else:
        n = torch.full_like(k, len(neuron_gains)).long()
    score = (cum_h + cum_n[n]).masked_fill(left < 0, -math.inf)
    best = int(score.argmax())
    return float(score[best]), best, int(n[best])


def search_flops(
    head_importance: Tensor, neuron_importance: Tensor, head_cost: float, neuron_cost: float, target: float
) -> Masks:
    """Keep the most Fisher-important heads and neurons whose FLOPs fit ``target`` × the dense encoder's."""
    layers, heads = head_importance.shape
    ffn = neuron_importance.shape[1]
    budget = target * (layers * heads * head_cost + layers * ffn * neuron_cost)
    head_gains, head_order = head_importance.flatten().sort(descending=True)
    neuron_gains, neuron_order = neuron_importance.flatten().sort(descending=True)
    _, k, n = _best_fill(head_gains, neuron_gains, budget, head_cost, neuron_cost)
    return Masks(
        _mask_from_flat(head_order[:k], (layers, heads), head_importance),
        _mask_from_flat(neuron_order[:n], (layers, ffn), neuron_importance),
    )


def search_latency(
    head_importance: Tensor, neuron_importance: Tensor, attention: LatencyFn, ffn: LatencyFn, target: float
) -> Masks:
    """Keep the most important heads and neurons whose estimated latency fits ``target`` × the dense encoder's.

    Within a layer the first ``threshold`` units cost the constant ``c`` (the
    layer's base), later ones ``slope`` each. The search tries dropping the
    ``a`` attention and ``f`` FFN sublayers with the least base importance,
    keeps the bases of the rest, and fills the remaining budget with the most
    important units beyond the bases, globally ranked.
    """
    layers, heads = head_importance.shape
    width = neuron_importance.shape[1]
    check_latency_budget(target, layers, heads, width, attention, ffn)
    budget = target * layers * (attention(heads) + ffn(width))
    head_sorted, head_local = head_importance.sort(dim=1, descending=True)
    neuron_sorted, neuron_local = neuron_importance.sort(dim=1, descending=True)
    th, tn = min(attention.threshold, heads), min(ffn.threshold, width)
    head_base = head_sorted[:, :th].sum(1)
    neuron_base = neuron_sorted[:, :tn].sum(1)
    head_layer_order = head_base.argsort()  # least important base first: dropped first
    neuron_layer_order = neuron_base.argsort()
    best: tuple[float, list[int], list[int], int, int] | None = None
    for drop_a in range(layers):
        kept_a = sorted(head_layer_order[drop_a:].tolist())
        for drop_f in range(layers):
            kept_f = sorted(neuron_layer_order[drop_f:].tolist())
            left = budget - len(kept_a) * attention.c - len(kept_f) * ffn.c
            if left < 0:
                continue
            extra_h = head_sorted[kept_a, th:].flatten().sort(descending=True).values
            extra_n = neuron_sorted[kept_f, tn:].flatten().sort(descending=True).values
            score, k, n = _best_fill(extra_h, extra_n, left, attention.slope, ffn.slope)
            score += float(head_base[kept_a].sum() + neuron_base[kept_f].sum())
            if best is None or score > best[0]:
                best = (score, kept_a, kept_f, k, n)
    assert best is not None  # the budget covers one attention and one FFN base
    _, kept_a, kept_f, k, n = best
    return Masks(
        _latency_mask(head_sorted, head_local, kept_a, th, k),
        _latency_mask(neuron_sorted, neuron_local, kept_f, tn, n),
    )


def check_latency_budget(target: float, layers: int, heads: int, width: int, attention: LatencyFn, ffn: LatencyFn) -> None:
    """Reject a latency target below the cheapest model the search can return (one attention and one FFN sublayer)."""
    floor = (attention.c + ffn.c) / (layers * (attention(heads) + ffn(width)))
    if target < floor:
        raise ConfigError(
            f"budget.target={target:g} is below the smallest latency Fisher pruning can reach on this machine "
            f"({floor:.3f} of the dense encoder: one attention and one FFN sublayer); raise budget.target"
        )


def _latency_mask(sorted_imp: Tensor, local: Tensor, kept_layers: list[int], base: int, extra: int) -> Tensor:
    """Bases of ``kept_layers`` plus their ``extra`` globally most important units beyond the base."""
    mask = torch.zeros_like(sorted_imp)
    rows = torch.tensor(kept_layers, dtype=torch.long, device=mask.device)
    if len(rows) == 0:
        return mask
    mask[rows[:, None], local[rows, :base]] = 1.0
    beyond = sorted_imp[rows, base:]
    if extra > 0 and beyond.numel() > 0:
        top = beyond.flatten().topk(extra).indices
        r, c = top // beyond.shape[1], top % beyond.shape[1]
        mask[rows[r], local[rows[r], base + c]] = 1.0
    return mask


def milder_target(target: float, steps: int) -> float:
    """The teacher constraint of mask tuning: the first step of a ``steps``-step geometric schedule to ``target``."""
    return target ** (1.0 / steps) if steps > 1 else 1.0
