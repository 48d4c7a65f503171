"""The options of PWLQ and its uniform baseline (``conf/method/pwlq.yaml``, ``uniform_ptq.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trimlab.config import at_least, bounded
from trimlab.methods import MethodKind

BREAKPOINTS = ("gaussian", "laplace", "search")


@dataclass
class QuantizeConfig:
    """Post-training quantization of every Conv2d and Linear (Fang et al. 2020): PWLQ or the uniform baseline.

    The defaults are the paper's (its Eq. 1 and 3, one breakpoint from its Gaussian rule) and, where
    the paper is silent, its authors' code (``jun-fang/PWLQ``: ``main.py`` and ``eval.sh``).
    trimlab's additions are off by default and, when on, join the method's name
    (:func:`method_label`: ``pwlq+obc``, ``pwlq+search``), so records and tables tell them apart.
    ``budget=bits_N`` sets the weight bits. The calibration set is ``dataset.sample_size`` examples.
    """

    name: str = "pwlq"
    budgets: list[str] = field(default_factory=lambda: ["bits"])
    """Budget kinds this method can take."""
    scheme: str = "pwlq"
    """``pwlq`` (piecewise linear, the paper's Eq. 3) or ``uniform`` (the paper's Eq. 1: 2^b levels
    ``k · 2m/(2^b − 1)``, k in [−2^(b−1), 2^(b−1) − 1], zero exact)."""
    breakpoint: str = "gaussian"
    """PWLQ's breakpoint per row: ``gaussian`` (the paper's closed form p/σ = ln(0.8614 · m/σ + 0.6079), the
    authors' ``eval.sh``: ``-bkp norm -appx t``), ``laplace`` (its Laplace closed form), or ``search``
    (trimlab's: the least-MSE of 200 evenly spaced p/m in (0, 1); named ``+search``)."""
    bits: int = bounded(0, 0, 16)
    """Weight bits; 0 = the budget's (``budget=bits_N``). Set it when quantization follows another
    method that takes the run's budget (``method=fisher_prune_pwlq``)."""
    fold_batchnorm: bool = True
    """Fold each BatchNorm into the convolution before it, then quantize the folded weights (the paper's setting)."""
    per_channel: bool = True
    """One range (and breakpoint) per output channel (the paper's Table 2); false: one per tensor (its Table 3)."""
    symmetric: bool = True
    """Uniform scheme only: the paper's symmetric grid; false: asymmetric over [min, max] (Eq. 1 with z = r_l; named ``+asym``)."""
    bias_correction: bool = False
    """The paper's bias correction (its Table 2 "+BC" columns): restore each channel's weight mean and std after
    quantization. Off by default, as in the authors' ``main.py`` (``-bc`` defaults to false)."""
    output_bias_correction: bool = False
    """trimlab's addition, not in the paper or its code: shift each layer's bias by the mean output change of its
    weight quantization on the calibration set. Named ``+obc``."""
    act_bits: int = bounded(0, 0, 16)
    """Bits of every quantized layer's input activations (0 = full precision, the authors' ``main.py`` default;
    the paper's tables use 8)."""
    first_last_bits: int = bounded(0, 0, 16)
    """Bits of the first and last quantized layers; 0 = the same bits as every other layer (the paper's code).
    Named ``+fl<N>``."""
    top_k: int = at_least(1, 10)
    """Activation range = mean over calibration batches of the median of each batch's top_k largest / smallest values."""
    calib_batch_size: int = at_least(1, 4)
    """Calibration mini-batch (the paper's code: 4; the range statistics are per batch)."""


def method_label(cfg: Any) -> str:
    """The method's name plus one ``+tag`` per setting that departs from the paper, e.g. ``pwlq+obc``."""
    tags = []
    if cfg.scheme == "pwlq" and cfg.breakpoint != "gaussian":
        tags.append(cfg.breakpoint)
    if cfg.scheme == "uniform" and not cfg.symmetric:
        tags.append("asym")
    if cfg.output_bias_correction:
        tags.append("obc")
    if cfg.first_last_bits:
        tags.append(f"fl{cfg.first_last_bits}")
    return "+".join([str(cfg.name), *tags])


KIND = MethodKind(
    "quantize_schema", QuantizeConfig, "trimlab.methods.pwlq.callback:QuantizeMethod", composable=True, label=method_label
)
