"""Every study sweep (``trimlab -m experiment=<study>``) expands into jobs that all compose, as Hydra's sweeper would run them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from trimlab.results.record import run_id

EXPERIMENTS = sorted((Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))
STUDIES = [p for p in EXPERIMENTS if "sweeper:" in p.read_text() and "optuna" not in p.read_text()]  # grids (Optuna searches: test_search.py)


def jobs(study: Path) -> list[list[str]]:
    """The override lists of a study's jobs: its ``hydra.sweeper.params`` grid, expanded by Hydra's own parser."""
    params = yaml.safe_load(study.read_text())["hydra"]["sweeper"]["params"]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def test_there_are_studies() -> None:
    assert {p.stem for p in STUDIES} >= {"kwon2022_ablation", "ltp2021", "sait2022", "mait2022", "pwlq2020"}


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.stem)
def test_every_job_of_a_study_composes(study: Path, compose_cfg: Callable[..., DictConfig]) -> None:
    expanded = jobs(study)
    assert len(expanded) > 1
    ids = {run_id(compose_cfg(f"experiment={study.stem}", *job)) for job in expanded}
    assert len(ids) == len(expanded)  # every job is a different run


def test_pwlq_study_quantizes_activations_to_8_bits_for_both_methods(compose_cfg: Callable[..., DictConfig]) -> None:
    for method in ("pwlq", "uniform_ptq"):
        assert compose_cfg("experiment=pwlq2020", f"method={method}").method.act_bits == 8


WANDB_SWEEPS = sorted((Path(__file__).parents[1] / "sweeps" / "wandb").glob("*.yaml"))


@pytest.mark.parametrize("sweep", WANDB_SWEEPS, ids=lambda p: p.stem)
def test_every_run_of_a_wandb_sweep_composes(sweep: Path, compose_cfg: Callable[..., DictConfig]) -> None:
    """W&B passes each parameter as ``key=value`` after the fixed overrides (``${args_no_hyphens}``): all must compose."""
    content = yaml.safe_load(sweep.read_text())
    assert content["command"][0] == "${program}" and content["command"][-1] == "${args_no_hyphens}"
    fixed = content["command"][1:-1]
    grid = itertools.product(*([f"{k}={v}" for v in p["values"]] for k, p in content["parameters"].items()))
    ids = {run_id(compose_cfg(*fixed, *combo)) for combo in grid}
    assert len(ids) == math.prod(len(p["values"]) for p in content["parameters"].values())
