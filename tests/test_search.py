"""Optuna search through hydra-optuna-sweeper: trimlab returns the task metric as the objective, every trial keeps its record."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def test_optuna_maximises_the_task_metric_over_a_knob(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    search = [
        "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize",
        "hydra.sweeper.sampler.seed=0", "method.top_k=int(interval(2,20))",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", "-m", *search, *tiny_run, "method=pwlq", "budget=bits_4"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = tmp_path / "outputs" / "runs"
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    assert len(records) == 2 and all(r["status"] == "completed" for r in records)
    best = yaml.safe_load((runs / ".attempts" / "optimization_results.yaml").read_text())  # Hydra's sweep folder
    assert best["best_value"] == pytest.approx(max(r["compressed"]["metric"] for r in records))
    assert best["best_params"]["method.top_k"] in {r["config"]["method"]["top_k"] for r in records}


@pytest.mark.parametrize("study", ["ltp_lambda_search", "fisher_samples_search"])
def test_search_studies_compose(study: str, compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(f"experiment={study}")
    assert cfg.method.name in {"ltp", "fisher_prune"}
