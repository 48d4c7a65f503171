"""Fisher pruning's options (``conf/method/fisher_prune.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trimlab.config import at_least, positive
from trimlab.methods import MethodKind


@dataclass
class FisherPruneConfig:
    """Post-training pruning of heads and FFN neurons (Kwon et al. 2022), no retraining.

    The sample set is ``dataset.sample_size`` training examples (2048 by default).
    """

    name: str = "fisher_prune"
    budgets: list[str] = field(default_factory=lambda: ["flops", "latency"])
    """Budget kinds this method can take."""
    batch_size: int = at_least(1, 32)
    """Sample-set mini-batch: one Fisher gradient per batch (the paper's 32)."""
    rearrange: bool = True
    """Stage 2: re-choose units within each layer with the block-diagonal Fisher."""
    tune: bool = True
    """Stage 3: least-squares mask tuning against a milder-pruned teacher, folded into the weights."""
    teacher_steps: int = at_least(1, 2)
    """Teacher of mask tuning = the first step of this many geometric steps to the target (1 = the dense model)."""
    damping: float = at_least(0, 1.0)
    """LSMR damping of mask tuning (the paper's 1)."""
    max_scale: float = positive(10.0)
    """Tuning stops at the first layer with a scale beyond ±max_scale (the paper's safeguard)."""
    lut_batch_size: int = at_least(1, 32)
    """Input batch the latency look-up table is timed at (latency budgets)."""
    lut_ffn_points: int = at_least(1, 24)
    """FFN widths timed for the latency table (evenly spaced up to the full width)."""


KIND = MethodKind("fisher_prune_schema", FisherPruneConfig, "trimlab.methods.fisher_prune.callback:FisherPruneMethod", composable=True)
