"""What post-training methods share: a Callback that compresses once when a validate run sets up.

The trainer then validates the compressed model, so its validation metric is
logged right after compression; the method's numbers ride back on the
callback (``stats``, ``stages``, ``artifacts``) into the run record.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig
from torch import nn

from trimlab.config import BUDGET_KINDS, ConfigError
from trimlab.methods import MethodContext, MethodResult
from trimlab.training import ClassifierModule

RATIO_KINDS = ("flops", "latency", "tokens")
"""Budget kinds whose target is a ratio of the dense model."""


@dataclass(frozen=True)
class Budget:
    """What the compressed model must fit, as a value: methods take this, not the run config.

    ``kind`` is one of ``none``, ``flops``, ``latency``, ``tokens`` (targets are
    ratios of the dense model in (0, 1]) or ``bits`` (a whole bit width in [2, 16]).
    """

    kind: str
    target: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ConfigError(f"budget.kind={self.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if self.kind in RATIO_KINDS and not 0.0 < self.target <= 1.0:
            raise ConfigError(f"budget.target={self.target:g} must be a ratio in (0, 1] for a {self.kind} budget")
        if self.kind == "bits" and not (2 <= self.target <= 16 and float(self.target).is_integer()):
            raise ConfigError(f"budget.target={self.target:g} must be a whole number of bits in [2, 16]")

    @classmethod
    def of(cls, node: Any) -> Budget:
        """The budget of a config node (``cfg.budget``) or anything else with ``kind`` and ``target``."""
        return cls(str(node.kind), float(node.target))


class PostTrainingCallback(pl.Callback):
    """Calls :meth:`compress` on ``pl_module.model`` once, at the setup of the first validate or test run."""

    def __init__(self) -> None:
        self.done = False
        self.stats: dict[str, Any] = {}
        self.stages: dict[str, float] = {}
        """Wall seconds per step."""
        self.artifacts: dict[str, str] = {}
        """Name → file name in the run folder."""

    @abstractmethod
    def compress(self, model: nn.Module) -> None:
        """Compress ``model`` in place."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.done and stage in ("validate", "test"):
            self.compress(pl_module.model)
            self.done = True


def validate_with(callbacks: list[PostTrainingCallback], model: nn.Module, ctx: MethodContext) -> None:
    """One validate run of ``model`` with ``callbacks``: each compresses it in turn, then the result is validated."""
    dm = ctx.datamodule
    # Under DDP every process sees every example, so every process compresses its model alike.
    trainer = ctx.make_trainer(callbacks=callbacks, logger=False, use_distributed_sampler=False)
    trainer.validate(ClassifierModule(model, dm.num_labels, dm.metric), dataloaders=dm.val_dataloader(), verbose=False)


class PostTrainingMethod:
    """A :class:`~trimlab.methods.Method` whose work is one :class:`PostTrainingCallback` in a validate run."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def check(self, cfg: DictConfig, model: nn.Module, datamodule: Any) -> None:
        """Raise :class:`~trimlab.config.ConfigError` for a setting this method cannot run."""

    @abstractmethod
    def callback(self, model: nn.Module, ctx: MethodContext) -> PostTrainingCallback:
        """The callback that compresses ``model`` under ``ctx``'s budget."""

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        callback = self.callback(model, ctx)
        validate_with([callback], model, ctx)
        return MethodResult(model, stats=callback.stats, stages=callback.stages, artifacts=callback.artifacts)
