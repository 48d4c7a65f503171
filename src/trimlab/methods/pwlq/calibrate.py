"""Activation ranges from calibration batches, and the fake quantizers that use them (Fang et al. 2020, §5).

The input range of each quantized layer is robust to outliers: per calibration
batch, the median of its ``top_k`` largest (and smallest) input values, averaged
over the batches, as the paper's code does with its 10 extreme values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from trimlab.models.placement import batch_for, statistics_dtype


@dataclass
class RangeObserver:
    """Per calibration batch, the medians of its ``top_k`` largest and smallest values; the range is their mean over batches.

    This is the paper's estimator (its code's ``top_10`` clip method): robust to
    the rare outliers a global maximum would chase, so the 8-bit steps stay fine.
    """

    top_k: int = 10
    highs: list[float] = field(default_factory=list)
    lows: list[float] = field(default_factory=list)

    def observe(self, x: Tensor) -> None:
        flat = x.detach().flatten().to(statistics_dtype(x.dtype))
        k = min(self.top_k, flat.numel())
        self.highs.append(float(flat.topk(k).values.median()))
        self.lows.append(float(flat.topk(k, largest=False).values.median()))

    def range(self) -> tuple[float, float]:
        return sum(self.lows) / len(self.lows), sum(self.highs) / len(self.highs)


class NonFiniteActivations(RuntimeError):
    """A calibration input holds NaN or inf: its range, and every value quantized over it, would be NaN."""


@torch.no_grad()
def observe_inputs(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Iterable[Mapping[str, Tensor]],
    observe: Callable[[str, Tensor], None],
) -> None:
    """Run the batches (labels dropped) in eval mode, handing each named layer's input to ``observe``.

    A non-finite input stops calibration with :class:`NonFiniteActivations` naming the first layer that saw it.
    """

    def checked(name: str, x: Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteActivations(
                f"the input of layer {name} holds NaN or inf values on the calibration batches: the model itself "
                "computes them (check its weights, e.g. a diverged fine-tune: finetune.lr) or the data does"
            )
        observe(name, x)

    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: checked(n, args[0])) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch_for(model, {k: v for k, v in batch.items() if k != "labels"}))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


@torch.no_grad()
def mean_inputs(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Each named layer's mean input per input feature (Linear) or input channel (Conv2d) over the batches."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def observe(name: str, x: Tensor) -> None:
        x = x.detach().to(statistics_dtype(x.dtype))
        feature_dim = 1 if x.ndim == 4 else x.ndim - 1  # channels of a conv input, features of a linear one
        other = [d for d in range(x.ndim) if d != feature_dim]
        sums[name] = sums.get(name, 0) + x.sum(dim=other)
        counts[name] = counts.get(name, 0) + x.numel() // x.shape[feature_dim]

    observe_inputs(model, layers, batches, observe)
    return {name: sums[name] / counts[name] for name in sums}


def correct_output_bias(layer: nn.Module, full_precision_weight: Tensor, mean_input: Tensor) -> None:
    """Shift ``layer``'s bias by the mean output change its weight quantization causes on the calibration inputs.

    Exact for Linear; for Conv2d it treats every position as interior (padding at the borders is ignored).
    """
    delta = full_precision_weight.to(mean_input.dtype) - layer.weight.data.to(mean_input.dtype)
    if delta.ndim == 4:
        delta = delta.sum(dim=(2, 3))
    groups = getattr(layer, "groups", 1)  # grouped / depthwise: each output channel sees its own group of inputs
    inputs_per_output = mean_input.view(groups, -1).repeat_interleave(delta.shape[0] // groups, dim=0)
    shift = (delta * inputs_per_output).sum(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(delta.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.data += shift.to(layer.bias.dtype)


def fake_quantize(x: Tensor, low: float, high: float, bits: int) -> Tensor:
    """Uniform fake quantization of ``x`` to ``bits`` bits over its calibrated range, as the paper's code does.

    A range that never goes below zero (after a ReLU) gets the unsigned grid
    [0, high]; any other the signed symmetric grid [−m, m], m = max(−low, high),
    with codes −2^(b−1) … 2^(b−1) − 1. Both have 2^b levels, step (max − min) / (2^b − 1),
    and zero exact (the reference code's ``QuantAct`` with ``uniform_symmetric_quantizer``).
    A 16-bit ``x`` is rounded in float32, and the result returned in its dtype.
    After the first clamp every step works in place: the same operations in the same order, without a new
    activation-sized tensor per step (the allocations cost as much as the arithmetic on a CNN's large inputs).
    """
    levels, dtype = 2**bits, x.dtype
    x = x.to(statistics_dtype(dtype))
    if low >= 0:
        step = max(high, 1e-12) / (levels - 1)
        codes = torch.clamp(x, 0.0, high).div_(step).round_().clamp_(0, levels - 1)
    else:
        bound = max(-low, high)
        step = 2 * bound / (levels - 1)
        codes = torch.clamp(x, -bound, bound).div_(step).round_().clamp_(-levels // 2, levels // 2 - 1)
    return codes.mul_(step).to(dtype)


@torch.no_grad()
def calibrate_ranges(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Mapping[str, Tensor]], top_k: int = 10
) -> dict[str, tuple[float, float]]:
    """The input range of each named layer over the calibration batches (labels, if any, are not used)."""
    observers = {name: RangeObserver(top_k) for name in layers}
    observe_inputs(model, layers, batches, lambda name, x: observers[name].observe(x))
    return {name: obs.range() for name, obs in observers.items()}


@dataclass(frozen=True)
class InputQuantizer:
    """A forward pre-hook that fake-quantizes a layer's input to ``bits`` bits over its calibrated range."""

    low: float
    high: float
    bits: int

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (fake_quantize(args[0], self.low, self.high, self.bits), *args[1:])


def install_input_quantizer(layer: nn.Module, quantizer: InputQuantizer) -> RemovableHandle:
    """Hook ``quantizer`` on ``layer`` and keep it as ``layer.input_quantizer``, where a saved model finds it."""
    layer.input_quantizer = quantizer
    return layer.register_forward_pre_hook(quantizer)


def install_activation_quantizers(
    layers: Mapping[str, nn.Module], ranges: Mapping[str, tuple[float, float]], bits: int
) -> list[RemovableHandle]:
    """Fake-quantize every named layer's input to ``bits`` bits over its calibrated range."""
    return [install_input_quantizer(m, InputQuantizer(*ranges[name], bits)) for name, m in layers.items()]
