"""Post-training methods composed: their callbacks, in order, in one validate run.

Quantizing a Fisher-pruned model is ``FisherPruning`` then
``PostTrainingQuantization`` on the same trainer; this method builds that
list from ``method.steps`` (step name → that method's config). The first step
takes the run's budget; later steps carry their own setting (e.g. ``bits``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from trimlab.config import ConfigError
from trimlab.methods import MethodContext, MethodResult
from trimlab.methods.post_training import PostTrainingMethod, validate_with


class PipelineMethod:
    """Runs the steps' callbacks in one validate run; records each step's numbers under ``<step>/``."""

    def __init__(self, cfg: DictConfig, steps: dict[str, PostTrainingMethod]) -> None:
        self.cfg = cfg
        self.steps = steps

    def check(self, cfg: DictConfig, model: nn.Module, datamodule: Any) -> None:
        if not self.steps:
            raise ConfigError(f"method={cfg.method.name} has no steps; list them under method.steps")
        for step in self.steps.values():
            step.check(cfg, model, datamodule)

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        callbacks = {name: step.callback(model, ctx) for name, step in self.steps.items()}
        validate_with(list(callbacks.values()), model, ctx)
        result = MethodResult(model)
        for name, callback in callbacks.items():
            result.stats.update({f"{name}/{k}": v for k, v in callback.stats.items()})
            result.stages.update({f"{name}/{k}": v for k, v in callback.stages.items()})
            result.artifacts.update({f"{name}/{k}": v for k, v in callback.artifacts.items()})
        return result
