"""Shared fixtures: Hydra composition of the packaged configs, as the CLI composes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from trimlab.cli import register_resolvers


@pytest.fixture
def compose_cfg(tmp_path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``config.yaml`` with overrides; outputs go to a temporary folder."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module("trimlab.conf", version_base="1.3"):

        def _compose(*overrides: str) -> DictConfig:
            cfg = compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides])
            OmegaConf.set_struct(cfg, True)
            return cfg

        yield _compose
    GlobalHydra.instance().clear()


TINY_RUN = (
    "model=cnn_digits", "dataset=digits", "method=dense", "budget=none", "logger=none",
    "dataset.max_train_examples=128", "dataset.max_eval_examples=64", "finetune.epochs=1",
    "measure.latency_batch_sizes=[1]", "measure.repeats=1", "measure.warmup=0", "trainer.progress_bar=false",
)
"""Overrides of a seconds-long run (a small CNN, a slice of digits, one short epoch, little timing), for sweep tests."""


@pytest.fixture
def tiny_run() -> tuple[str, ...]:
    return TINY_RUN

