"""Input embeddings that turn a batch into the token sequence the encoder consumes."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class TextEmbeddings(nn.Module):
    """BERT-style word + position (+ token type) embeddings followed by LayerNorm.

    ``type_vocab_size=0`` gives DistilBERT's embeddings (no token types).
    ``padding_positions`` numbers positions as RoBERTa and MPNet do: real tokens
    count from ``pad_token_id + 1``, pad tokens take position ``pad_token_id``.
    ``embedding_size`` (ELECTRA) embeds in a narrower width, normalises there and
    projects up to ``hidden_size`` (``project``).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_positions: int,
        type_vocab_size: int,
        layer_norm_eps: float,
        dropout: float,
        pad_token_id: int = 0,
        padding_positions: bool = False,
        embedding_size: int | None = None,
    ) -> None:
        super().__init__()
        self.pad_token_id = pad_token_id
        self.padding_positions = padding_positions
        width = embedding_size or hidden_size
        self.word = nn.Embedding(vocab_size, width, padding_idx=pad_token_id)
        self.position = nn.Embedding(max_positions, width, padding_idx=pad_token_id if padding_positions else None)
        self.token_type = nn.Embedding(type_vocab_size, width) if type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(width, hidden_size) if width != hidden_size else None

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Return hidden ``[B, N, D]`` and the valid-token mask ``[B, N]``."""
        ids = batch["input_ids"]
        if self.padding_positions:
            real = ids != self.pad_token_id
            positions = torch.cumsum(real, dim=1) * real + self.pad_token_id
        else:
            positions = torch.arange(ids.shape[1], device=ids.device)[None]
        x = self.word(ids) + self.position(positions)
        if self.token_type is not None:
            types = batch.get("token_type_ids")
            x = x + self.token_type(types if types is not None else torch.zeros_like(ids))
        valid = batch.get("attention_mask")
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
        x = self.dropout(self.norm(x))
        return (x if self.project is None else self.project(x)), valid


class PatchEmbeddings(nn.Module):
    """ViT patch embedding: a strided convolution, a class token (unless ``class_token=False``), learned positions.

    Without a class token (CaiT-style models, whose class token joins after the
    self-attention layers) only the patches enter the encoder.
    """

    def __init__(
        self, image_size: int, patch_size: int, in_chans: int, hidden_size: int, dropout: float = 0.0, class_token: bool = True
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.grid = image_size // patch_size
        self.proj = nn.Conv2d(in_chans, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + int(class_token), hidden_size))
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        pixels = batch["pixel_values"]
        x = self.proj(pixels).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.dropout(x), valid
