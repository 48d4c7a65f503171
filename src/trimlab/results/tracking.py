"""Mirrors a run to W&B (offline by default) or CSV; the local record stays the source of truth.

One tracker per run, always finished (in the run's ``finally``), so multirun
jobs never share a W&B run. The W&B mode is passed per run, never through the
process environment.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from trimlab.methods import method_label
from trimlab.results.record import RunRecord


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, so dashboards can group by any key."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def record_summary(record: RunRecord) -> dict[str, Any]:
    """The stable summary keys of a run (documented in the README)."""
    summary = {"status": record.status, "method_cost_s": record.method_cost_s}
    summary.update(flatten({"dense": record.dense, "compressed": record.compressed, "ratio": record.ratios}))
    summary.update(flatten({"stage_s": record.stages}))
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}


class Tracker:
    """The Lightning logger of a run plus the end-of-run summary."""

    def __init__(self, logger: Logger | None) -> None:
        self.logger = logger

    @property
    def run_id(self) -> str:
        """The W&B run's own id (``wandb agent`` chooses it; otherwise it is trimlab's run id); empty without W&B."""
        experiment = getattr(self.logger, "experiment", None) if self.logger is not None else None
        return str(getattr(experiment, "id", "") or "")

    def log_record(self, record: RunRecord, run_dir: Path) -> None:
        """The summary, and on W&B the method's files: images as media, the rest as one artifact."""
        if self.logger is None:
            return
        summary = record_summary(record)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "summary"):
            experiment.summary.update(summary)
            _log_wandb_files(experiment, record, run_dir)
        else:
            self.logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            self.logger.save()

    def finish(self, status: str = "success") -> None:
        """End the run once (later calls do nothing)."""
        logger, self.logger = self.logger, None
        if logger is None:
            return
        logger.finalize(status)
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish(exit_code=0 if status == "success" else 1)


def _log_wandb_files(experiment: Any, record: RunRecord, run_dir: Path) -> None:
    import wandb

    images = {name: wandb.Image(str(run_dir / path)) for name, path in record.artifacts.items() if path.endswith(".png")}
    if images:
        experiment.log(images)
    # folders (the kept model) stay in the run folder: W&B would stage a copy of every weight
    files = [path for path in record.artifacts.values() if not path.endswith(".png") and (run_dir / path).is_file()]
    if files:
        artifact = wandb.Artifact(f"{record.run_id}-{record.method}", type=record.method)
        for path in files:
            artifact.add_file(str(run_dir / path))
        experiment.log_artifact(artifact)


def wandb_logged_in() -> bool:
    """A W&B API key is at hand (``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes), without contacting W&B."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def open_tracker(cfg: DictConfig, run_id: str, run_dir: Path) -> Tracker:
    """Build the tracker the ``logger`` group asks for."""
    kind = cfg.logger.kind
    if kind == "none":
        return Tracker(None)
    if kind == "csv":
        return Tracker(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    from lightning.pytorch.loggers import WandbLogger

    method = method_label(cfg.method)
    config = {"trimlab_run_id": run_id, "trimlab_method": method, **flatten(OmegaConf.to_container(cfg, resolve=True))}
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity or None,
        id=run_id,
        name=f"{cfg.model.name}-{cfg.dataset.name}-{method}-{cfg.budget.kind}{cfg.budget.target:g}",
        save_dir=str(run_dir),
        mode=cfg.logger.mode,
        tags=list(cfg.logger.tags),
        group=f"{cfg.model.name}-{cfg.dataset.name}",
        job_type=method,
        config=config,
        resume="allow",
        settings={"silent": True},
    )
    logger.experiment  # start the run now, so its id and folder exist before training
    return Tracker(logger)
