"""SaiT's token selector: rank patch tokens by class-token attention, keep an input-adaptive (or fixed) share.

Installed in ``model.encoder.token_selector``; its :attr:`density` switches the
same weights between the dense path (``None``: no layer selects, the plain
encoder runs) and any sparsity, at run time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trimlab.models.encoder import FIRST_ROW, PackDropped

MODES = ("adaptive", "fixed")


def class_attention(probs: Tensor, valid: Tensor, num_protected: int = 1) -> Tensor:
    """Importance ``[B, N]`` of each patch token: the class token's attention to it, averaged over heads.

    Renormalised over the valid patch tokens so it sums to 1 per example; the
    protected (class) tokens and padding score 0.
    """
    score = probs[:, :, 0, :].mean(dim=1) * valid.to(probs.dtype)
    score = torch.cat([torch.zeros_like(score[:, :num_protected]), score[:, num_protected:]], dim=1)
    return score / score.sum(dim=1, keepdim=True).clamp_min(torch.finfo(score.dtype).tiny)


def adaptive_keep(score: Tensor, mass: float) -> Tensor:
    """Keep the highest-scoring tokens until their cumulative score reaches ``mass`` (the crossing token included).

    An input whose attention is concentrated on a few patches keeps few; a
    uniform one keeps about ``mass`` of them. At least one token is kept.
    """
    ranked, order = score.sort(dim=1, descending=True)
    before = ranked.cumsum(dim=1) - ranked
    keep_ranked = (before < mass) & (ranked > 0)
    keep_ranked[:, 0] = True
    return torch.zeros_like(keep_ranked).scatter(1, order, keep_ranked)


def fixed_keep(score: Tensor, valid: Tensor, ratio: float, num_protected: int = 1) -> Tensor:
    """Keep ``round(ratio · patches)`` highest-scoring tokens of each input (at least one)."""
    patches = valid[:, num_protected:].sum(dim=1)
    counts = torch.clamp(torch.round(patches * ratio), min=1).long()
    ranks = score.masked_fill(~valid, -1.0).argsort(dim=1, descending=True).argsort(dim=1)
    return (ranks < counts[:, None]) & valid


class SaiTSelector:
    """Adaptive token pruning at ``prune_layers``, switchable at run time.

    ``density``: ``None`` is the dense path; else the attention mass to keep
    (``adaptive``) or the share of patch tokens to keep (``fixed``). With
    ``package`` the dropped tokens are fused into one token weighted by their
    scores. Every computed score is kept in :attr:`scores` (by layer) for the
    distillation of token selection; ``record_layers`` adds layers that only
    record (the teacher's last layer on the dense path).
    """

    def __init__(self, prune_layers: list[int], mode: str = "adaptive", package: bool = True, num_protected: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown SaiT mode {mode!r}; use {' or '.join(MODES)}")
        self.prune_layers = sorted(prune_layers)
        self.mode = mode
        self.package = package
        self.num_protected = num_protected
        self.reads = FIRST_ROW  # the class token's attention
        self.density: float | None = None
        self.record_layers: set[int] = set()
        self.scores: dict[int, Tensor] = {}

    def reset(self) -> None:
        """Forget the recorded scores (they hold the autograd graph of a training step)."""
        self.scores = {}

    def selects_at(self, layer: int) -> bool:
        return (self.density is not None and layer in self.prune_layers) or layer in self.record_layers

    def __call__(self, layer: int, attn_probs: Tensor, valid: Tensor) -> Tensor | PackDropped | None:
        score = class_attention(attn_probs, valid, self.num_protected)
        self.scores[layer] = score
        if self.density is None or layer not in self.prune_layers:
            return None
        if self.mode == "adaptive":
            keep = adaptive_keep(score, self.density)
        else:
            keep = fixed_keep(score, valid, self.density, self.num_protected)
        return PackDropped(keep, score) if self.package else keep
