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
- per-head locality masks on the attention logits: an additive bias, or a
  multiplicative 0/1 mask (MaiT's Eq. 2: a masked logit becomes 0, not -inf);
- MPNet's relative-position bias: one bucketed table owned by the encoder and
  read by every layer, evaluated at the tokens' input positions (so it follows
  dropped tokens) for the heads each layer still has (so it follows pruning);
- exposed activations: per-layer hidden states, and named sub-modules
  (``attn.proj`` input = per-head contexts, ``ffn.fc2`` input = FFN neurons)
  for forward hooks.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` unless a
token selector needs the attention probabilities of that layer, or the layer
has a multiplicative logit mask (which an additive mask cannot express).
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


PROBABILITIES, RECEIVED, FIRST_ROW = "probabilities", "received", "first_row"
"""What a token selector reads of a layer's attention (its ``reads``), from the most to the least costly:
every probability ``[B, H, N, N]``; the attention each token receives, ``[B, N]``
(:func:`received_attention`: computed example by example beside the weighted
sum, so the probabilities never leave the cache); the first query row's
probabilities ``[B, H, 1, N]`` (computed beside the fused attention kernel)."""


class TokenSelector(Protocol):
    """Decides, after a layer's attention, which tokens continue.

    It sees what it ``reads`` of the layer's attention and which of the ``N``
    entries are tokens (``valid [B, N]``), in the batch view of the engine's
    layout. Returning a bool ``[B, N]`` tensor keeps the True tokens and removes the
    others from the sequence; a :class:`PackDropped` does the same and fuses
    the removed ones into one token; a float ``[B, N]`` tensor multiplies the
    layer's output (a soft mask); ``None`` keeps everything.
    """

    reads: str
    """:data:`PROBABILITIES`, :data:`RECEIVED` or :data:`FIRST_ROW`."""

    def selects_at(self, layer: int) -> bool: ...

    def __call__(self, layer: int, attention: Tensor, valid: Tensor) -> Tensor | PackDropped | None: ...


@dataclass
class TokenState:
    """The sequence as it flows through the stack: which rows are real tokens and where they came from."""

    hidden: Tensor
    """``[B, N, D]``."""
    valid: Tensor
    """``[B, N]`` bool: False on padding and on tokens masked out (not dropped)."""
    positions: Tensor
    """``[B, N]`` long: index of each row in the input sequence."""

    @property
    def batch_positions(self) -> Tensor:
        """``[B, N]`` input position of each row of the batch view (here the rows themselves)."""
        return self.positions

    def with_hidden(self, hidden: Tensor) -> TokenState:
        return TokenState(hidden, self.valid, self.positions)

    def to_batch(self, rows: Tensor) -> Tensor:
        """The batch view ``[B, N, C]`` of per-row values: this layout is already one."""
        return rows

    def from_batch(self, batch: Tensor) -> Tensor:
        """Per-row values from the batch view: this layout is already one."""
        return batch

    def attention_mask(self) -> Tensor | None:
        """Additive key mask ``[B, 1, 1, N]``, or None when every key is valid."""
        return _key_mask(self.valid, self.hidden.dtype)

    def keep(self, keep: Tensor) -> TokenState:
        """Remove the rows where ``keep`` is False, packing each sequence to the front.

        A single example is compacted (:meth:`compact`), so a traced graph of it removes as many rows as each input drops.
        """
        keep = keep & self.valid
        if keep.shape[0] == 1:
            return TokenState(self.hidden, keep, self.positions).compact()
        counts = keep.sum(dim=1)
        new_len = int(counts.max())
        n = keep.shape[1]
        arange = torch.arange(n, device=keep.device)
        order = torch.argsort((~keep).long() * n + arange, dim=1)[:, :new_len]
        hidden = torch.gather(self.hidden, 1, order[..., None].expand(-1, -1, self.hidden.shape[-1]))
        valid = torch.arange(new_len, device=keep.device)[None, :] < counts[:, None]
        return TokenState(hidden, valid, torch.gather(self.positions, 1, order))

    def package(self, keep: Tensor, weights: Tensor, drop: bool = True) -> TokenState:
        """Keep the ``keep`` rows and append one token, the ``weights``-weighted mean of the rows left out.

        With ``drop=False`` the left-out rows stay in place but invalid (masked);
        the package takes input position 0, the class token's, so a per-head
        bias treats it as global. An example that leaves nothing out gets an
        invalid package row.
        """
        summed, total = _left_out_sum(self.valid, keep, weights, self.hidden)
        fused = summed / total.clamp_min(1e-12)[:, None]
        kept = self.keep(keep) if drop else TokenState(self.hidden, self.valid & keep, self.positions)
        packaged = TokenState(
            torch.cat([kept.hidden, fused[:, None].to(kept.hidden.dtype)], dim=1),
            torch.cat([kept.valid, total[:, None] > 0], dim=1),
            torch.cat([kept.positions, torch.zeros_like(kept.positions[:, :1])], dim=1),
        )
        return packaged.compact() if drop and keep.shape[0] == 1 else packaged

    def compact(self) -> TokenState:
        """One example ``[1, N]`` without its invalid rows, every row left valid.

        Index operations only (``nonzero``, ``index_select``: ONNX NonZero and
        Gather), no Python int read from the data, so a traced graph keeps each
        input's own count of rows and needs no key mask after it.
        """
        rows = self.valid[0].nonzero().squeeze(1)
        return TokenState(
            self.hidden.index_select(1, rows), self.valid.index_select(1, rows), self.positions.index_select(1, rows)
        )


@dataclass
class PackedState:
    """The sequence without padding: the rows of every example's tokens, concatenated ``[T, D]``.

    Position-wise work (projections, FFN, norms, residuals) runs on these rows
    only, so a batch costs what its tokens cost, whatever the padding or the
    tokens a selector removed. Attention, the one operation that mixes rows,
    runs on a batch view ``[B, width, C]`` (:meth:`to_batch`), which is a free
    reshape while every example has ``width`` rows and a scatter otherwise.
    """

    hidden: Tensor
    """``[T, D]``: example 0's rows, then example 1's, ... in sequence order."""
    lengths: Tensor
    """``[B]`` long: rows of each example."""
    positions: Tensor
    """``[T]`` long: input position of each row."""
    slots: Tensor
    """``[T]`` long: where each row sits in the flattened batch view ``[B * width]``."""
    width: int
    """Rows of the longest example: the batch view's length."""
    aligned: bool
    """Every row sits at its input position (nothing removed, no padding inside a sequence)."""

    @staticmethod
    def from_padded(hidden: Tensor, valid: Tensor) -> PackedState:
        """Pack the valid rows of a padded batch ``[B, N, D]`` (their input positions are their indices)."""
        b, n, d = hidden.shape
        if bool(valid.all()):
            arange = torch.arange(b * n, device=hidden.device)
            return PackedState(hidden.reshape(b * n, d), valid.new_full((b,), n, dtype=torch.long), arange % n, arange, n, True)
        lengths = valid.sum(dim=1)
        flat = valid.reshape(-1)
        positions = torch.arange(n, device=hidden.device).repeat(b)[flat]
        width = int(lengths.max()) if b else 0
        slots = _slots(lengths, width)
        aligned = bool((positions == slots % max(width, 1)).all())
        return PackedState(hidden.reshape(b * n, d)[flat], lengths, positions, slots, width, aligned)

    @property
    def full(self) -> bool:
        """Every example has ``width`` rows: the batch view is a reshape, no scatter."""
        return self.hidden.shape[0] == self.lengths.shape[0] * self.width

    @property
    def valid(self) -> Tensor:
        """``[B, width]`` bool: which entries of the batch view are rows."""
        return torch.arange(self.width, device=self.lengths.device)[None, :] < self.lengths[:, None]

    @property
    def batch_positions(self) -> Tensor:
        """``[B, width]`` input position of each entry of the batch view (0 on padding)."""
        b = self.lengths.shape[0]
        if self.aligned:
            return torch.arange(self.width, device=self.lengths.device).expand(b, self.width)
        return self.to_batch(self.positions[:, None]).squeeze(-1)

    def with_hidden(self, hidden: Tensor) -> PackedState:
        return PackedState(hidden, self.lengths, self.positions, self.slots, self.width, self.aligned)

    def to_batch(self, rows: Tensor) -> Tensor:
        """``[T, C]`` rows as the batch view ``[B, width, C]``, zeros on padding."""
        b, c = self.lengths.shape[0], rows.shape[-1]
        if self.full:
            return rows.view(b, self.width, c)
        return rows.new_zeros(b * self.width, c).index_copy(0, self.slots, rows).view(b, self.width, c)

    def from_batch(self, batch: Tensor) -> Tensor:
        """The rows ``[T, C]`` of a batch view ``[B, width, C]``."""
        flat = batch.reshape(-1, batch.shape[-1])
        return flat if self.full else flat.index_select(0, self.slots)

    def attention_mask(self) -> Tensor | None:
        """Additive key mask ``[B, 1, 1, width]`` over the batch view, or None when no entry is padding."""
        return None if self.full else _key_mask(self.valid, self.hidden.dtype)

    def keep(self, keep: Tensor) -> PackedState:
        """Remove the rows where the batch-view decision ``keep [B, width]`` is False."""
        rows = self.from_batch(keep[..., None]).squeeze(-1)
        if bool(rows.all()):
            return self
        lengths = (keep & self.valid).sum(dim=1)
        width = int(lengths.max())
        return PackedState(self.hidden[rows], lengths, self.positions[rows], _slots(lengths, width), width, False)

    def package(self, keep: Tensor, weights: Tensor, drop: bool = True) -> PackedState:
        """Keep the ``keep`` rows and append to each example the ``weights``-weighted mean of its rows left out.

        As :meth:`TokenState.package` with ``drop``, the only kind a packed
        state has; an example that leaves nothing out gets no package row (the
        padded path gives it an invalid one).
        """
        if not drop:
            raise ValueError("a packed state removes the tokens it does not keep; mask them in the padded layout (Encoder.packed = False)")
        rows = self.from_batch(keep[..., None]).squeeze(-1)
        summed, total = _left_out_sum(self.valid, keep, weights, self.to_batch(self.hidden))
        has = total > 0
        fused = (summed[has] / total[has, None]).to(self.hidden.dtype)
        kept_lengths = (keep & self.valid).sum(dim=1)
        lengths = kept_lengths + has.long()
        starts = torch.cumsum(lengths, 0) - lengths
        kept_example = torch.div(self.slots, self.width, rounding_mode="floor")[rows]
        rank = torch.arange(kept_example.shape[0], device=rows.device) - (torch.cumsum(kept_lengths, 0) - kept_lengths)[kept_example]
        kept_rows = starts[kept_example] + rank
        package_rows = (starts + kept_lengths)[has]
        hidden = self.hidden.new_empty(int(lengths.sum()), self.hidden.shape[1])
        hidden.index_copy_(0, kept_rows, self.hidden[rows]).index_copy_(0, package_rows, fused)
        positions = torch.zeros(hidden.shape[0], dtype=torch.long, device=rows.device)
        positions.index_copy_(0, kept_rows, self.positions[rows])
        width = int(lengths.max())
        return PackedState(hidden, lengths, positions, _slots(lengths, width), width, False)

    def to_token_state(self) -> TokenState:
        """The padded layout: batch view, its valid mask and input positions."""
        return TokenState(self.to_batch(self.hidden), self.valid, self.batch_positions)


def _left_out_sum(valid: Tensor, keep: Tensor, weights: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """SaiT's package before normalising: each example's ``weights``-weighted sum of the valid rows ``keep`` leaves out ``[B, D]``, and the weights' total ``[B]``.

    One batched product over the batch view ``[B, N, D]`` (a scatter-add into B rows is slow on CPU).
    """
    left_out = (valid & ~keep).to(weights.dtype) * weights
    return torch.bmm(left_out[:, None, :], batch.to(weights.dtype)).squeeze(1), left_out.sum(dim=1)


def _slots(lengths: Tensor, width: int) -> Tensor:
    """Index of each row of a packed batch in its ``[B * width]`` batch view."""
    b = lengths.shape[0]
    example = torch.repeat_interleave(torch.arange(b, device=lengths.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    return example * width + torch.arange(example.shape[0], device=lengths.device) - starts[example]


def _key_mask(valid: Tensor, dtype: torch.dtype) -> Tensor | None:
    """Additive key mask ``[B, 1, 1, N]`` from a ``[B, N]`` validity mask, or None when every key is valid."""
    if bool(valid.all()):
        return None
    return torch.zeros_like(valid, dtype=dtype).masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]


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
        self.head_logit_mask: Tensor | None
        self.register_buffer("head_logit_mask", None, persistent=False)  # [H, N0, N0] bool, multiplies the logits
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

    def set_head_logit_mask(self, mask: Tensor | None) -> None:
        """Install a multiplicative logit mask per head, ``[heads, seq, seq]`` bool over input positions.

        A False entry sets that query-key logit to 0 before the softmax (the key
        keeps weight ``e^0`` over the row's sum, not 0); True leaves it unchanged.
        The layer then computes its softmax explicitly (the fused kernel takes
        only additive masks); padding keys still get zero weight.
        """
        if mask is not None and mask.shape[0] != self.num_heads:
            raise ValueError(f"head logit mask has {mask.shape[0]} heads, attention has {self.num_heads}")
        self.head_logit_mask = None if mask is None else mask.bool()

    def _bias(self, state: TokenState | PackedState) -> Tensor | None:
        """The relative-position bias plus the installed per-head bias, at the input positions of the state's batch view."""
        if not self._relative and self.head_bias is None:
            return None
        relative = None
        if self._relative:
            relative = self._relative[0](state.batch_positions, self.head_index).to(state.hidden.dtype)
        if self.head_bias is None:
            return relative
        bias = _at_positions(self.head_bias, state.batch_positions).to(state.hidden.dtype)
        return bias if relative is None else bias + relative

    def _logit_mask(self, state: TokenState | PackedState) -> Tensor | None:
        """The installed multiplicative logit mask (0/1 in the hidden dtype) at the input positions of the state's batch view."""
        if self.head_logit_mask is None:
            return None
        return _at_positions(self.head_logit_mask, state.batch_positions).to(state.hidden.dtype)

    def forward(
        self, x: Tensor, state: TokenState | PackedState, head_mask: Tensor | None = None, reads: str | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The attention output (rows as ``x``: ``[B, N, D]`` padded or ``[T, D]`` packed) and what a selector ``reads`` of it.

        Without ``reads`` (or with :data:`FIRST_ROW`) the context comes from the
        fused kernel, unless a logit mask is installed; the other reads compute
        the probabilities explicitly.
        """
        context, scores = self.context(x, state, head_mask, reads)
        return self.proj(context), scores

    def context(
        self, x: Tensor, state: TokenState | PackedState, head_mask: Tensor | None = None, reads: str | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The masked per-head contexts ``[..., heads * head_dim]`` (what :attr:`proj` reads, rows as ``x``) and what a selector ``reads``."""
        if reads not in (None, PROBABILITIES, RECEIVED, FIRST_ROW):
            raise ValueError(f"a token selector reads {reads!r}; use {PROBABILITIES}, {RECEIVED} or {FIRST_ROW}")
        if self.num_heads == 0:
            return x.new_zeros(*x.shape[:-1], 0), None
        qkv = state.to_batch(self.qkv(x))
        b, n, _ = qkv.shape
        heads = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if reads == RECEIVED:
            heads = heads.contiguous()  # one copy, so the example-by-example products read contiguous blocks
        q, k, v = heads.unbind(0)
        mask = state.attention_mask()
        bias = self._bias(state)
        if bias is not None:
            mask = bias if mask is None else mask + bias
        logit_mask = self._logit_mask(state)
        dropout = self.dropout if self.training else 0.0
        scores = None
        if reads == RECEIVED:
            context, scores = self._received(q, k, v, mask, logit_mask, state.valid, dropout)
        elif reads == PROBABILITIES or logit_mask is not None:
            probs = _probabilities(q, k, mask, logit_mask)
            context = F.dropout(probs, dropout, self.training) @ v
            scores = probs if reads == PROBABILITIES else probs[:, :, :1] if reads == FIRST_ROW else None
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            if reads == FIRST_ROW:
                scores = _probabilities(q[:, :, :1], k, None if mask is None else mask[..., :1, :])
        if head_mask is not None:
            context = context * head_mask.view(1, -1, 1, 1).to(context.dtype)
        context = context.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return state.from_batch(context), scores

    def _received(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, logit_mask: Tensor | None, valid: Tensor, dropout: float
    ) -> tuple[Tensor, Tensor]:
        """Context and :func:`received_attention`, a few examples at a time, so each block of probabilities stays in cache."""
        b, h, n, _ = q.shape
        # traced (an export), the chunking would freeze at the example's batch and length: one chunk, whatever the input
        step = b if torch.jit.is_tracing() else max(1, RECEIVED_CHUNK // (h * n * n))
        contexts, received = [], []

        def part(t: Tensor | None, i: int) -> Tensor | None:  # a mask's rows for examples i.., or the one shared by all
            return None if t is None else t[i : i + step] if t.shape[0] == b else t

        for i in range(0, b, step):
            probs = _probabilities(q[i : i + step], k[i : i + step], part(mask, i), part(logit_mask, i))
            contexts.append(F.dropout(probs, dropout, self.training) @ v[i : i + step])
            received.append(received_attention(probs, valid[i : i + step]))
        return torch.cat(contexts), torch.cat(received)

    @torch.no_grad()
    def prune_heads(self, keep: Sequence[int]) -> None:
        """Keep only the listed heads (indices into the current heads), shrinking the weights."""
        keep_t = torch.as_tensor(sorted(keep), dtype=torch.long, device=self.proj.weight.device)
        dh, h = self.head_dim, self.num_heads
        per_head = (keep_t[:, None] * dh + torch.arange(dh, device=keep_t.device)[None, :]).reshape(-1)
        rows = torch.cat([per_head + part * h * dh for part in range(3)])
        self.qkv = _sliced_linear(self.qkv, rows=rows)
        self.proj = _sliced_linear(self.proj, cols=per_head)
        if self.head_bias is not None:
            self.head_bias = self.head_bias[keep_t]
        if self.head_logit_mask is not None:
            self.head_logit_mask = self.head_logit_mask[keep_t]
        self.head_index = self.head_index[keep_t]
        self.num_heads = len(keep_t)


RECEIVED_CHUNK = 2**19
"""Attention probabilities (floats) computed at once when a selector reads the attention received: about 2 MB."""


def received_attention(probs: Tensor, valid: Tensor) -> Tensor:
    """``[B, N]``: the attention each token receives, averaged over heads and summed over the real query rows.

    Padded and removed queries give nothing; masked keys receive nothing (their probabilities are 0).
    """
    queries = valid.to(probs.dtype)[:, None, None, :]
    return (queries @ probs).mean(dim=1).squeeze(1)  # a vector-matrix product per head: one read of the probabilities


def _probabilities(q: Tensor, k: Tensor, mask: Tensor | None, logit_mask: Tensor | None = None) -> Tensor:
    """Softmax attention probabilities of the queries ``q [B, H, R, dh]`` over the keys ``k [B, H, N, dh]``.

    softmax(logit_mask ⊙ QKᵀ/√d + mask): the multiplicative mask acts on the
    scaled dot products only, so the additive mask (padding, biases) still applies after it.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # scaling q, not the scores: N / dh times less work
    if logit_mask is not None:
        scores = scores * logit_mask
    if mask is not None:
        scores += mask
    return scores.softmax(dim=-1)


def _at_positions(table: Tensor, positions: Tensor) -> Tensor:
    """A per-head ``[H, N0, N0]`` table over input positions, read at the rows' ``positions [B, N]``.

    ``[1, H, N, N]`` when the rows are the input positions in order (shared by
    the batch, no gather), ``[B, H, N, N]`` otherwise.
    """
    if positions.shape[1] == table.shape[-1] and bool((positions == torch.arange(positions.shape[1], device=positions.device)).all()):
        return table[None]
    return table[:, positions[:, :, None], positions[:, None, :]].permute(1, 0, 2, 3)


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
        return self.fc2(self.activations(x, neuron_mask))

    def activations(self, x: Tensor, neuron_mask: Tensor | None = None) -> Tensor:
        """The masked neurons (what :attr:`fc2` reads)."""
        h = F.gelu(self.fc1(x), approximate=self.approximate)
        if neuron_mask is not None:
            h = h * neuron_mask.to(h.dtype)
        return h

    @torch.no_grad()
    def prune_neurons(self, keep: Sequence[int]) -> None:
        """Keep only the listed neurons (indices into the current neurons)."""
        keep_t = torch.as_tensor(sorted(keep), dtype=torch.long, device=self.fc1.weight.device)
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

    def attention_input(self, x: Tensor) -> Tensor:
        """What the attention reads of the layer input ``x``."""
        return self.norm1(x) if self.norm_first else x

    def after_attention(self, x: Tensor, attn_out: Tensor) -> Tensor:
        """The residual sum (and norm) of the layer input ``x`` and the attention output: the FFN half's input."""
        return x + self.dropout(attn_out) if self.norm_first else self.norm1(x + self.dropout(attn_out))

    def ffn_input(self, h: Tensor) -> Tensor:
        """What the FFN reads of the FFN half's input ``h``."""
        return self.norm2(h) if self.norm_first else h

    def after_ffn(self, h: Tensor, ffn_out: Tensor) -> Tensor:
        """The layer output: residual sum (and norm) of ``h`` and the FFN output."""
        return h + self.dropout(ffn_out) if self.norm_first else self.norm2(h + self.dropout(ffn_out))

    def forward(
        self,
        state: TokenState | PackedState,
        layer: int,
        head_mask: Tensor | None,
        neuron_mask: Tensor | None,
        selector: TokenSelector | None,
        num_protected: int,
        drop_tokens: bool,
    ) -> TokenState | PackedState:
        """One layer on either layout; a packed state needs ``drop_tokens`` (it has no masked-but-present rows)."""
        x = state.hidden
        select = selector is not None and selector.selects_at(layer)
        reads = selector.reads if select else None
        attn_out, scores = self.attn(self.attention_input(x), state, head_mask, reads)
        h = self.after_attention(x, attn_out)
        state = state.with_hidden(h)
        soft = None
        if select and scores is not None:  # a layer without heads has no attention to select by: it keeps every token
            decision = selector(layer, scores, state.valid)
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
        out = self.after_ffn(h, self.ffn(self.ffn_input(h), neuron_mask))
        if soft is not None:
            out = out * state.from_batch(soft[..., None]).to(out.dtype)
        return state.with_hidden(out)


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
    """A stack of :class:`Block` with masks, structural pruning and token selection.

    By default the stack runs packed (:class:`PackedState`: no padding rows, a
    removed token is a removed row); ``packed = False`` runs the padded layout,
    which a forward that masks tokens instead of removing them always uses.
    """

    def __init__(self, spec: EncoderSpec, packed: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.packed = packed
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
        state: TokenState | PackedState
        if self.packed and drop_tokens:
            state = PackedState.from_padded(hidden, valid.bool())
        else:
            state = TokenState(hidden, valid.bool(), torch.arange(n, device=hidden.device).expand(b, n))
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
            kept.append(state.lengths if isinstance(state, PackedState) else state.valid.sum(dim=1))
            if states is not None:
                states.append(state.to_batch(state.hidden))
        if isinstance(state, PackedState):
            state = state.to_token_state()
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
