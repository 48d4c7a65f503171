"""What post-training methods share: a Callback that compresses once when a validate run sets up.

The trainer then validates the compressed model, so its validation metric is
logged right after compression; the method's numbers ride back on the
callback (``stats``, ``stages``, ``artifacts``) into the run record.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig
from torch import nn

from trimlab.config import Budget
from trimlab.methods import MethodContext, MethodResult
from trimlab.training import ClassifierModule

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

    def check(self, cfg: DictConfig, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        """Raise :class:`~trimlab.config.ConfigError` for a setting this method cannot run."""

    @abstractmethod
    def callback(self, model: nn.Module, ctx: MethodContext) -> PostTrainingCallback:
        """The callback that compresses ``model`` under ``ctx``'s budget."""

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        callback = self.callback(model, ctx)
        validate_with([callback], model, ctx)
        return MethodResult(model, stats=callback.stats, stages=callback.stages, artifacts=callback.artifacts)
