"""Parameter count and storage size, the memory side of a compression result."""

from __future__ import annotations

import math

from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once); structural pruning lowers it, masking does not."""
    return sum(p.numel() for p in model.parameters())


def model_size_bytes(model: nn.Module, weight_bits: int = 32) -> int:
    """Bytes to store the parameters with Linear/Conv weights at ``weight_bits`` and the rest in float32.

    Quantization methods quantize exactly those weights; biases, norms and
    embeddings stay in full precision. Quantizer metadata (scales,
    breakpoints) is not included.
    """
    quantized = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    }
    bits = sum(p.numel() * (weight_bits if id(p) in quantized else 32) for p in model.parameters())
    return math.ceil(bits / 8)
