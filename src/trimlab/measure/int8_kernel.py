"""What 8-bit weights buy on this CPU: the quantized Linear layers through PyTorch's own int8 kernels.

trimlab's quantizers simulate quantization (their weights are the dequantized
floats, their inputs fake-quantized), which gives the accuracy of the
quantized model but not its speed. Where the weights are 8-bit and mostly in
Linear layers, :func:`int8_kernel_model` builds a copy whose
8-bit Linear layers run PyTorch's dynamic int8 kernels (int8 weights per
output channel, each input quantized to 8 bits over its own range as it
arrives), so a run can time the integer path beside the simulated one.
Its numbers differ slightly from the simulated model's (dynamic, not
calibrated, input ranges; weights re-rounded to 8 bits).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from trimlab.methods.pwlq.calibrate import InputQuantizer


def int8_kernel_model(model: nn.Module) -> nn.Module | None:
    """A copy running int8 kernels in place of the simulated 8-bit Linear layers; None where that says nothing.

    None unless the weights are quantized to 8 bits and Linear layers hold
    most of them (a Transformer; a CNN's convolutions have no dynamic int8
    kernel, and 4-bit weights no kernel of their own here). Other quantized
    layers (a ViT's patch convolution) stay simulated in the copy.
    """
    quantized = {name: m for name, m in model.named_modules() if getattr(m, "quantized_weight", None) is not None}
    linear = {name: m for name, m in quantized.items() if isinstance(m, nn.Linear)}
    linear_share = sum(m.weight.numel() for m in linear.values()) / max(1, sum(m.weight.numel() for m in quantized.values()))
    if not linear or linear_share <= 0.5 or any(m.quantized_weight.bits != 8 for m in quantized.values()):
        return None
    kernel = copy.deepcopy(model).eval()
    for name in linear:
        layer = kernel.get_submodule(name)
        for key, hook in list(layer._forward_pre_hooks.items()):  # the kernel quantizes its inputs itself
            if isinstance(hook, InputQuantizer):
                del layer._forward_pre_hooks[key]
    with warnings.catch_warnings():  # torch.ao.quantization warns that it will move to torchao; its kernels are what a CPU has today
        warnings.simplefilter("ignore")
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        return torch.ao.quantization.quantize_dynamic(kernel, {name: qconfig for name in linear}, dtype=torch.qint8)
