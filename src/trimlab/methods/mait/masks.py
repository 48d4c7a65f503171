"""MaiT's attention masks: a spatial window over the patch grid for chosen heads, the other heads global.

A mask enters attention as an additive per-head bias (0 inside the window,
the most negative float outside), through the encoder's head-bias path of
scaled-dot-product attention: a masked head gives exactly zero attention
outside its window and costs no extra matrix products.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trimlab.models.encoder import Encoder


def locality_mask(grid_h: int, grid_w: int, window: tuple[int, int], num_protected: int = 1) -> Tensor:
    """``[N, N]`` bool, N = num_protected + grid_h·grid_w: may query row attend key column.

    A patch attends to the patches within ``window`` (rows × columns, centred on
    it, cut at the border); class tokens attend to and are attended by every token.
    """
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    near = ((rows[:, None] - rows[None, :]).abs() <= window[0] // 2) & ((cols[:, None] - cols[None, :]).abs() <= window[1] // 2)
    n = num_protected + grid_h * grid_w
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[num_protected:, num_protected:] = near
    return allowed


def head_bias(allowed: Tensor, masked_heads: int, num_heads: int) -> Tensor:
    """``[num_heads, N, N]`` additive bias: the first ``masked_heads`` heads see only ``allowed``, the rest everything."""
    bias = torch.zeros(num_heads, *allowed.shape)
    bias[:masked_heads] = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return bias


def thirds_schedule(num_layers: int, num_heads: int) -> list[int]:
    """Masked heads per layer as the paper places them: every head in the first third of the layers,
    one head in the middle third, none in the last third (locality matters most early)."""
    third = math.ceil(num_layers / 3)
    return [num_heads if i < third else 1 if i < 2 * third else 0 for i in range(num_layers)]


def install_masks(encoder: Encoder, allowed: Tensor, masked_heads: list[int]) -> None:
    """Set each layer's head bias (None where no head is masked, so those layers run unchanged)."""
    for block, count in zip(encoder.layers, masked_heads, strict=True):
        block.attn.set_head_bias(head_bias(allowed, count, block.attn.num_heads) if count else None)


def masked_heads_of(encoder: Encoder) -> list[int]:
    """How many heads of each layer carry a mask (read back from the installed biases)."""
    counts = []
    for block in encoder.layers:
        bias = block.attn.head_bias
        counts.append(0 if bias is None else int((bias.flatten(1) < 0).any(dim=1).sum()))
    return counts
