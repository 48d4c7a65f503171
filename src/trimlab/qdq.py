"""A quantized model's Linear layers as QuantizeLinear/DequantizeLinear (QDQ) pairs, so ONNX Runtime runs integer MatMuls.

trimlab's quantizers simulate quantization in float. An ONNX graph of that
simulation runs at float speed; a QDQ graph instead says which tensors are
8-bit integers with which scales, and ONNX Runtime fuses each
``DQ(input) · DQ(weight)`` into an integer matrix multiply (``MatMulIntegerToFloat``).
The scales are trimlab's own, so the graph computes what the simulated model does:

- input: per tensor, from the layer's calibrated range (``InputQuantizer``). A range
  that never goes below zero is uint8, scale ``high / 255``, zero point 0; any other
  is int8, scale ``2 m / 255`` with ``m = max(−low, high)``, zero point 0 (symmetric).
  This is :func:`~trimlab.methods.pwlq.calibrate.fake_quantize`'s grid at 8 bits.
- weight: uint8 per output channel: the layer's uniform symmetric codes as trimlab
  stores them, zero point ``2^(bits−1)`` (so the value is ``(code − 2^(bits−1)) · step``),
  scale = the codes' step. The file's integer weights are trimlab's codes, not a
  re-rounding of float weights. Unsigned, not int8: on x86 CPUs without VNNI,
  ONNX Runtime's uint8 × int8 kernel adds pairs of products in 16 bits, which
  saturate (logits off by 20% on a small test model); its uint8 × uint8 kernel does not.
  ``signed=True`` writes the same codes as int8, zero point 0: on a CPU with VNNI
  (AVX-512 VNNI, AVX-VNNI) or on ARM, ONNX Runtime's uint8 × int8 kernel is exact
  and 1.7–1.9x faster than uint8 × uint8 (a 2-core EPYC with AVX-512 VNNI, MiniLM-L6
  W8A8, identical logits); without VNNI it saturates.
- PWLQ weights (at most 8 bits) have no single-scale form; they become the two
  integer branches of :mod:`trimlab.methods.pwlq.integer` (the paper's §3.4
  hardware form): the centre and tail matrices stacked into one ``[in, 2·out]``
  uint8 weight (zero point 128), each column with its branch's scale, one
  integer MatMul, then the two halves added. Twice a uniform layer's integer work.

Only Linear layers become QDQ; a quantized Conv2d (a CNN, a ViT's patch embedding)
stays simulated in float. :func:`qdq_refusal` refuses what has no exact int8 form.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from trimlab.methods.pwlq.calibrate import InputQuantizer
from trimlab.methods.pwlq.integer import branch_matrices
from trimlab.methods.pwlq.quantizer import QuantizedWeight

CODES_SUFFIX = ".codes"
"""Appended to a weight's name for its integer initializer (its codes) in the written graph."""


def quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers of ``model`` that carry quantized weights, by module name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and getattr(m, "quantized_weight", None) is not None
    }


def qdq_refusal(model: nn.Module) -> str | None:
    """Why ``model``'s quantized Linear layers have no exact QDQ form (one line), or None when they all have one."""
    for name, layer in quantized_linears(model).items():
        q: QuantizedWeight = layer.quantized_weight
        act: InputQuantizer | None = getattr(layer, "input_quantizer", None)
        if q.scheme not in ("uniform", "pwlq"):
            return f"layer {name} holds {q.scheme} codes: a QDQ graph takes uniform or PWLQ int8 weights"
        if q.bits > 8:
            return (
                f"layer {name} has {q.bits}-bit weights: int8 holds at most 8 "
                "(quantize with bits ≤ 8, and method.first_last_bits ≤ 8)"
            )
        if "zero" in q.params:
            return (
                f"layer {name} has asymmetric weights: the QDQ export writes symmetric int8 weights (method.symmetric=true)"
            )
        if "shift" in q.params:
            return (
                f"layer {name} is bias-corrected: its weights are no longer integer multiples of one step "
                "(method.bias_correction=false)"
            )
        if act is None or act.bits != 8:
            bits = "full-precision" if act is None else f"{act.bits}-bit"
            return (
                f"layer {name} has {bits} inputs: integer MatMuls need inputs quantized to 8 bits (method.act_bits=8)"
            )
    return None


def input_grid(act: InputQuantizer) -> tuple[float, int, int, int]:
    """Scale, zero point and integer range of the 8-bit grid ``act`` fake-quantizes its input to."""
    levels = 2**act.bits - 1
    if act.low >= 0:
        return max(act.high, 1e-12) / levels, 0, 0, levels
    bound = max(-act.low, act.high)
    return 2 * bound / levels, 0, -(2 ** (act.bits - 1)), 2 ** (act.bits - 1) - 1


def weight_codes(q: QuantizedWeight) -> Tensor:
    """The uniform symmetric codes of ``q`` as uint8 ``[out, in]``, zero point ``2^(bits−1)``."""
    return q.codes.reshape(q.shape[0], -1).to(torch.uint8)


def integer_weight(q: QuantizedWeight, signed: bool = False) -> tuple[Tensor, Tensor, int]:
    """``q`` as uint8 codes ``[rows, in]`` (int8 with ``signed``, zero point 0), one scale per row and their zero point.

    Uniform: its codes, ``out`` rows. PWLQ: the centre and the tail branch
    stacked, ``2·out`` rows, codes shifted by the zero point 128.
    """
    if q.scheme == "pwlq":
        centre, tails, centre_scale, tail_scale = branch_matrices(q)
        codes, scale, zero = torch.cat([centre, tails]).to(torch.int16) + 128, torch.cat([centre_scale, tail_scale]), 128
    else:
        codes, zero = weight_codes(q).to(torch.int16), 2 ** (q.bits - 1)
        scale = q.params["step"].reshape(-1).float().expand(codes.shape[0]).contiguous()
    if signed:
        return (codes - zero).to(torch.int8), scale, 0
    return codes.to(torch.uint8), scale, zero


class QdqLinear(nn.Module):
    """A quantized Linear whose trace is QuantizeLinear/DequantizeLinear on its input and its (transposed) weight.

    The weight is kept transposed (``[in, out]``, scales along axis 1) so the
    DequantizeLinear feeds the MatMul directly, the pattern ONNX Runtime fuses.
    A 2-D input (a pooler, a classifier) is multiplied as a batch of one: ONNX
    Runtime turns a 2-D MatMul and its bias Add into a Gemm, whose integer form
    needs a quantized output, so it would stay in float. A PWLQ layer's MatMul
    gives both branches side by side; their halves are added.
    """

    def __init__(self, layer: nn.Linear, signed: bool = False) -> None:
        super().__init__()
        codes, step, zero = integer_weight(layer.quantized_weight, signed)
        self.out_features = layer.out_features
        self.weight_min, self.weight_max = (-128, 127) if signed else (0, 255)
        self.codes_t = codes.T.contiguous()
        self.weight_t = nn.Parameter((self.codes_t.float() - zero) * step, requires_grad=False)
        self.register_buffer("weight_scale", step)
        self.register_buffer("weight_zero", torch.full((codes.shape[0],), zero, dtype=torch.int32, device=codes.device))
        self.bias = layer.bias
        self.input_scale, self.input_zero, self.input_min, self.input_max = input_grid(layer.input_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.ndim == 2
        x = x.unsqueeze(0) if flat else x
        x = torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero, self.input_min, self.input_max)
        w = torch.fake_quantize_per_channel_affine(self.weight_t, self.weight_scale, self.weight_zero, 1, self.weight_min, self.weight_max)
        y = torch.matmul(x, w)
        if y.shape[-1] != self.out_features:  # PWLQ: centre and tail branch
            y = y[..., : self.out_features] + y[..., self.out_features :]
        y = y if self.bias is None else y + self.bias
        return y.squeeze(0) if flat else y


def qdq_model(model: nn.Module, signed: bool = False) -> tuple[nn.Module, dict[str, Tensor]]:
    """A copy of ``model`` with its quantized Linear layers as :class:`QdqLinear`, and their codes ``[in, out]`` by module name.

    ``signed``: int8 weight codes (the fast kernel on CPUs with VNNI), not uint8.

    Call :func:`qdq_refusal` first: this assumes every quantized Linear has an exact QDQ form.
    """
    copied = copy.deepcopy(model).eval()
    codes: dict[str, Tensor] = {}
    for name, layer in quantized_linears(copied).items():
        qdq = QdqLinear(layer, signed)
        copied.set_submodule(name, qdq)
        codes[name] = qdq.codes_t
    return copied, codes


def store_integer_weights(path: Path, codes: Mapping[str, Tensor]) -> None:
    """Replace each traced weight ``QuantizeLinear`` in the ONNX file by its integer initializer (trimlab's codes).

    ``codes`` maps each weight's initializer name (``<module>.weight_t``) to its
    codes; the DequantizeLinear that followed the QuantizeLinear now reads them.
    """
    import onnx
    from onnx import numpy_helper

    graph_path = str(path)
    model = onnx.load(graph_path)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    missing = [name for name in codes if name not in initializers]
    if missing:
        raise RuntimeError(f"the traced graph has no initializer {missing[0]}; cannot store its int8 weights")
    replaced: dict[str, str] = {}
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in codes]:
        codes_name = node.input[0] + CODES_SUFFIX
        if codes_name not in replaced.values():
            graph.initializer.append(numpy_helper.from_array(codes[node.input[0]].numpy(), codes_name))
        replaced[node.output[0]] = codes_name
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replaced:
                node.input[i] = replaced[name]
    used = {name for n in graph.node for name in n.input}
    for name in codes:
        if name not in used:
            graph.initializer.remove(initializers[name])
    onnx.checker.check_model(model)
    onnx.save(model, graph_path)
