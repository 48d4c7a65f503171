"""Compression methods, each behind the same small interface so ``run.py`` stays method-agnostic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig
from torch import nn

from trimlab.config import ConfigError


@dataclass
class MethodContext:
    """What a method may use besides the model: config, data, where to write, and how to build a trainer."""

    cfg: DictConfig
    datamodule: Any
    run_dir: Path
    make_trainer: Callable[..., Any]


@dataclass
class MethodResult:
    """The compressed model and what the method wants recorded."""

    model: nn.Module
    stats: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    """Wall seconds per step of the method."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Name → path relative to the run folder."""
    unchanged: bool = False
    """The model is the dense one as it came in: the run reuses the dense measurement instead of repeating it."""


class Method(Protocol):
    def check(self, cfg: DictConfig, model: nn.Module, datamodule: Any) -> None:
        """Raise :class:`ConfigError` for a setting this method cannot run, before any expensive work."""

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        """Compress (or train) ``model`` and return the result."""


def build_method(cfg: DictConfig) -> Method:
    """The method of ``cfg.method``; a config with ``steps`` is a pipeline of methods under one budget."""
    from trimlab.methods.dense import DenseMethod
    from trimlab.methods.fisher_prune.callback import FisherPruneMethod
    from trimlab.methods.ltp.method import LTPMethod
    from trimlab.methods.mait.method import MaiTMethod
    from trimlab.methods.pipeline import PipelineMethod
    from trimlab.methods.pwlq.callback import QuantizeMethod
    from trimlab.methods.sait.method import SaiTMethod

    registry: dict[str, Callable[[DictConfig], Any]] = {
        "dense": DenseMethod,
        "fisher_prune": FisherPruneMethod,
        "ltp": LTPMethod,
        "ltp_topk": LTPMethod,
        "pwlq": QuantizeMethod,
        "uniform_ptq": QuantizeMethod,
        "sait": SaiTMethod,
        "mait": MaiTMethod,
    }

    def build(method_cfg: DictConfig, composable: tuple[str, ...] = tuple(registry)) -> Any:
        name = method_cfg.name
        if name not in composable:
            raise ConfigError(f"method={name} is not implemented here; choose one of {', '.join(sorted(composable))}")
        return registry[name](method_cfg)

    if "steps" in cfg.method:
        composable = ("fisher_prune", "ltp", "ltp_topk", "pwlq", "uniform_ptq")
        steps = {step: build(step_cfg, composable) for step, step_cfg in cfg.method.steps.items()}
        return PipelineMethod(cfg.method, steps)
    return build(cfg.method)
