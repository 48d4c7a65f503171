"""MaiT's attention masks: a spatial window over the patch grid for chosen heads, the other heads global.

Two forms put a mask on a masked head's logits (the "mask form"):

- ``multiplicative``, the paper's Eq. 2, softmax((M ⊙ QKᵀ)/√d)·V with M a 0/1
  matrix: a key outside the window gets logit 0, so it keeps the small weight
  ``e^0 / Σ`` ("unselected patches appear as e^0 = 1 in the numerator"), and the
  model can still rely on locality more or less (paper §4). It goes through the
  encoder's logit-mask path (an explicit softmax for the masked layers);
- ``additive``: 0 inside the window, the most negative float outside, through the
  encoder's head-bias path of the fused kernel: a hard window, exactly zero
  attention outside it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trimlab.models.encoder import Encoder

MULTIPLICATIVE, ADDITIVE = "multiplicative", "additive"
MASK_FORMS = (MULTIPLICATIVE, ADDITIVE)


def locality_mask(grid_h: int, grid_w: int, window: tuple[int, int], num_protected: int = 1) -> Tensor:
    """``[N, N]`` bool, N = num_protected + grid_h·grid_w: may query row attend key column.

    A patch attends to the patches within ``window`` (rows × columns, centred on
    it, cut at the border), and to nothing else: not to the class tokens (paper
    §5.2: of a patch's 197 attention weights a 3×3 mask computes 9). Class
    tokens attend to every token (§4: "the class token still attends to all the patches").
    """
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    near = ((rows[:, None] - rows[None, :]).abs() <= window[0] // 2) & ((cols[:, None] - cols[None, :]).abs() <= window[1] // 2)
    n = num_protected + grid_h * grid_w
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:num_protected] = True
    allowed[num_protected:, num_protected:] = near
    return allowed


def head_logit_mask(allowed: Tensor, masked_heads: int, num_heads: int) -> Tensor:
    """``[num_heads, N, N]`` bool, the paper's M per head: the first ``masked_heads`` heads keep only ``allowed`` logits."""
    mask = torch.ones(num_heads, *allowed.shape, dtype=torch.bool, device=allowed.device)
    mask[:masked_heads] = allowed
    return mask


def head_bias(allowed: Tensor, masked_heads: int, num_heads: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[num_heads, N, N]`` additive bias: the first ``masked_heads`` heads see only ``allowed``, the rest everything."""
    bias = torch.zeros(num_heads, *allowed.shape, dtype=dtype, device=allowed.device)
    bias[:masked_heads] = bias[0].masked_fill(~allowed, torch.finfo(dtype).min)
    return bias


def thirds_schedule(num_layers: int, num_heads: int) -> list[int]:
    """Masked heads per layer as the paper places them in its deeper models: every head in the first third
    of the layers, one head in the middle third, none in the last third (locality matters most early).

    Paper §5.3, Fig. 3b (24 layers: 6 masked heads in layers 0–7, 1 in 8–15,
    none in 16–23); thirds of other depths round up (trimlab's choice).
    """
    third = math.ceil(num_layers / 3)
    return [num_heads if i < third else 1 if i < 2 * third else 0 for i in range(num_layers)]


def install_masks(encoder: Encoder, allowed: Tensor, masked_heads: list[int], form: str = MULTIPLICATIVE) -> None:
    """Mask the first ``masked_heads[l]`` heads of each layer l in ``form``; layers without masked heads run unchanged."""
    if form not in MASK_FORMS:
        raise ValueError(f"mask form {form!r} is not one of {', '.join(MASK_FORMS)}")
    for block, count in zip(encoder.layers, masked_heads, strict=True):
        attn = block.attn
        weight = attn.qkv.weight
        here = allowed.to(weight.device)
        attn.set_head_logit_mask(head_logit_mask(here, count, attn.num_heads) if count and form == MULTIPLICATIVE else None)
        attn.set_head_bias(head_bias(here, count, attn.num_heads, weight.dtype) if count and form == ADDITIVE else None)


def masked_heads_of(encoder: Encoder) -> list[int]:
    """How many heads of each layer carry a mask, in either form (read back from what is installed)."""
    counts = []
    for block in encoder.layers:
        attn = block.attn
        if attn.head_logit_mask is not None:
            counts.append(int((~attn.head_logit_mask).flatten(1).any(dim=1).sum()))
        elif attn.head_bias is not None:
            counts.append(int((attn.head_bias.flatten(1) < 0).any(dim=1).sum()))
        else:
            counts.append(0)
    return counts

