"""What post-training methods share: a Callback that compresses once when a validate run sets up.

The trainer then validates the compressed model, so its validation metric is
logged right after compression; the method's numbers ride back on the
callback (``stats``, ``stages``, ``artifacts``) into the run record.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning.pytorch as pl
from torch import nn

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


def compress_and_validate(callback: PostTrainingCallback, model: nn.Module, ctx: MethodContext) -> MethodResult:
    """Run ``callback`` in a validate run of ``model`` and collect what it recorded."""
    dm = ctx.datamodule
    trainer = ctx.make_trainer(callbacks=[callback], logger=False)
    trainer.validate(ClassifierModule(model, dm.num_labels, dm.metric), dataloaders=dm.val_dataloader(), verbose=False)
    return MethodResult(model, stats=callback.stats, stages=callback.stages, artifacts=callback.artifacts)
