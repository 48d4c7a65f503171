"""The options of LTP and its top-k baseline (``conf/method/ltp.yaml``, ``ltp_topk.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trimlab.config import at_least, positive
from trimlab.methods import MethodKind


@dataclass
class LTPConfig:
    """Learned token pruning (Kim et al. 2021), or its top-k baseline, trained from the dense checkpoint.

    Defaults are the reference code's (kssteven418/LTP README and training arguments).
    ``budget=tokens_X`` is the model's FLOPs ratio on the calibration examples; after
    the soft stage one shift of every threshold (or, for top-k, the final keep rate)
    is set by bisection to meet it.
    """

    name: str = "ltp"
    budgets: list[str] = field(default_factory=lambda: ["tokens"])
    """Budget kinds this method can take."""
    selector: str = "thresholds"
    """``thresholds`` (LTP) or ``topk`` (fixed per-layer keep rates, the paper's prior-work baseline)."""
    final_threshold: float = at_least(0, 0.01)
    """Threshold of the last layer at start; layer l starts at final_threshold · l / L (layer 0 never prunes)."""
    temperature: float = positive(1e-3)
    """T of the soft mask σ((score − θ) / T)."""
    lam: float = at_least(0, 0.1)
    """λ of the mask penalty in the soft stage (the reference suggests 0.01–0.2)."""
    soft_epochs: float = at_least(0, 1.0)
    """Stage 1 (soft masks, thresholds learn): 1 epoch for large sets, 10 for small ones in the reference."""
    hard_epochs: float = at_least(0, 5.0)
    """Stage 2 (binary masks, thresholds fixed, weights fine-tune); also the top-k baseline's training."""
    lr: float = positive(2e-5)
    """Weights' learning rate in stage 1."""
    threshold_lr: float = at_least(0, 2e-5)
    """Thresholds' learning rate (their own AdamW group, no weight decay)."""
    hard_lr: float = positive(1e-5)
    """Weights' learning rate in stage 2 (the reference searches 0.5, 1, 2 × 1e-5)."""
    score_length: int = at_least(1, 128)
    """Attention received is divided by heads × this (the reference's padded length), whatever the real padding."""
    calibration_examples: int = at_least(1, 256)
    """Training examples the budget bisection measures FLOPs on."""


KIND = MethodKind("ltp_schema", LTPConfig, "trimlab.methods.ltp.method:LTPMethod", composable=True)
