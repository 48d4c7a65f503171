"""Folding BatchNorm into the convolution before it, so the quantizer sees the weights the hardware would hold.

PWLQ (like every post-training scheme the paper compares) quantizes the
folded weights ``w · γ/√(σ² + ε)``: a channel's BN scale changes its range, so
quantizing before folding would put the grid in the wrong place. After
folding, the BatchNorm is left in place as an exact identity (γ = 1, β = 0,
μ = 0, σ² = 1 − ε) so modules that fuse BN with an activation (timm's
``BatchNormAct2d``) keep their activation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trimlab.models.placement import batch_for, statistics_dtype


def conv_batchnorm_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs where the BN is the next module after the conv and normalises its channels.

    The sequence is the leaf modules in registration order, which is execution
    order in the CNNs timm and torchvision build, with each BatchNorm as one
    module even when it has children (timm's ``BatchNormAct2d`` holds its
    activation and dropout); the caller checks the folded model's outputs.
    """
    sequence: list[nn.Module] = []
    inside_batchnorm: set[int] = set()
    for module in model.modules():
        if id(module) in inside_batchnorm:
            continue
        if isinstance(module, nn.BatchNorm2d):
            inside_batchnorm.update(id(child) for child in module.modules())
            sequence.append(module)
        elif not list(module.children()):
            sequence.append(module)
    return [
        (conv, bn)
        for conv, bn in zip(sequence, sequence[1:])
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
        and bn.track_running_stats and bn.running_var is not None
    ]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eligible BatchNorm into its convolution, in place; returns how many were folded."""
    pairs = conv_batchnorm_pairs(model)
    for conv, bn in pairs:
        dtype = statistics_dtype(conv.weight.dtype)  # a 16-bit model's scales in float32
        mean, var = bn.running_mean.to(dtype), bn.running_var.to(dtype)
        gamma = bn.weight.to(dtype) if bn.affine else torch.ones_like(var)
        beta = bn.bias.to(dtype) if bn.affine else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = conv.bias.to(dtype) if conv.bias is not None else torch.zeros_like(mean)
        conv.weight.copy_(conv.weight.to(dtype) * scale.reshape(-1, *([1] * (conv.weight.ndim - 1))))
        folded_bias = (bias - mean) * scale + beta
        conv.bias = nn.Parameter(folded_bias.to(conv.weight.dtype))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        if bn.affine:
            bn.weight.fill_(1.0)
            bn.bias.zero_()
    return len(pairs)


@torch.no_grad()
def folding_error(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Relative output change of folding on a copy of ``model`` whose BatchNorms get random statistics.

    Fresh statistics (μ = 0, σ² = 1) would hide a wrongly paired conv and BN,
    so each BN gets random ones first; a correct folding changes nothing.
    """
    probe = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(0)  # on the CPU: copy_ moves the statistics to the model's device
    for bn in (m for m in probe.modules() if isinstance(m, nn.BatchNorm2d) and m.running_var is not None):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=generator))
        bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=generator))
    inputs = batch_for(probe, inputs)
    before = probe(inputs).logits.float()
    fold_batchnorm(probe)
    after = probe(inputs).logits.float()
    return float((after - before).norm() / before.norm().clamp_min(1e-12))
