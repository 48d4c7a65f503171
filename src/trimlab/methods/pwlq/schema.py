"""The options of PWLQ and its uniform baseline (``conf/method/pwlq.yaml``, ``uniform_ptq.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trimlab.config import at_least, bounded
from trimlab.methods import MethodKind


@dataclass
class QuantizeConfig:
    """Post-training quantization of every Conv2d and Linear (Fang et al. 2020): PWLQ or the uniform baseline.

    ``budget=bits_N`` sets the weight bits. The calibration set is ``dataset.sample_size`` examples.
    """

    name: str = "pwlq"
    budgets: list[str] = field(default_factory=lambda: ["bits"])
    """Budget kinds this method can take."""
    scheme: str = "pwlq"
    """``pwlq`` (piecewise linear, searched breakpoint) or ``uniform``."""
    bits: int = bounded(0, 0, 16)
    """Weight bits; 0 = the budget's (``budget=bits_N``). Set it when quantization follows another
    method that takes the run's budget (``method=fisher_prune_pwlq``)."""
    fold_batchnorm: bool = True
    """Fold each BatchNorm into the convolution before it, then quantize the folded weights (the paper's setting)."""
    per_channel: bool = True
    """One range (and breakpoint) per output channel; false: one per tensor."""
    symmetric: bool = True
    """Uniform scheme only: symmetric [−m, m] grid; false: asymmetric [min, max]."""
    bias_correction: bool = True
    """Restore each channel's weight mean and std after quantization."""
    output_bias_correction: bool = True
    """Shift each layer's bias by the mean output change of its weight quantization on the calibration set."""
    act_bits: int = bounded(0, 0, 16)
    """Bits of every quantized layer's input activations (0 = full precision)."""
    first_last_bits: int = bounded(0, 0, 16)
    """Bits of the first and last quantized layers; 0 = the same bits as every other layer (the paper's code)."""
    top_k: int = at_least(1, 10)
    """Activation range = mean over calibration batches of the median of each batch's top_k largest / smallest values."""
    calib_batch_size: int = at_least(1, 4)
    """Calibration mini-batch (the paper's code: 4; the range statistics are per batch)."""


KIND = MethodKind("quantize_schema", QuantizeConfig, "trimlab.methods.pwlq.callback:QuantizeMethod", composable=True)
