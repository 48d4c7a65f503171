"""Token selectors for the encoder's selection hook: LTP's learned thresholds and the top-k baseline.

Both rank tokens by the attention they receive. The encoder calls a selector
after each layer's attention; a bool answer removes the dropped tokens from
the sequence (so the FFN and every later layer run on fewer tokens), a float
answer multiplies the layer's output (LTP's soft stage).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trimlab.models.encoder import RECEIVED

SCORE_LENGTH = 128
"""The reference code pads every input to 128 tokens and averages attention over all 128 query rows;
dividing the summed attention by this constant keeps its threshold scale whatever the real padding."""


def importance(received: Tensor, valid: Tensor, score_length: int = SCORE_LENGTH) -> Tensor:
    """LTP's importance ``[B, N]`` of each token: the attention it receives (:func:`received_attention`) / ``score_length``.

    With inputs padded to ``score_length`` this is LTP's mean over heads and
    query rows; padded or dropped queries contribute nothing, padded keys get 0.
    """
    return received / score_length * valid.to(received.dtype)


class LearnedThresholds(nn.Module):
    """LTP's selector: threshold θ_l = final_threshold · l / L + a learned offset (0 at start).

    Soft (stage 1, training): mask σ((s − θ_l) / T) on the layer output, kept
    in :attr:`soft_masks` for the regulariser. Hard (``hard=True``, and always
    in eval mode as in the reference): tokens with s < θ_l are dropped for
    good. Layer 0's threshold is 0 with no gradient in the reference, so
    layer 0 never prunes.
    """

    def __init__(self, num_layers: int, final_threshold: float = 0.01, temperature: float = 1e-3, score_length: int = SCORE_LENGTH) -> None:
        super().__init__()
        self.register_buffer("base", final_threshold * torch.arange(num_layers, dtype=torch.float32) / num_layers)
        self.offsets = nn.Parameter(torch.zeros(num_layers))
        self.temperature = temperature
        self.score_length = score_length
        self.hard = False
        self.reads = RECEIVED
        self.soft_masks: list[Tensor] = []
        """The soft masks of the current forward pass (cleared by :meth:`reset`)."""

    def thresholds(self) -> Tensor:
        return self.base + self.offsets

    def reset(self) -> None:
        self.soft_masks = []

    def selects_at(self, layer: int) -> bool:
        return layer > 0

    def __call__(self, layer: int, received: Tensor, valid: Tensor) -> Tensor:
        score = importance(received, valid, self.score_length)
        theta = self.thresholds()[layer]
        if self.hard or not self.training:
            return score >= theta
        mask = torch.sigmoid((score - theta) / self.temperature) * valid.to(score.dtype)
        self.soft_masks.append(mask)
        return mask

    def mask_penalty(self) -> Tensor:
        """Σ over layers of the soft masks' sum over real tokens / (batch · score_length): the reference's L1 term."""
        if not self.soft_masks:
            return self.offsets.new_zeros(())
        return sum(m.sum() / (m.shape[0] * self.score_length) for m in self.soft_masks)


def topk_keep_rates(num_layers: int, final_keep: float) -> list[float]:
    """The top-k baseline's schedule: the first max(3, ⌈0.15 L⌉) layers keep all, then linearly down to ``final_keep``."""
    first = min(num_layers, max(3, math.ceil(0.15 * num_layers)))
    rates = [1.0] * first
    for i in range(first, num_layers):
        rates.append(max(0.01, 1.0 + (final_keep - 1.0) * (i - first + 1) / (num_layers - first)))  # the reference's floor
    return rates


class TopKTokens:
    """Prior work's fixed-ratio pruning: layer l keeps round(rate_l · input length) tokens with the most attention."""

    def __init__(self, keep_rates: list[float]) -> None:
        self.keep_rates = keep_rates
        self.reads = RECEIVED
        self.first = next((i for i, r in enumerate(keep_rates) if r < 1.0), len(keep_rates))
        self.input_lengths: Tensor | None = None
        self.last_layer = -1

    def selects_at(self, layer: int) -> bool:
        return layer >= self.first

    def __call__(self, layer: int, received: Tensor, valid: Tensor) -> Tensor:
        if layer <= self.last_layer or self.input_lengths is None:
            # the first call of a forward pass (at self.first, or later if that layer lost its heads): nothing dropped yet
            self.input_lengths = valid.sum(dim=1)
        self.last_layer = layer
        score = received.masked_fill(~valid, -1.0)
        score[:, 0] = math.inf  # the class token counts among the kept
        keep_counts = torch.clamp(torch.round(self.input_lengths * self.keep_rates[layer]), min=1).long()
        ranks = score.argsort(dim=1, descending=True).argsort(dim=1)
        return (ranks < keep_counts[:, None]) & valid
