"""The options of a pipeline of methods (``conf/method/fisher_ltp.yaml`` and the like)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from trimlab.methods import MethodKind, method_label


@dataclass
class PipelineConfig:
    """Methods applied one after another in one run under one budget (``trimlab.methods.pipeline``).

    Consecutive post-training steps share one validate run; a training step (LTP)
    runs its own fits. The pruning steps share the run's budget (see ``split``);
    quantizers carry their ``bits``. Each step's keys are those of its own method.
    """

    name: str = MISSING
    budgets: list[str] = field(default_factory=list)
    """Budget kinds the pipeline can take."""
    steps: dict[str, Any] = field(default_factory=dict)
    """Step name → that method's config, in the order they run, e.g. ``prune`` (fisher_prune), ``tokens`` (ltp), ``quantize`` (pwlq)."""
    split: float = 0.5
    """With two pruning steps: the first gets ``target ** split`` of the FLOPs, the second the rest
    (re-measured after the first), so the product meets the run's flops budget."""


def pipeline_label(cfg: Any) -> str:
    """The pipeline's name plus its steps' tags (``fisher_prune_pwlq+obc``): an addition in a step shows in the run's name."""
    tags = [method_label(step).removeprefix(str(step.name)) for step in cfg.steps.values()]
    return str(cfg.name) + "".join(tags)


KIND = MethodKind("pipeline_schema", PipelineConfig, "trimlab.methods.pipeline.method:PipelineMethod", label=pipeline_label)
