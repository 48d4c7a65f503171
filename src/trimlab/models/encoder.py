"""The one Transformer encoder every compression method acts on.

Published weights (HF BERT family, timm ViT family) are loaded into this module
instead of patching each library's internals, so that the places the five
methods touch live in one file:

- head mask ``[layers, heads]`` and neuron mask ``[layers, ffn]``: multiplicative
  and differentiable (Fisher importance = gradients w.r.t. them);
- structural pruning: :meth:`Block.prune_heads` / :meth:`Block.prune_neurons`
  shrink the Linear weights so latency really drops;
- a token-selection hook between each layer's attention and its FFN: a bool
  decision removes tokens from the sequence (padding-aware gather), optionally
  fusing them into one package token, a float decision multiplies the layer
  output (soft masks while training);
- a per-head additive attention bias (locality masks);
- MPNet's relative-position bias: one bucketed table owned by the encoder and
  read by every layer, evaluated at the tokens' input positions (so it follows
  dropped tokens) for the heads each layer still has (so it follows pruning);
- exposed activations: per-layer hidden states, and named sub-modules
  (``attn.proj`` input = per-head contexts, ``ffn.fc2`` input = FFN neurons)
  for forward hooks.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` unless a
token selector needs the attention probabilities of that layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncoderSpec:
    """Shape and flavour of an encoder stack (before any pruning)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_dim: int
    norm_first: bool
    """Pre-norm blocks (ViT) if true, post-norm blocks (BERT) if false."""
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    """``gelu`` (erf) or ``gelu_tanh``."""
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    head_dim: int | None = None
    """Defaults to ``hidden_size // num_heads``."""
    relative_buckets: int = 0
    """Buckets of MPNet's relative-position attention bias shared by all layers (0: no such bias)."""

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass(frozen=True)
class PackDropped:
    """A hard decision that also fuses the dropped tokens into one "package" token appended to the sequence.

    The package is the ``weights``-weighted mean of the dropped tokens' states
    (SaiT's token packaging), so their information is condensed, not lost.
    """

    keep: Tensor
    """``[B, N]`` bool."""
    weights: Tensor
    """``[B, N]`` non-negative importance of each token."""


class TokenSelector(Protocol):
    """Decides, after a layer's attention, which tokens continue.

    Returning a bool ``[B, N]`` tensor keeps the True tokens and removes the
    others from the sequence; a :class:`PackDropped` does the same and fuses
    the removed ones into one token; a float ``[B, N]`` tensor multiplies the
    layer's output (a soft mask); ``None`` keeps everything.
    """

    def selects_at(self, layer: int) -> bool: ...

    def __call__(self, layer: int, attn_probs: Tensor, hidden: Tensor, valid: Tensor) -> Tensor | PackDropped | None: ...


@dataclass
class TokenState:
    """The sequence as it flows through the stack: which rows are real tokens and where they came from."""

    hidden: Tensor
    """``[B, N, D]``."""
    valid: Tensor
    """``[B, N]`` bool: False on padding and on tokens masked out (not dropped)."""
    positions: Tensor
    """``[B, N]`` long: index of each row in the input sequence."""

    def attention_mask(self) -> Tensor | None:
        """Additive key mask ``[B, 1, 1, N]``, or None when every key is valid."""
        if bool(self.valid.all()):
            return None
        neg = torch.finfo(self.hidden.dtype).min
        return torch.zeros_like(self.valid, dtype=self.hidden.dtype).masked_fill(~self.valid, neg)[:, None, None, :]

    def keep(self, keep: Tensor) -> TokenState:
        """Remove the rows where ``keep`` is False, packing each sequence to the front."""
        keep = keep & self.valid
        counts = keep.sum(dim=1)
        new_len = int(counts.max())
        n = keep.shape[1]
        arange = torch.arange(n, device=keep.device)
        order = torch.argsort((~keep).long() * n + arange, dim=1)[:, :new_len]
        hidden = torch.gather(self.hidden, 1, order[..., None].expand(-1, -1, self.hidden.shape[-1]))
        valid = torch.arange(new_len, device=keep.device)[None, :] < counts[:, None]
        return TokenState(hidden, valid, torch.gather(self.positions, 1, order))

    def package(self, keep: Tensor, weights: Tensor, drop: bool) -> TokenState:
        """Keep the ``keep`` rows and append one token, the ``weights``-weighted mean of the rows left out.

        With ``drop=False`` the left-out rows stay in place but invalid (masked);
        the package takes input position 0, the class token's, so a per-head
        bias treats it as global. An example that leaves nothing out gets an
        invalid package row.
        """
        left_out = (self.valid & ~keep).to(weights.dtype) * weights
        total = left_out.sum(dim=1, keepdim=True)
        fused = (left_out[..., None] * self.hidden).sum(dim=1, keepdim=True) / total.clamp_min(1e-12)[..., None]
        kept = self.keep(keep) if drop else TokenState(self.hidden, self.valid & keep, self.positions)
        return TokenState(
            torch.cat([kept.hidden, fused.to(kept.hidden.dtype)], dim=1),
            torch.cat([kept.valid, total > 0], dim=1),
            torch.cat([kept.positions, torch.zeros_like(kept.positions[:, :1])], dim=1),
        )


def relative_bucket(distance: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """T5's bidirectional bucket of ``distance`` (key minus query position), as MPNet computes it.

    Half the buckets per direction; within one, distances below a quarter of
    the buckets are exact and larger ones are log-spaced up to ``max_distance``
    (the last bucket takes everything beyond).
    """
    half = num_buckets // 2
    exact = half // 2
    n = -distance
    bucket = (n < 0).long() * half
    n = n.abs()
    # the log is only read where n >= exact; the clamp keeps log(0) out of the discarded entries
    log_ratio = torch.log(n.clamp_min(exact).float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (half - exact)).long()
    return bucket + torch.where(n < exact, n, far.clamp_max(half - 1))


class RelativePositionBias(nn.Module):
    """MPNet's relative-position attention bias: a learned value per head and bucket of key-minus-query distance.

    One table serves every layer. It is evaluated from input positions, not
    row indices, so tokens left after a token selector removed others keep the
    bias of their original distances; each layer reads the columns of the heads
    it still has.
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = nn.Embedding(num_buckets, num_heads)

    def forward(self, positions: Tensor, heads: Tensor | None = None) -> Tensor:
        """Additive bias ``[B, H, N, N]`` of ``heads`` (default all); ``B`` = 1 when all rows share positions."""
        if positions.stride(0) == 0:  # an expanded row: one bias for the whole batch
            positions = positions[:1]
        buckets = relative_bucket(positions[:, None, :] - positions[:, :, None], self.num_buckets, self.max_distance)
        weight = self.table.weight if heads is None else self.table.weight[:, heads]
        return F.embedding(buckets, weight).permute(0, 3, 1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection that can lose heads."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, hidden_size)
        self.head_bias: Tensor | None
        self.register_buffer("head_bias", None, persistent=False)  # [H, N0, N0] additive, over input positions
        self.head_index: Tensor
        self.register_buffer("head_index", torch.arange(num_heads), persistent=False)  # which input heads remain
        self._relative: tuple[RelativePositionBias, ...] = ()

    def share_relative_bias(self, relative: RelativePositionBias) -> None:
        """Read the encoder's relative-position table in every forward.

        Held outside this module's children, so the one shared table is stored,
        loaded and counted once (as the encoder's), yet a block run on its own
        (mask tuning, latency tables) still applies it.
        """
        self._relative = (relative,)

    def set_head_bias(self, bias: Tensor | None) -> None:
        """Install an additive attention bias per head, ``[heads, seq, seq]`` over input positions."""
        if bias is not None and bias.shape[0] != self.num_heads:
            raise ValueError(f"head bias has {bias.shape[0]} heads, attention has {self.num_heads}")
        self.head_bias = bias

    def _bias(self, state: TokenState) -> Tensor | None:
        """The relative-position bias plus the installed per-head bias, at the state's input positions."""
        relative = None
        if self._relative:
            relative = self._relative[0](state.positions, self.head_index).to(state.hidden.dtype)
        bias = self.head_bias
        if bias is None:
            return relative
        pos = state.positions
        if pos.shape[1] == bias.shape[-1] and bool((pos == torch.arange(pos.shape[1], device=pos.device)).all()):
            bias = bias[None].to(state.hidden.dtype)
        else:
            bias = bias[:, pos[:, :, None], pos[:, None, :]].permute(1, 0, 2, 3).to(state.hidden.dtype)  # [B, H, N, N]
        return bias if relative is None else bias + relative

    def forward(
        self, x: Tensor, state: TokenState, head_mask: Tensor | None = None, need_probs: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Return the attention output ``[B, N, D]`` and, if asked, the probabilities ``[B, H, N, N]``."""
        b, n, _ = x.shape
        if self.num_heads == 0:
            return self.proj(x.new_zeros(b, n, 0)), None
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = state.attention_mask()
        bias = self._bias(state)
        if bias is not None:
            mask = bias if mask is None else mask + bias
        dropout = self.dropout if self.training else 0.0
        probs = None
        if need_probs:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            context = F.dropout(probs, dropout, self.training) @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        if head_mask is not None:
            context = context * head_mask.view(1, -1, 1, 1).to(context.dtype)
        context = context.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(context), probs

    @torch.no_grad()
    def prune_heads(self, keep: Sequence[int]) -> None:
        """Keep only the listed heads (indices into the current heads), shrinking the weights."""
        keep_t = torch.as_tensor(sorted(keep), dtype=torch.long)
        dh, h = self.head_dim, self.num_heads
        per_head = (keep_t[:, None] * dh + torch.arange(dh)[None, :]).reshape(-1)
        rows = torch.cat([per_head + part * h * dh for part in range(3)])
        self.qkv = _sliced_linear(self.qkv, rows=rows)
        self.proj = _sliced_linear(self.proj, cols=per_head)
        if self.head_bias is not None:
            self.head_bias = self.head_bias[keep_t]
        self.head_index = self.head_index[keep_t]
        self.num_heads = len(keep_t)


class FeedForward(nn.Module):
    """The position-wise MLP whose hidden units ("neurons") can be masked or removed."""

    def __init__(self, hidden_size: int, ffn_dim: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, hidden_size)
        self.approximate = {"gelu": "none", "gelu_tanh": "tanh"}[activation]

    @property
    def num_neurons(self) -> int:
        return self.fc1.out_features

    def forward(self, x: Tensor, neuron_mask: Tensor | None = None) -> Tensor:
        h = F.gelu(self.fc1(x), approximate=self.approximate)
        if neuron_mask is not None:
            h = h * neuron_mask.to(h.dtype)
        return self.fc2(h)

    @torch.no_grad()
    def prune_neurons(self, keep: Sequence[int]) -> None:
        """Keep only the listed neurons (indices into the current neurons)."""
        keep_t = torch.as_tensor(sorted(keep), dtype=torch.long)
        self.fc1 = _sliced_linear(self.fc1, rows=keep_t)
        self.fc2 = _sliced_linear(self.fc2, cols=keep_t)


class Block(nn.Module):
    """One Transformer layer, pre-norm or post-norm, with the selection hook between attention and FFN."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.norm_first = spec.norm_first
        self.attn = Attention(spec.hidden_size, spec.num_heads, spec.dim_per_head, spec.attention_dropout)
        self.norm1 = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.ffn = FeedForward(spec.hidden_size, spec.ffn_dim, spec.activation)
        self.norm2 = nn.LayerNorm(spec.hidden_size, eps=spec.layer_norm_eps)
        self.dropout = nn.Dropout(spec.hidden_dropout)

    def prune_heads(self, keep: Sequence[int]) -> None:
        self.attn.prune_heads(keep)

    def prune_neurons(self, keep: Sequence[int]) -> None:
        self.ffn.prune_neurons(keep)

    def forward(
        self,
        state: TokenState,
        layer: int,
        head_mask: Tensor | None,
        neuron_mask: Tensor | None,
        selector: TokenSelector | None,
        num_protected: int,
        drop_tokens: bool,
    ) -> TokenState:
        x = state.hidden
        select = selector is not None and selector.selects_at(layer)
        if self.norm_first:
            attn_out, probs = self.attn(self.norm1(x), state, head_mask, need_probs=select)
            h = x + self.dropout(attn_out)
        else:
            attn_out, probs = self.attn(x, state, head_mask, need_probs=select)
            h = self.norm1(x + self.dropout(attn_out))
        state = TokenState(h, state.valid, state.positions)
        soft = None
        if select:
            decision = selector(layer, probs, h, state.valid)
            if isinstance(decision, PackDropped):
                keep = decision.keep.clone()
                keep[:, :num_protected] = True
                state = state.package(keep, decision.weights, drop_tokens)
            elif decision is not None and decision.dtype == torch.bool:
                decision = decision.clone()
                decision[:, :num_protected] = True
                state = state.keep(decision) if drop_tokens else TokenState(h, state.valid & decision, state.positions)
            elif decision is not None:
                soft = torch.cat([torch.ones_like(decision[:, :num_protected]), decision[:, num_protected:]], dim=1)
        h = state.hidden
        if self.norm_first:
            out = h + self.dropout(self.ffn(self.norm2(h), neuron_mask))
        else:
            out = self.norm2(h + self.dropout(self.ffn(h, neuron_mask)))
        if soft is not None:
            out = out * soft[..., None].to(out.dtype)
        return TokenState(out, state.valid, state.positions)


@dataclass
class EncoderOutput:
    """What the stack returns: final hidden states plus what methods and measurements read."""

    hidden: Tensor
    valid: Tensor
    positions: Tensor
    kept_tokens: list[Tensor] = field(default_factory=list)
    """Per layer, ``[B]`` count of valid tokens after that layer."""
    hidden_states: list[Tensor] | None = None
    """Per layer output (only when asked for), padded as the layer saw it."""


class Encoder(nn.Module):
    """A stack of :class:`Block` with masks, structural pruning and token selection."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(Block(spec) for _ in range(spec.num_layers))
        self.relative_bias: RelativePositionBias | None = None
        if spec.relative_buckets:
            self.relative_bias = RelativePositionBias(spec.num_heads, spec.relative_buckets)
            for block in self.layers:
                block.attn.share_relative_bias(self.relative_bias)
        self.token_selector: TokenSelector | None = None

    @property
    def heads_per_layer(self) -> list[int]:
        return [block.attn.num_heads for block in self.layers]

    @property
    def neurons_per_layer(self) -> list[int]:
        return [block.ffn.num_neurons for block in self.layers]

    def prune(self, heads_to_keep: Sequence[Sequence[int]], neurons_to_keep: Sequence[Sequence[int]]) -> None:
        """Structurally remove every head and neuron not listed, layer by layer."""
        for block, heads, neurons in zip(self.layers, heads_to_keep, neurons_to_keep, strict=True):
            if len(heads) != block.attn.num_heads:
                block.prune_heads(heads)
            if len(neurons) != block.ffn.num_neurons:
                block.prune_neurons(neurons)

    def forward(
        self,
        hidden: Tensor,
        valid: Tensor | None = None,
        head_mask: Sequence[Tensor] | Tensor | None = None,
        neuron_mask: Sequence[Tensor] | Tensor | None = None,
        num_protected: int = 1,
        drop_tokens: bool = True,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Run the stack.

        ``valid`` marks real tokens (False on padding). The first ``num_protected``
        tokens (class tokens) are never removed by the token selector. With
        ``drop_tokens=False`` a selector's hard decisions only mask tokens out of
        later attention instead of removing them (same outputs on kept tokens).
        """
        b, n, _ = hidden.shape
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=hidden.device)
        positions = torch.arange(n, device=hidden.device).expand(b, n)
        state = TokenState(hidden, valid.bool(), positions)
        kept: list[Tensor] = []
        states: list[Tensor] | None = [] if output_hidden_states else None
        for i, block in enumerate(self.layers):
            state = block(
                state,
                i,
                None if head_mask is None else head_mask[i],
                None if neuron_mask is None else neuron_mask[i],
                self.token_selector,
                num_protected,
                drop_tokens,
            )
            kept.append(state.valid.sum(dim=1))
            if states is not None:
                states.append(state.hidden)
        return EncoderOutput(state.hidden, state.valid, state.positions, kept, states)


def _sliced_linear(linear: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new Linear holding a copy of the selected output rows / input columns of ``linear``.

    The new layer takes the sliced tensors as its parameters instead of being
    initialised (an init would be wasted work, and warns for a layer with no heads left).
    """
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    out = nn.Linear(1, 1, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    out.in_features, out.out_features = weight.shape[1], weight.shape[0]
    out.weight = nn.Parameter(weight.clone(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        out.bias = nn.Parameter(bias.clone(), requires_grad=linear.bias.requires_grad)
    return out
