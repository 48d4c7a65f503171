"""Activation ranges from calibration batches, and the fake quantizers that use them (Fang et al. 2020, §5).

The input range of each quantized layer is robust to outliers: the median of
the ``top_k`` largest (and of the ``top_k`` smallest) input values seen over
all calibration batches, as the paper does with its 10 extreme values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@dataclass
class RangeObserver:
    """Keeps the ``top_k`` largest and smallest values seen; the range is their medians."""

    top_k: int = 10
    largest: Tensor = field(default_factory=lambda: torch.empty(0))
    smallest: Tensor = field(default_factory=lambda: torch.empty(0))

    def observe(self, x: Tensor) -> None:
        flat = x.detach().flatten().float()
        k = min(self.top_k, flat.numel())
        self.largest = torch.cat([self.largest, flat.topk(k).values]).topk(min(self.top_k, len(self.largest) + k)).values
        self.smallest = -torch.cat([-self.smallest, (-flat).topk(k).values]).topk(min(self.top_k, len(self.smallest) + k)).values

    def range(self) -> tuple[float, float]:
        return float(self.smallest.median()), float(self.largest.median())


@torch.no_grad()
def observe_inputs(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Iterable[Mapping[str, Tensor]],
    observe: Callable[[str, Tensor], None],
) -> None:
    """Run the batches (labels dropped) in eval mode, handing each named layer's input to ``observe``."""
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: observe(n, args[0])) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model({k: v for k, v in batch.items() if k != "labels"})
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
        flat = x.detach().float().movedim(1, -1) if x.ndim == 4 else x.detach().float()  # channels last for convs
        flat = flat.reshape(-1, flat.shape[-1])
        sums[name] = sums.get(name, 0) + flat.sum(0)
        counts[name] = counts.get(name, 0) + len(flat)

    observe_inputs(model, layers, batches, observe)
    return {name: sums[name] / counts[name] for name in sums}


def correct_output_bias(layer: nn.Module, full_precision_weight: Tensor, mean_input: Tensor) -> None:
    """Shift ``layer``'s bias by the mean output change its weight quantization causes on the calibration inputs.

    Exact for Linear; for Conv2d it treats every position as interior (padding at the borders is ignored).
    """
    delta = (full_precision_weight - layer.weight.data).float()
    if delta.ndim == 4:
        delta = delta.sum(dim=(2, 3))
    groups = getattr(layer, "groups", 1)  # grouped / depthwise: each output channel sees its own group of inputs
    inputs_per_output = mean_input.view(groups, -1).repeat_interleave(delta.shape[0] // groups, dim=0)
    shift = (delta * inputs_per_output).sum(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(delta.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.data += shift.to(layer.bias.dtype)


def fake_quantize(x: Tensor, low: float, high: float, bits: int) -> Tensor:
    """Asymmetric uniform fake quantization of ``x`` to ``bits`` bits over [low, high]."""
    low, high = min(low, 0.0), max(high, 0.0)  # zero stays exactly representable (padding, ReLU outputs)
    step = max(high - low, 1e-12) / (2**bits - 1)
    zero = round(-low / step)
    return (torch.clamp(torch.round(x / step) + zero, 0, 2**bits - 1) - zero) * step


@torch.no_grad()
def calibrate_ranges(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Mapping[str, Tensor]], top_k: int = 10
) -> dict[str, tuple[float, float]]:
    """The input range of each named layer over the calibration batches (labels, if any, are not used)."""
    observers = {name: RangeObserver(top_k) for name in layers}
    observe_inputs(model, layers, batches, lambda name, x: observers[name].observe(x))
    return {name: obs.range() for name, obs in observers.items()}


def install_activation_quantizers(
    layers: Mapping[str, nn.Module], ranges: Mapping[str, tuple[float, float]], bits: int
) -> list[RemovableHandle]:
    """Fake-quantize every named layer's input to ``bits`` bits over its calibrated range."""
    return [
        m.register_forward_pre_hook(lambda mod, args, r=ranges[name]: (fake_quantize(args[0], *r, bits), *args[1:]))
        for name, m in layers.items()
    ]
