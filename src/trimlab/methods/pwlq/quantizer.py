"""Fake quantization of weight tensors: uniform (the baseline) and piecewise-linear (PWLQ, Fang et al. 2020).

Weights of trained layers are bell-shaped: most values sit near zero, a few
far out. Uniform quantization (the paper's Eq. 1) spends its 2^b levels evenly
over [−m, m], so the dense centre gets coarse steps. PWLQ (its Eq. 3) splits
the range at a breakpoint p into a centre [−p, p] and two tails, and gives
each region the same number of levels: b-bit signed steps of p / (2^(b−1) − 1)
in the centre, and (b−1)-bit magnitudes of (m − p) / (2^(b−1) − 1) above p in
the tails (plus the sign). The breakpoint comes from the paper's closed form
for a Gaussian (or Laplace) row, or from a search over candidates.
Everything works per output channel (dim 0) unless ``per_channel=False``.
Both produce integer codes (:class:`QuantizedWeight`), which is what a kept
model stores; the float values the model computes with are decoded from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BREAKPOINT_GRID = 200
"""Candidate breakpoints per channel of ``breakpoint=search``, as fractions of max |w| in (0, 1)."""


def _rows(w: Tensor, per_channel: bool) -> Tensor:
    return w.reshape(w.shape[0], -1) if per_channel and w.ndim > 1 else w.reshape(1, -1)


SCHEMES = ("uniform", "pwlq")
"""The schemes :class:`QuantizedWeight` decodes (what a saved model's ``quantized.<layer>.scheme`` may name)."""


@dataclass
class QuantizedWeight:
    """A weight as unsigned integer codes of ``code_bits`` bits plus per-row parameters: what a kept model stores.

    :meth:`dequantize` gives exactly the floats the quantized model computes
    with (the quantizers below produce their values through it), so a model
    rebuilt from the codes predicts as the fake-quantized one did.
    """

    scheme: str
    """``uniform`` (``step``, and ``zero`` when asymmetric) or ``pwlq`` (``breakpoint``, ``max_abs``)."""
    bits: int
    shape: tuple[int, ...]
    codes: Tensor
    """``[rows, K]`` integers in ``[0, 2**code_bits)``."""
    params: dict[str, Tensor]
    """Per-row ``[rows, 1]`` floats; ``shift`` and ``scale`` once bias-corrected."""

    @property
    def code_bits(self) -> int:
        """Bits per code: PWLQ adds one to say which region (centre or tail) a code is in."""
        return self.bits + (self.scheme == "pwlq")

    def dequantize(self) -> Tensor:
        p = self.params
        codes = self.codes.long()
        if self.scheme == "pwlq":
            values = pwlq_values(codes, self.bits, p["breakpoint"], p["max_abs"])
        elif "zero" in p:
            values = (codes.to(p["step"].dtype) - p["zero"]) * p["step"]
        else:
            values = (codes - 2 ** (self.bits - 1)).to(p["step"].dtype) * p["step"]
        if "shift" in p:
            values = (values + p["shift"]) * p["scale"]
        return values.reshape(self.shape)


def uniform_codes(w: Tensor, bits: int, per_channel: bool = True, symmetric: bool = True) -> QuantizedWeight:
    """Round ``w`` to a uniform grid of ``bits`` bits over its (per-channel) range, as codes.

    Symmetric is the paper's Eq. 1 (and its code's ``uniform_symmetric_quantizer``): 2^b levels
    ``k · s``, s = 2m / (2^b − 1), k in [−2^(b−1), 2^(b−1) − 1], so zero is exact and +m rounds to m − s/2.
    """
    rows = _rows(w, per_channel)
    if symmetric:
        half = 2 ** (bits - 1)
        step = 2 * rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / (2**bits - 1)
        codes = torch.clamp(torch.round(rows / step), -half, half - 1) + half
        params = {"step": step}
    else:
        low, high = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
        step = ((high - low) / (2**bits - 1)).clamp_min(1e-12)
        zero = torch.round(-low / step)
        codes = torch.clamp(torch.round(rows / step) + zero, 0, 2**bits - 1)
        params = {"step": step, "zero": zero}
    return QuantizedWeight("uniform", bits, tuple(w.shape), codes.to(_code_dtype(bits)), params)


def uniform_quantize(w: Tensor, bits: int, per_channel: bool = True, symmetric: bool = True) -> Tensor:
    """Round ``w`` to a uniform grid of ``bits`` bits over its (per-channel) range."""
    return uniform_codes(w, bits, per_channel, symmetric).dequantize()


def pwlq_encode(rows: Tensor, bits: int, breakpoint: Tensor, max_abs: Tensor) -> Tensor:
    """PWLQ codes of ``rows`` ``[C, K]``, ``bits + 1`` bits each.

    A centre value ``c · step`` is the code ``c + levels`` (below ``2**bits``);
    a tail value ``±(p + o · tail_step)`` is ``2**bits + o``, plus ``2**(bits−1)`` if negative.
    """
    levels = 2 ** (bits - 1) - 1
    centre_step = breakpoint.clamp_min(1e-12) / levels
    tail_step = (max_abs - breakpoint).clamp_min(1e-12) / levels
    centre = torch.clamp(torch.round(rows / centre_step), -levels, levels) + levels
    offset = torch.clamp(torch.round((rows.abs() - breakpoint) / tail_step), 0, levels)
    tails = 2**bits + offset + (levels + 1) * (rows < 0)
    return torch.where(rows.abs() <= breakpoint, centre, tails).long()


def pwlq_values(codes: Tensor, bits: int, breakpoint: Tensor, max_abs: Tensor) -> Tensor:
    """The values of PWLQ codes (:func:`pwlq_encode`): steps of p / levels in the centre, p + steps of (m − p) / levels beyond."""
    levels = 2 ** (bits - 1) - 1
    dtype = breakpoint.dtype
    centre_step = breakpoint.clamp_min(1e-12) / levels
    tail_step = (max_abs - breakpoint).clamp_min(1e-12) / levels
    centre = (codes - levels).to(dtype) * centre_step
    tail = codes - 2**bits
    negative = tail > levels
    sign = 1.0 - 2.0 * negative.to(dtype)
    tails = sign * (breakpoint + (tail - (levels + 1) * negative).to(dtype) * tail_step)
    return torch.where(codes < 2**bits, centre, tails)


def pwlq_quantize_rows(rows: Tensor, bits: int, breakpoint: Tensor, max_abs: Tensor) -> Tensor:
    """PWLQ of each row of ``rows`` ``[C, K]`` with breakpoints and ranges ``[C, 1]``.

    The same values as decoding :func:`pwlq_encode`'s codes, computed in floats
    throughout: the breakpoint search calls this hundreds of times per layer.
    """
    levels = 2 ** (bits - 1) - 1
    centre_step = breakpoint.clamp_min(1e-12) / levels
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
    fractions = torch.linspace(0, 1, grid + 2, dtype=rows.dtype, device=rows.device)[1:-1]
    errors = torch.stack([pwlq_error(rows, bits, f * max_abs, max_abs) for f in fractions], dim=1)  # [C, grid]
    return fractions[errors.argmin(dim=1)][:, None] * max_abs


def closed_form_breakpoint(rows: Tensor, distribution: str = "gaussian") -> Tensor:
    """The paper's approximate optimal breakpoint ``[C, 1]`` for Gaussian- or Laplace-shaped rows (§3.3).

    In units of each row's std σ, with m̃ = max|w| / σ: p̃ = ln(0.86143114 m̃ + 0.607901097) (Gaussian) or
    0.80304483 √m̃ − 0.31667855 (Laplace), the authors' code's constants; p = p̃ σ. The code adds 1e-12
    to σ and does not clamp; this clamps p to [0, m], which only a row of one or two weights can reach.
    """
    std = torch.nan_to_num(rows.std(dim=1, keepdim=True)) + 1e-12  # a one-weight row has no std
    max_abs = rows.abs().amax(dim=1, keepdim=True)
    ratio = max_abs / std
    if distribution == "gaussian":
        normalised = torch.log(0.86143114 * ratio + 0.607901097496529)
    elif distribution == "laplace":
        normalised = 0.80304483 * ratio.sqrt() - 0.3166785508381478
    else:
        raise ValueError(f"no closed-form breakpoint for {distribution!r}: gaussian or laplace")
    return torch.minimum((normalised * std).clamp_min(0), max_abs)


def pwlq_codes(w: Tensor, bits: int, per_channel: bool = True, breakpoint: str = "gaussian") -> QuantizedWeight:
    """PWLQ of ``w`` as codes, with breakpoints from the ``gaussian`` or ``laplace`` closed form or a ``search``."""
    rows = _rows(w, per_channel)
    p = search_breakpoint(rows, bits) if breakpoint == "search" else closed_form_breakpoint(rows, breakpoint)
    max_abs = rows.abs().amax(dim=1, keepdim=True)
    codes = pwlq_encode(rows, bits, p, max_abs)
    params = {"breakpoint": p, "max_abs": max_abs}
    return QuantizedWeight("pwlq", bits, tuple(w.shape), codes.to(_code_dtype(bits + 1)), params)


def pwlq_quantize(w: Tensor, bits: int, per_channel: bool = True, breakpoint: str = "gaussian") -> tuple[Tensor, Tensor]:
    """PWLQ of ``w`` (breakpoints as in :func:`pwlq_codes`); returns the quantized tensor and the breakpoints."""
    quantized = pwlq_codes(w, bits, per_channel, breakpoint)
    return quantized.dequantize(), quantized.params["breakpoint"].flatten()


def bias_correction(w: Tensor, quantized: QuantizedWeight, per_channel: bool = True) -> QuantizedWeight:
    """The paper's weight bias correction (after Banner et al.): ``(q + mean(w) − mean(q)) · std(w) / std(q)`` per channel.

    Quantization shifts and shrinks each channel's distribution; this restores
    its mean offset and its spread. The shift and scale join the codes' parameters.
    """
    rows, qrows = _rows(w, per_channel), _rows(quantized.dequantize(), per_channel)
    q_std = qrows.std(dim=1, keepdim=True)
    scale = torch.where(q_std > 0, rows.std(dim=1, keepdim=True) / q_std.clamp_min(1e-12), torch.ones_like(q_std))
    shift = rows.mean(dim=1, keepdim=True) - qrows.mean(dim=1, keepdim=True)
    params = {**quantized.params, "shift": shift, "scale": scale}
    return QuantizedWeight(quantized.scheme, quantized.bits, quantized.shape, quantized.codes, params)


def _code_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int32
