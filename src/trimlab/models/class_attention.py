"""CaiT-style classifier (Touvron et al. 2021): self-attention over patches only, then class-attention layers.

The patches go through the unified encoder without a class token (so
per-head masks, pruning and token selection act on patches alone); the class
token joins afterwards, and each class-attention layer updates only it, from
attention over itself and every remaining patch. MaiT builds on this split.
CaiT's LayerScale and talking-heads attention are not reproduced: timm CaiT
weights do not load into this model; it is trained from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import PatchEmbeddings
from trimlab.models.encoder import Encoder, EncoderOutput, FeedForward


class ClassAttentionBlock(nn.Module):
    """One class-attention layer (pre-norm): the class token attends to [class, patches]; only it is updated."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_dim: int, layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = FeedForward(hidden_size, ffn_dim, "gelu")

    def forward(self, cls: Tensor, tokens: Tensor, valid: Tensor) -> Tensor:
        """``cls [B, 1, D]`` updated from ``tokens [B, N, D]`` (``valid [B, N]`` marks real ones)."""
        b, n, d = tokens.shape
        h, dh = self.num_heads, d // self.num_heads
        u = self.norm1(torch.cat([cls, tokens], dim=1))
        q = self.q(u[:, :1]).view(b, 1, h, dh).transpose(1, 2)
        k, v = self.kv(u).view(b, n + 1, 2, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if not bool(valid.all()):
            keys = torch.cat([valid.new_ones(b, 1), valid], dim=1)
            mask = torch.zeros(keys.shape, dtype=u.dtype, device=u.device).masked_fill(~keys, torch.finfo(u.dtype).min)[:, None, None, :]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, 1, d)
        cls = cls + self.proj(context)
        return cls + self.ffn(self.norm2(cls))

    def flops(self, tokens: int) -> int:
        """Multiply-adds × 2 of one example with ``tokens`` patches (the class token's queries only)."""
        d, n = self.q.in_features, tokens + 1
        projections = 2 * d * d + 2 * n * d * 2 * d + 2 * d * d
        attention = 2 * 2 * n * d
        return projections + attention + 2 * 2 * d * self.ffn.num_neurons


class CaiTClassifier(TransformerClassifier):
    """Patch embeddings (no class token) → encoder → class token + class-attention layers → head."""

    def __init__(self, embeddings: PatchEmbeddings, encoder: Encoder, class_layers: Sequence[ClassAttentionBlock], head: ClassifierHead) -> None:
        super().__init__(embeddings, encoder, head, num_protected=0)
        self.class_layers = nn.ModuleList(class_layers)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, encoder.spec.hidden_size))
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def head_input(self, out: EncoderOutput) -> Tensor:
        """The class token, after the class-attention layers read the patch tokens."""
        cls = self.cls_token.repeat(out.hidden.shape[0], 1, 1)  # a copy: module hooks reject views of parameters made under no_grad
        for layer in self.class_layers:
            cls = layer(cls, out.hidden, out.valid)
        return cls
