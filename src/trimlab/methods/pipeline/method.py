"""Methods composed under one budget: e.g. Fisher pruning, then LTP, then PWLQ.

``method.steps`` maps step name → that method's config, in the order they
run. Consecutive post-training steps share one validate run (their callbacks in
order); a training step (LTP) runs its own fits in between. Every step sees the
run through its own context: its method config, its own budget and its own
folder (``<run>/<step>/``).

The run's FLOPs budget is shared by the pruning steps (those that take a
flops, latency or tokens budget). One pruning step takes it whole. With two,
the first (Fisher: heads and neurons) gets ``target ** split`` and the second
(LTP: tokens) whatever then remains, measured on calibration examples, so the
pruned model meets the run's target as a whole: their reductions multiply.
Quantizers carry their bits in their own ``bits`` key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig
from torch import nn

from trimlab.config import RATIO_KINDS, Budget, ConfigError
from trimlab.measure.flops import mean_flops_per_example
from trimlab.methods import Method, MethodContext, MethodResult, build_step
from trimlab.methods.context import RunContext
from trimlab.methods.post_training import PostTrainingMethod, validate_with


class PipelineMethod:
    """Runs the steps in order, each under its own budget; records each step's numbers under ``<step>/``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.steps: dict[str, Method] = {name: build_step(name, step_cfg) for name, step_cfg in cfg.steps.items()}
        self.pruning = [name for name, step_cfg in cfg.steps.items() if set(step_cfg.budgets) & set(RATIO_KINDS)]
        """The steps that share the run's FLOPs budget, in order: those taking a ratio budget (a quantizer keeps the run's)."""

    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        if not self.steps:
            raise ConfigError(f"method={self.cfg.name} has no steps; list them under method.steps")
        pruning = self.pruning
        if len(pruning) > 2:
            raise ConfigError(f"method={self.cfg.name} has {len(pruning)} pruning steps ({', '.join(pruning)}); one budget splits over at most two")
        if len(pruning) == 2 and budget.kind != "flops":
            raise ConfigError(
                f"method={self.cfg.name} splits its budget over {' and '.join(pruning)}: FLOPs reductions multiply, "
                f"{budget.kind} ones do not. Use a flops budget (e.g. budget=flops_30)"
            )
        if not 0.0 < self.cfg.split < 1.0:
            raise ConfigError(f"method.split={self.cfg.split} must be in (0, 1): the share of the FLOPs reduction made by the first pruning step")
        for name, step in self.steps.items():
            step.check(run, self._step_budget(budget, name, self._planned_target(budget, name)), model, datamodule)

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        result = MethodResult(model)
        pruning = self.pruning
        calibration = list(ctx.datamodule.sample_dataloader())
        input_flops = mean_flops_per_example(model, calibration, max_batches=len(calibration))
        for group in self._groups():
            contexts = {}
            for name in group:
                target = self._planned_target(ctx.budget, name)
                if len(pruning) == 2 and name == pruning[1]:  # what the first left of the run's target
                    done = mean_flops_per_example(model, calibration, max_batches=len(calibration)) / input_flops
                    target = min(1.0, ctx.budget.target / done)
                if name in pruning:
                    result.stats[f"{name}/budget_target"] = target
                resume = ctx.resume_dir / name if ctx.resume_dir is not None else None
                contexts[name] = dataclasses.replace(
                    ctx, budget=self._step_budget(ctx.budget, name, target), run_dir=ctx.run_dir / name, resume_dir=resume
                )
            for name, outcome in self._apply_group(group, model, contexts, ctx):
                model = outcome.model
                result.stats.update({f"{name}/{k}": v for k, v in outcome.stats.items()})
                result.stages.update({f"{name}/{k}": v for k, v in outcome.stages.items()})
                result.artifacts.update({f"{name}/{k}": f"{name}/{v}" for k, v in outcome.artifacts.items()})
        result.model = model
        return result

    def _apply_group(
        self, group: list[str], model: nn.Module, contexts: dict[str, MethodContext], ctx: MethodContext
    ) -> Iterator[tuple[str, MethodResult]]:
        if not isinstance(self.steps[group[0]], PostTrainingMethod):
            (name,) = group
            yield name, self.steps[name].apply(model, contexts[name])
            return
        callbacks = {name: self.steps[name].run_callback(model, contexts[name]) for name in group}
        validate_with(list(callbacks.values()), model, ctx)
        for name, callback in callbacks.items():
            yield name, MethodResult(model, stats=callback.stats, stages=callback.stages, artifacts=callback.artifacts)

    def _groups(self) -> list[list[str]]:
        """Consecutive post-training steps together (one validate run); each training step alone."""
        groups: list[list[str]] = []
        for name, step in self.steps.items():
            post = isinstance(step, PostTrainingMethod)
            if post and groups and isinstance(self.steps[groups[-1][0]], PostTrainingMethod):
                groups[-1].append(name)
            else:
                groups.append([name])
        return groups

    def _planned_target(self, budget: Budget, name: str) -> float:
        """A step's share of the run's target, before any step has run (the second pruning step's is re-measured then)."""
        pruning = self.pruning
        if name not in pruning or len(pruning) == 1:
            return budget.target
        share = self.cfg.split if name == pruning[0] else 1.0 - self.cfg.split
        return budget.target**share

    def _step_budget(self, budget: Budget, name: str, target: float) -> Budget:
        """Step ``name``'s budget: a pruning step's share of the run's, of a kind it takes; the run's for the others."""
        if name not in self.pruning:
            return budget
        accepted = list(self.cfg.steps[name].budgets)
        kind = budget.kind if budget.kind in accepted else next(k for k in RATIO_KINDS if k in accepted)
        return Budget(kind, target)
