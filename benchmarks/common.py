"""What every benchmark script does first: compose trimlab's config, get the dense model trimlab would start from, keep each seed's result."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from transformers.utils import logging as hf_logging

from trimlab.cli import register_resolvers
from trimlab.data import build_datamodule
from trimlab.models.build import build_model
from trimlab.results.tracking import Tracker
from trimlab.checkpoints import dense_checkpoint_path, load_checkpoint, save_checkpoint
from trimlab.files import atomic_path
from trimlab.results.record import config_hash, run_id
from trimlab.engine import build_trainer, finetune


def compose_config(output_dir: str, *overrides: str) -> DictConfig:
    """trimlab's config with ``overrides``, caches under ``output_dir``, no logger, no progress bars."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    register_resolvers()
    with initialize_config_module("trimlab.conf", version_base="1.3"):
        return compose(
            "config", overrides=[f"paths.output_dir={output_dir}", "logger=none", "trainer.progress_bar=false", *overrides]
        )


def add_overrides_argument(parser: argparse.ArgumentParser, description: str) -> None:
    """The trailing Hydra overrides a benchmark takes; its help says to give them first (a list option would read them)."""
    parser.add_argument("overrides", nargs="*", help=f"{description}; give them first: an option taking a list would read them as its values")


def dense_model(cfg: DictConfig, run_dir: Path, checkpoint: Path | None = None) -> tuple[torch.nn.Module, Any, Callable[..., Any]]:
    """The dense model in eval mode (from trimlab's checkpoint cache, fine-tuned on a miss), its set-up datamodule, a trainer factory.

    ``checkpoint``: the fine-tuned weights to load instead of the cache's (they must exist).
    """
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, cfg.dataset.num_labels)
    dm = build_datamodule(cfg.dataset, built, cfg.seed)
    dm.setup()

    def make_trainer(**overrides: Any) -> Any:
        return build_trainer(cfg, Tracker(None), run_dir, **overrides)

    if checkpoint is not None:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"dense checkpoint {checkpoint} does not exist; leave it out to use (or make) trimlab's dense cache")
        load_checkpoint(built.model, checkpoint)
        return built.model.eval(), dm, make_trainer
    checkpoint = dense_checkpoint_path(cfg)
    if cfg.finetune.enabled:
        if checkpoint.exists():
            load_checkpoint(built.model, checkpoint)
        else:
            finetune(cfg, built.model, dm, make_trainer)
            save_checkpoint(built.model, checkpoint)
    return built.model.eval(), dm, make_trainer


def seed_result(run_dir: Path, cfg: DictConfig, settings: dict[str, Any], compute: Callable[[], dict]) -> dict:
    """One seed's result, computed once per config and ``settings`` and kept in ``run_dir``.

    An interrupted benchmark resumes at the first seed without a result, and seeds
    run as separate processes (``--seeds 1``, ``--seeds 2`` side by side) are
    aggregated by one more call with all the seeds, which trains nothing.
    """
    path = run_dir / f"result-{config_hash({'run': run_id(cfg), **settings})}.pt"
    if path.exists():
        print(f"seed {cfg.seed}: result kept in {path}", flush=True)
        return torch.load(path, weights_only=False)
    result = compute()
    with atomic_path(path) as tmp:
        torch.save(result, tmp)
    return result
