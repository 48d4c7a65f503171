"""MaiT's options (``conf/method/mait.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trimlab.config import bounded
from trimlab.methods import MethodKind


@dataclass
class MaiTConfig:
    """MaiT (Li, Shafiee Ardestani, Hassoun 2022): chosen heads attend only to a window of patches, the rest globally.

    Trained with the dense model's own recipe (the ``finetune`` group: epochs, lr, …),
    so masked and unmasked models differ only in their masks. In a masked head a
    class token attends to every token, a patch to its window only (paper §4, §5.2).
    """

    name: str = "mait"
    budgets: list[str] = field(default_factory=lambda: ["none"])
    """Budget kinds this method can take (masks change accuracy, not the cost)."""
    window: list[int] = bounded([3, 3], 1)
    """Neighbourhood [rows, cols] of patches a masked head sees around each patch (odd; the paper's default 3×3)."""
    masked_heads: list[int] = field(default_factory=list)
    """Masked heads (the first ones; the last ones stay global) per layer; empty = the paper's placement
    (§5.3, Fig. 3b): every head in the first third of the layers, one head in the middle third, none in the
    last third. The paper's 12-layer ablation (Table 2) masks one head in every layer: ``[1, 1, ...]``."""
    mask_form: str = "multiplicative"
    """How a masked head's mask meets its logits. ``multiplicative``: the paper's Eq. 2,
    softmax((M ⊙ QKᵀ)/√d): a logit outside the window becomes 0, so those keys keep a
    small weight; ``additive``: -inf outside the window, exactly zero weight there (a
    hard window; not the paper's form: the run's method name becomes ``mait+additive``)."""
    init: str = "scratch"
    """``scratch``: retrain from random weights like the dense model (``model.weights=scratch``);
    ``dense``: fine-tune the dense checkpoint with the masks installed (hub ViTs)."""


def method_label(cfg: Any) -> str:
    """``mait``, or ``mait+additive`` for the mask form the paper does not use."""
    return str(cfg.name) if cfg.mask_form == "multiplicative" else f"{cfg.name}+{cfg.mask_form}"


KIND = MethodKind("mait_schema", MaiTConfig, "trimlab.methods.mait.method:MaiTMethod", label=method_label)
