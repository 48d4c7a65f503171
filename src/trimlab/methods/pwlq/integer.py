"""PWLQ on integer hardware: each Linear as two int8 matrix multiplies, centre and tail, each with its own scale.

The paper's hardware form (Fang et al. 2020, §3.4: one multiplier, separate
accumulators per region): a PWLQ weight is a centre code ``c`` (value
``c · s_c``, s_c = p / L, L = 2^(b−1) − 1) or a tail code ``±o`` (value
``±(p + o · s_t)``, s_t = (m − p) / L). Since p = L · s_c, a tail weight is
``±L`` in the centre's units plus ``±o`` in the tail's, so

    y = s_x · (s_c · Σ C·q + s_t · Σ T·q) + bias

with C = the centre codes (±L where the weight is in a tail) and T = the tail
offsets (0 in the centre): two int8 matrices, int32 accumulators, two scales
per output row. The breakpoint's term rides in C, so no third accumulator is
needed (exact for p ≥ 1e-12, where the quantizer's centre step is p / L).
Bias correction's shift adds ``scale · shift · s_x · Σ q``, one sum per input row.

The input codes ``q`` are the calibrated :class:`InputQuantizer`'s, so the
outputs equal the simulated (fake-quantized) layer's up to the float rounding
of its accumulation. The two branches run as one int8 GEMM over the stacked
matrices [C; T] (oneDNN's ``qlinear_pointwise``: uint8 × int8 → int32, scaled
to float32 per output row), then the halves are summed. On CPUs without VNNI,
oneDNN sums pairs of uint8 × int8 products in int16, which saturates for
8-bit weights (|code| ≤ 127) with inputs above 129; this PyTorch does not say
whether the CPU has VNNI, so such layers always split the input codes in two
halves of at most 128 each (K doubled), which keeps every sum exact.
``kernel="int_mm"`` uses ``torch._int_mm`` instead: exact everywhere, but a
plain loop on CPU, many times slower than float32 (a reference, not a fast path).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from trimlab.methods.pwlq.calibrate import InputQuantizer
from trimlab.methods.pwlq.quantizer import QuantizedWeight

INT16_MAX = 2**15 - 1
KERNELS = ("onednn", "int_mm")


def default_kernel() -> str:
    """oneDNN's int8 GEMM where this PyTorch build has it (x86 with MKL-DNN), else ``torch._int_mm``."""
    return "onednn" if hasattr(torch.ops.onednn, "qlinear_pointwise") else "int_mm"


def branch_matrices(quantized: QuantizedWeight) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The centre and tail int8 matrices ``[N, K]`` of a PWLQ weight, and their per-row scales ``[N]`` (float32).

    Bias correction's per-row ``scale`` joins both branch scales.
    """
    bits, p = quantized.bits, quantized.params
    levels = 2 ** (bits - 1) - 1
    codes = quantized.codes.long().reshape(quantized.shape[0], -1)
    rows = codes.shape[0]
    breakpoint, max_abs = p["breakpoint"].expand(rows, 1), p["max_abs"].expand(rows, 1)
    in_centre = codes < 2**bits
    tail = codes - 2**bits
    negative = tail > levels
    sign = 1 - 2 * negative.long()
    offset = tail - (levels + 1) * negative.long()
    centre = torch.where(in_centre, codes - levels, sign * levels)
    tails = torch.where(in_centre, torch.zeros_like(codes), sign * offset)
    centre_scale = (breakpoint.clamp_min(1e-12) / levels).flatten().float()
    tail_scale = ((max_abs - breakpoint).clamp_min(1e-12) / levels).flatten().float()
    if "scale" in p:
        row_scale = p["scale"].expand(rows, 1).flatten().float()
        centre_scale, tail_scale = centre_scale * row_scale, tail_scale * row_scale
    return centre.to(torch.int8), tails.to(torch.int8), centre_scale, tail_scale


class TwoBranchLinear(nn.Module):
    """A PWLQ Linear executed as two integer GEMMs (centre and tail) on its calibrated int8 inputs."""

    def __init__(
        self, linear: nn.Linear, quantized: QuantizedWeight, quantizer: InputQuantizer, kernel: str | None = None
    ) -> None:
        super().__init__()
        kernel = kernel or default_kernel()
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
        if quantized.scheme != "pwlq" or quantized.bits > 8:
            raise ValueError(
                f"two integer branches need PWLQ weights of at most 8 bits, not {quantized.scheme} {quantized.bits}-bit"
            )
        if quantizer.bits > 8:
            raise ValueError(f"int8 inputs need activations of at most 8 bits, not {quantizer.bits} (method.act_bits)")
        self.kernel, self.out_features = kernel, linear.out_features
        self.low, self.high, self.act_bits = quantizer.low, quantizer.high, quantizer.bits
        unsigned = quantizer.low >= 0  # the InputQuantizer's grids: [0, high] or symmetric [−bound, bound]
        levels = 2**quantizer.bits
        span = max(quantizer.high, 1e-12) if unsigned else 2 * max(-quantizer.low, quantizer.high)
        self.step = span / (levels - 1)
        self.zero = 0 if unsigned else levels // 2  # raw uint8 = code + zero, in [0, 2^bits − 1]
        centre, tails, centre_scale, tail_scale = branch_matrices(quantized)
        levels_w = 2 ** (quantized.bits - 1) - 1
        self.split = kernel == "onednn" and 2 * levels_w * (levels - 1) > INT16_MAX
        weight = torch.cat([centre, tails])  # [2N, K]: both branches in one GEMM, their accumulators kept apart
        self.register_buffer("weight_int8", weight)
        self.register_buffer("row_scales", torch.cat([centre_scale, tail_scale]))
        shift = quantized.params.get("shift")
        row_scale = quantized.params.get("scale", torch.ones(1, 1, device=weight.device))
        shift = None if shift is None else (shift * row_scale).expand(self.out_features, 1).flatten().float()
        self.register_buffer("shift", shift)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        if kernel == "onednn":
            packed = torch.cat([weight, weight], dim=1) if self.split else weight
            self.packed = torch.ops.onednn.qlinear_prepack(packed, None)
            self.register_buffer("zero_points", torch.zeros(weight.shape[0], dtype=torch.long, device=weight.device))
        else:
            self.register_buffer("row_sums", weight.int().sum(1))

    def input_codes(self, x: Tensor) -> Tensor:
        """The InputQuantizer's codes plus ``zero``: raw uint8 values as int32 (rounded in float32, as simulated)."""
        levels = 2**self.act_bits
        x = x.float()
        if self.zero == 0:
            q = torch.clamp(torch.round(torch.clamp(x, 0.0, self.high) / self.step), 0, levels - 1)
        else:
            bound = max(-self.low, self.high)
            q = torch.clamp(torch.round(torch.clamp(x, -bound, bound) / self.step), -levels // 2, levels // 2 - 1)
        return q.to(torch.int32) + self.zero

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        raw = self.input_codes(x.reshape(-1, shape[-1]))
        code_sums = (raw - self.zero).sum(1, keepdim=True).float() if self.shift is not None else None
        if self.kernel == "onednn":
            zero = self.zero
            if self.split:  # halves of at most 128: no int16 pair sum saturates; zero splits with them
                low = raw.clamp(max=128)
                raw, zero = torch.cat([low, raw - low], dim=1), zero // 2
            out = torch.ops.onednn.qlinear_pointwise(
                raw.to(torch.uint8), self.step, zero, self.packed, self.row_scales, self.zero_points,
                None, 1.0, 0, torch.float32, "none", [], "",
            )
        else:  # int8 inputs: raw − 128, and 128 − zero times each row's sum puts the zero point back
            acc = torch._int_mm((raw - 128).to(torch.int8), self.weight_int8.t()) + (128 - self.zero) * self.row_sums
            out = acc.float() * (self.step * self.row_scales)
        y = out[:, : self.out_features] + out[:, self.out_features :]
        if code_sums is not None:
            y = y + code_sums * self.step * self.shift
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)


def two_branch_model(model: nn.Module, kernel: str | None = None) -> nn.Module:
    """A copy whose PWLQ Linear layers run as :class:`TwoBranchLinear`; other layers stay as they are (simulated).

    Raises ValueError when no Linear holds PWLQ weights with an input quantizer
    (quantize with ``act_bits`` 8 or less: the integer GEMM needs int8 inputs).
    """
    integer = copy.deepcopy(model).eval()
    names = [
        name for name, m in integer.named_modules()
        if isinstance(m, nn.Linear) and getattr(getattr(m, "quantized_weight", None), "scheme", None) == "pwlq"
    ]
    if not names:
        raise ValueError("no Linear layer holds PWLQ weights: quantize with scheme pwlq first")
    for name in names:
        layer = integer.get_submodule(name)
        quantizer = getattr(layer, "input_quantizer", None)
        if quantizer is None:
            raise ValueError(
                f"layer {name} has no input quantizer: quantize with act_bits 2..8 (method.act_bits) for int8 inputs"
            )
        parent, _, child = name.rpartition(".")
        setattr(integer.get_submodule(parent), child, TwoBranchLinear(layer, layer.quantized_weight, quantizer, kernel))
    return integer
