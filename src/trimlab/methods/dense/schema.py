"""The no-compression method's options."""

from __future__ import annotations

from dataclasses import dataclass, field

from trimlab.methods import MethodKind


@dataclass
class DenseMethodConfig:
    """No compression: evaluate and measure the dense (fine-tuned) model."""

    name: str = "dense"
    budgets: list[str] = field(default_factory=lambda: ["none"])
    """Budget kinds this method can take."""


KIND = MethodKind("dense_schema", DenseMethodConfig, "trimlab.methods.dense.method:DenseMethod")
