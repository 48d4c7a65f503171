"""Fake quantization of weight tensors: uniform (the baseline) and piecewise-linear (PWLQ, Fang et al. 2020).

Weights of trained layers are bell-shaped: most values sit near zero, a few
far out. Uniform quantization spends its levels evenly over [−m, m], so the
dense centre gets coarse steps. PWLQ splits the range at a breakpoint p into
a centre [−p, p] and two tails, and gives each region the same number of
levels: b-bit signed steps of p / (2^(b−1) − 1) in the centre, and (b−1)-bit
magnitudes of (m − p) / (2^(b−1) − 1) above p in the tails (plus the sign).
Everything works per output channel (dim 0) unless ``per_channel=False``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BREAKPOINT_GRID = 200
"""Candidate breakpoints per channel, as fractions of max |w| in (0, 1)."""
CLOSED_FORM = {
    "gaussian": lambda m: math.log(0.8614 * m + 0.6079),
    "laplace": lambda m: 0.8030 * math.sqrt(m) - 0.3167,
}
"""The paper's approximate optimal breakpoint, in units of the std, as a function of m̃ = max|w| / std."""


def _rows(w: Tensor, per_channel: bool) -> Tensor:
    return w.reshape(w.shape[0], -1) if per_channel and w.ndim > 1 else w.reshape(1, -1)


def uniform_quantize(w: Tensor, bits: int, per_channel: bool = True, symmetric: bool = True) -> Tensor:
    """Round ``w`` to a uniform grid of ``bits`` bits over its (per-channel) range."""
    rows = _rows(w, per_channel)
    if symmetric:
        levels = 2 ** (bits - 1) - 1
        step = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
        q = torch.clamp(torch.round(rows / step), -levels, levels) * step
    else:
        low, high = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
        step = ((high - low) / (2**bits - 1)).clamp_min(1e-12)
        zero = torch.round(-low / step)
        q = (torch.clamp(torch.round(rows / step) + zero, 0, 2**bits - 1) - zero) * step
    return q.reshape(w.shape)


def pwlq_quantize_rows(rows: Tensor, bits: int, breakpoint: Tensor, max_abs: Tensor) -> Tensor:
    """PWLQ of each row of ``rows`` ``[C, K]`` with breakpoints and ranges ``[C, 1]``."""
    levels = 2 ** (bits - 1) - 1
    p = breakpoint.clamp_min(1e-12)
    centre_step = p / levels
    tail_step = (max_abs - breakpoint).clamp_min(1e-12) / levels
    centre = torch.clamp(torch.round(rows / centre_step), -levels, levels) * centre_step
    offset = torch.clamp(torch.round((rows.abs() - breakpoint) / tail_step), 0, levels) * tail_step
    tails = torch.sign(rows) * (breakpoint + offset)
    return torch.where(rows.abs() <= breakpoint, centre, tails)


def pwlq_error(rows: Tensor, bits: int, breakpoint: Tensor, max_abs: Tensor) -> Tensor:
    """Mean squared quantization error per row."""
    return (pwlq_quantize_rows(rows, bits, breakpoint, max_abs) - rows).pow(2).mean(dim=1)


def search_breakpoint(rows: Tensor, bits: int, grid: int = BREAKPOINT_GRID) -> Tensor:
    """The breakpoint ``[C, 1]`` of each row that minimises its quantization MSE over a grid of fractions of max |w|."""
    max_abs = rows.abs().amax(dim=1, keepdim=True)
    fractions = torch.linspace(0, 1, grid + 2, dtype=rows.dtype)[1:-1]
    errors = torch.stack([pwlq_error(rows, bits, f * max_abs, max_abs) for f in fractions], dim=1)  # [C, grid]
    return fractions[errors.argmin(dim=1)][:, None] * max_abs


def closed_form_breakpoint(rows: Tensor, distribution: str) -> Tensor:
    """The paper's approximate breakpoint for Gaussian- or Laplace-shaped rows (a check on the search)."""
    std = rows.std(dim=1, keepdim=True).clamp_min(1e-12)
    max_abs = rows.abs().amax(dim=1, keepdim=True)
    ratio = (max_abs / std).flatten().tolist()
    p = torch.tensor([CLOSED_FORM[distribution](m) for m in ratio], dtype=rows.dtype)[:, None] * std
    return torch.minimum(p.clamp_min(0), max_abs)


def pwlq_quantize(w: Tensor, bits: int, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """PWLQ of ``w`` with the searched breakpoints; returns the quantized tensor and the breakpoints."""
    rows = _rows(w, per_channel)
    breakpoint = search_breakpoint(rows, bits)
    q = pwlq_quantize_rows(rows, bits, breakpoint, rows.abs().amax(dim=1, keepdim=True))
    return q.reshape(w.shape), breakpoint.flatten()


def bias_correct(w: Tensor, q: Tensor, per_channel: bool = True) -> Tensor:
    """The paper's weight bias correction (after Banner et al.): ``(q + mean(w) − mean(q)) · std(w) / std(q)`` per channel.

    Quantization shifts and shrinks each channel's distribution; this restores
    its mean offset and its spread.
    """
    rows, qrows = _rows(w, per_channel), _rows(q, per_channel)
    q_std = qrows.std(dim=1, keepdim=True)
    scale = torch.where(q_std > 0, rows.std(dim=1, keepdim=True) / q_std.clamp_min(1e-12), torch.ones_like(q_std))
    return ((qrows + rows.mean(dim=1, keepdim=True) - qrows.mean(dim=1, keepdim=True)) * scale).reshape(w.shape)
