"""What changes when a run trains data-parallel (``trainer=ddp``).

Lightning's DDP starts the other processes by running the same command again,
so every process runs the whole pipeline and meets the others in each
``fit``/``test``/``validate``. Training is split across them; evaluation and
post-training methods are replicated (every process sees all examples, so
metrics are exact and every process compresses its model alike). Only the
primary process writes: the record, W&B, cached checkpoints, artifacts and
latency timings (the others would compete for the same cores).
"""

from __future__ import annotations

import os

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from trimlab.config import ConfigError, process_count

EXTERNAL_LAUNCHER_ENV = ("SLURM_PROCID", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")
"""Set when a cluster (SLURM, torchrun) has started the processes itself, so Lightning does not re-run the command."""


def is_primary() -> bool:
    """True in the process that writes (global rank 0, or the only process)."""
    return rank_zero_only.rank == 0


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """DDP inside a Hydra multirun needs processes the launcher starts: re-running ``-m`` would rerun the sweep."""
    if process_count(cfg.trainer) > 1 and multirun and not any(k in os.environ for k in EXTERNAL_LAUNCHER_ENV):
        raise ConfigError(
            "trainer=ddp in a multirun (-m): Lightning starts the extra processes by re-running the command, "
            "which would re-run the whole sweep. Run each job alone (trimlab trainer=ddp ...), or sweep with "
            "hydra/launcher=submitit_slurm and hydra.launcher.tasks_per_node=<trainer.devices> so SLURM starts them"
        )
