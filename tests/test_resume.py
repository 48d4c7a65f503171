"""A multirun killed halfway and started again runs only what is missing, and loses no record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def multirun(workdir: Path, overrides: tuple[str, ...], seeds: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "trimlab.cli", "-m", *overrides, f"seed={seeds}"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def records(workdir: Path) -> dict[int, dict]:
    found = {}
    for path in (workdir / "outputs" / "runs").glob("*/record.json"):
        record = json.loads(path.read_text())
        found[record["seed"]] = record
    return found


def test_a_killed_multirun_resumes_without_rerunning_finished_jobs(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    sweep = multirun(tmp_path, tiny_run, "0,1,2")
    deadline = time.monotonic() + 300
    while not any(r["status"] == "completed" for r in records(tmp_path).values()):
        assert sweep.poll() is None and time.monotonic() < deadline, "the sweep ended or stalled before its first job finished"
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGKILL)  # like a pre-empted node: no clean-up
    sweep.wait()
    before = records(tmp_path)
    finished = {seed: r for seed, r in before.items() if r["status"] == "completed"}
    assert 0 < len(finished) < 3

    again = multirun(tmp_path, tiny_run, "0,1,2")
    assert again.wait(timeout=600) == 0
    after = records(tmp_path)
    assert sorted(after) == [0, 1, 2] and all(r["status"] == "completed" for r in after.values())
    for seed, record in finished.items():  # not run twice: the same record, untouched
        assert after[seed]["started_at"] == record["started_at"] and after[seed]["finished_at"] == record["finished_at"]
