"""SaiT's options (``conf/method/sait.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trimlab.config import at_least, bounded, fraction, positive
from trimlab.methods import MethodKind


@dataclass
class SaiTConfig:
    """SaiT (Li, Thorsley, Hassoun 2022): one checkpoint trained on dense and sparse paths, token density chosen at run time.

    Trained from the dense checkpoint; the trained weights are cached without
    the run-time keys (``density``, ``eval_densities``, ``calibration_examples``),
    so a run at another density reuses them: evaluation only, no retraining.
    Where the paper leaves a choice open (no public code) the key documents ours.
    """

    name: str = "sait"
    budgets: list[str] = field(default_factory=lambda: ["flops", "tokens", "none"])
    """Budget kinds this method can take: ``flops`` or ``tokens`` (both: the FLOPs ratio ``density=budget`` meets),
    or ``none`` (with a fixed ``density``)."""
    density: str = "budget"
    """Run-time density of the returned model: ``dense`` (no pruning, the zero-drop option), a number
    (the attention mass to keep, or the share of patch tokens with ``mode=fixed``; needs budget=none),
    or ``budget`` (the density whose FLOPs ratio on calibration images meets ``budget.target``)."""
    mode: str = "adaptive"
    """``adaptive``: keep the tokens with the most class attention until their cumulative share reaches the density,
    so the kept count follows the image; ``fixed``: keep that share of the patch tokens of every image."""
    prune_layers: list[int] = field(default_factory=list)
    """Layers after whose attention tokens are pruned (0-based); empty = the layer at a quarter of the depth (L // 4)."""
    package: bool = True
    """Fuse the pruned tokens into one token, their mean weighted by importance, instead of discarding them."""
    epochs: float = positive(30.0)
    """Dense/sparse training epochs from the dense checkpoint (each step trains both paths)."""
    lr: float = positive(5e-4)
    weight_decay: float = at_least(0, 0.05)
    warmup_ratio: float = fraction(0.05)
    label_smoothing: float = fraction(0.1, high_open=True)
    train_densities: list[float] = bounded([0.5, 0.95], 0, 1, low_open=True)
    """[low, high]: each training step's sparse path uses a density drawn uniformly from this range."""
    distill_weight: float = fraction(0.5)
    """α: the sparse path's loss is (1 − α) · task loss + α · T² · KL(teacher ‖ sparse) on logits."""
    distill_temperature: float = positive(1.0)
    """T of the logit distillation."""
    selection_distill_weight: float = at_least(0, 1.0)
    """Weight of KL(teacher's last-layer class attention ‖ class attention at the first pruning layer): teaches
    the early layer to select the tokens the deep model finds important (0 = off)."""
    teacher: str = "self"
    """``self``: the dense path of the model being trained (detached) is the teacher; or a path to a
    state-dict checkpoint of the same model (e.g. a cached dense checkpoint), frozen."""
    calibration_examples: int = at_least(1, 256)
    """Training images the ``density=budget`` bisection measures FLOPs on."""
    eval_densities: list[str] = field(default_factory=lambda: ["dense", "0.9", "0.8", "0.7", "0.6", "0.5"])
    """Densities the trained checkpoint is evaluated at (accuracy, FLOPs, throughput) for the record and the curve."""


KIND = MethodKind("sait_schema", SaiTConfig, "trimlab.methods.sait.method:SaiTMethod")
