"""Sweeps scale out through Hydra's launcher plugins: Submitit's local mode stands in for a SLURM cluster, a local Ray
instance for a Ray cluster (the Ray launcher comes with the ``scale`` extra; without it its test is skipped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trimlab.results.multirun import grid_sweeps


def test_submitit_local_runs_each_job_in_its_own_process_and_records_it(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    done = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0,1", *tiny_run],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "runs").glob("*/record.json")]
    assert sorted(r["seed"] for r in records) == [0, 1] and all(r["status"] == "completed" for r in records)
    assert (tmp_path / "outputs" / "runs" / ".attempts" / ".submitit").is_dir()  # the launcher's files, in Hydra's sweep folder


def test_ray_runs_each_job_as_a_ray_task_and_records_it(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    done = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", "-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
         "+hydra.launcher.ray.init.include_dashboard=false", "seed=0,1", *tiny_run],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "runs").glob("*/record.json")]
    assert sorted(r["seed"] for r in records) == [0, 1] and all(r["status"] == "completed" for r in records)


@pytest.mark.slow
def test_trimlab_table_hands_the_missing_runs_to_submitit_and_reads_their_records(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    spec = {
        "paper": {"title": "Tiny"},
        "runs": {"common": list(tiny_run), "train_sizes": {"n128": ["dataset.max_train_examples=128"], "n96": ["dataset.max_train_examples=96"]}},
        "table": {"rows": ["model"], "columns": ["n128", "n96"], "metric": "accuracy", "scale": 100},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [sys.executable, "-m", "trimlab.results.table", "spec.yaml", "--run-missing", "--launcher", "submitit_local",
         "--launcher-arg", "timeout_min=10", "--out", "table"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("[multirun 1/1] trimlab -m hydra/launcher=submitit_local") == 1  # both runs in one multirun
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "runs").glob("*/record.json")]
    assert sorted(r["config"]["dataset"]["max_train_examples"] for r in records) == [96, 128]
    assert all(r["status"] == "completed" for r in records)
    assert (tmp_path / "outputs" / "runs" / ".attempts" / ".submitit").is_dir()
    assert "Missing runs" not in done.stdout and "| cnn_digits |" in done.stdout


def test_runs_that_fill_a_grid_share_a_multirun_and_the_rest_split_into_grids() -> None:
    runs = [[f"model={m}", f"method={x}", f"seed={s}"] for m in ("a", "b") for x in ("p", "q") for s in (0, 1)]
    assert grid_sweeps(runs) == [["model=a,b", "method=p,q", "seed=0,1"]]
    assert grid_sweeps(runs[1:]) == [["model=a", "method=p", "seed=1"], ["model=a", "method=q", "seed=0,1"], ["model=b", "method=p,q", "seed=0,1"]]
    other_keys = [["model=a", "budget=none", "method=p", "budget=bits_8", "seed=0"], ["~logger", "model=a", "seed=0"], ["~logger", "model=b", "seed=0"]]
    assert grid_sweeps([*other_keys, other_keys[0]]) == [other_keys[0], ["~logger", "model=a,b", "seed=0"]]
