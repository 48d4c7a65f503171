"""What post-training methods share: a Callback that compresses once a validate run has the model on its device.

Compression runs at the start of the validation loop, after Lightning has put
the model on the trainer's device (and in its ``*-true`` precision), in full
precision: outside the loop's inference mode, with gradients on for Fisher and
autocast off whatever ``trainer.precision`` says. The validate run takes one
batch only: it is the hook that places the model, and the run measures the
compressed model on the test split anyway (a full validation pass cost a
PWLQ cell on photos two forward passes per crop, recorded nowhere). The
method's numbers ride back on the callback (``stats``, ``stages``,
``artifacts``) into the run record.

A method checks the model and builds its callback from values
(:class:`StepInputs`: sample batches, token length, folders), so the CLI (a
run's datamodule, in a validate run) and :func:`trimlab.api.compress` (a user's
batches, called directly) go through the same checks and the same callback.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from trimlab.config import Budget
from trimlab.measure.flops import sequence_length
from trimlab.methods import MethodContext, MethodResult
from trimlab.methods.context import RunContext
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.placement import model_device
from trimlab.training import ClassifierModule


@dataclass
class StepInputs:
    """What a post-training step works from, as values."""

    samples: Iterable[Mapping[str, Tensor]]
    """Sample batches: one Fisher gradient, or one calibration batch, each."""
    num_labels: int
    seq_len: float
    """Tokens per example that per-token costs are priced at (0 for a model without tokens)."""
    cache_dir: Path
    """Where machine-specific tables (Fisher's latency table) are cached."""
    folder: Path
    """Where the step writes its files."""


class PostTrainingCallback(pl.Callback):
    """Calls :meth:`compress` on ``pl_module.model`` once, at the start of the first validate or test loop."""

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

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.compress_once(pl_module.model)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.compress_once(pl_module.model)

    def compress_once(self, model: nn.Module) -> None:
        """:meth:`compress` on the model where it is, in full precision, unless done already."""
        if self.done:
            return
        device = model_device(model).type
        no_autocast = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
        with torch.inference_mode(False), torch.enable_grad(), no_autocast:
            self.compress(model)
        self.stats["compressed_on"] = device  # the record says where the method computed: cpu or cuda
        self.done = True


def validate_with(callbacks: list[PostTrainingCallback], model: nn.Module, ctx: MethodContext) -> None:
    """One validate run of ``model`` with ``callbacks`` over one batch: each compresses it in turn at the loop's start."""
    dm = ctx.datamodule
    # Under DDP every process sees every example, so every process compresses its model alike.
    trainer = ctx.make_trainer(callbacks=callbacks, logger=False, use_distributed_sampler=False, limit_val_batches=1)
    trainer.validate(ClassifierModule(model, dm.num_labels, dm.metric), dataloaders=dm.val_dataloader(), verbose=False)


class PostTrainingMethod:
    """A :class:`~trimlab.methods.Method` whose work is one :class:`PostTrainingCallback` in a validate run."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @property
    @abstractmethod
    def sample_batch_size(self) -> int:
        """The batch size a run draws its sample set at."""

    def check_run(self, run: RunContext, model: nn.Module) -> None:
        """Raise :class:`~trimlab.config.ConfigError` for run settings this method cannot work with (the CLI's only, and cheap)."""

    @abstractmethod
    def check_model(self, model: nn.Module, budget: Budget, inputs: StepInputs, model_name: str) -> None:
        """Raise :class:`~trimlab.config.ConfigError` when ``model`` cannot be compressed under ``budget``, before any expensive work."""

    @abstractmethod
    def callback(self, budget: Budget, inputs: StepInputs) -> PostTrainingCallback:
        """The callback that compresses a model under ``budget``."""

    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        self.check_run(run, model)
        inputs = self.inputs(model, datamodule, run.cache_dir, run.cache_dir)  # checks write nothing
        self.check_model(model, budget, inputs, f"model={run.model_name}")

    def inputs(self, model: nn.Module, datamodule: Any, cache_dir: Path, folder: Path) -> StepInputs:
        """A run's inputs: its datamodule's sample set at this method's batch size."""
        samples = datamodule.sample_dataloader(batch_size=self.sample_batch_size)
        seq_len = sequence_length(model, datamodule) if isinstance(model, TransformerClassifier) else 0.0
        return StepInputs(samples, datamodule.num_labels, seq_len, cache_dir, folder)

    def run_callback(self, model: nn.Module, ctx: MethodContext) -> PostTrainingCallback:
        """The callback of this step of a run (``ctx``: its budget and folder)."""
        return self.callback(ctx.budget, self.inputs(model, ctx.datamodule, ctx.run.cache_dir, ctx.run_dir))

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        callback = self.run_callback(model, ctx)
        validate_with([callback], model, ctx)
        return MethodResult(model, stats=callback.stats, stages=callback.stages, artifacts=callback.artifacts)
