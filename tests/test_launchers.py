"""Sweeps scale out through Hydra's launcher plugins: Submitit's local mode stands in for a SLURM cluster, a local Ray
instance for a Ray cluster (the Ray launcher comes with the ``scale`` extra; without it its test is skipped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


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
