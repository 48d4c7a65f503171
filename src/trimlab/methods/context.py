"""What a method knows of the run besides its own options, budget and data: a few values, never the run config.

A run builds one :class:`RunContext` from its config (:func:`trimlab.run.run_context`);
:func:`trimlab.api.compress` builds one from its arguments. So a method runs the
same way under the CLI and on a user's own model and batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trimlab.config import FinetuneConfig, MeasureConfig, TrainerConfig


@dataclass(frozen=True)
class RunContext:
    """The run's settings a method reads, as values."""

    cache_dir: Path
    """Where machine-specific tables (latency tables) are cached."""
    seed: int = 0
    model_name: str = "model"
    """How messages name the model (a run's ``model.name``)."""
    model_weights: str = "given"
    """Where the model's weights came from (a run's ``model.weights``; ``given``: the user's model, trained)."""
    dataset_name: str = "data"
    """How messages name the data (a run's ``dataset.name``)."""
    task_trained: bool = True
    """The model reaches the method trained on the task (fine-tuned by the run, or loaded with the task's classifier)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """How training steps are counted and saved (limits, gradient accumulation, processes, state-saving interval)."""
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    """How models are measured (FLOPs batches, latency batch sizes and repeats)."""
    recipe: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The dense model's training recipe (epochs, lr, …), for a method that retrains with it (MaiT)."""
