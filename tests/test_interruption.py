"""Nothing lost, nothing silently wrong: signals, forced reruns, concurrent runs, sweeps that keep going, early output checks.

Each test runs ``trimlab`` as a user or a scheduler would (a subprocess on the
tiny CNN run) and reads back the record it leaves.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from trimlab.config import ConfigError
from trimlab.data import build_datamodule
from trimlab.models.build import build_model
from trimlab.results.collect import scan
from trimlab.results.predictions import PREDICTIONS_FILE, read_predictions, score
from trimlab.results.record import RECORD_FILE, read_record, run_id
from trimlab.results.run_folder import ATTEMPT_FILE, HISTORY_DIR
from trimlab.run import run
from trimlab.saved_model import load_model

LONG_TRAINING = ("finetune.epochs=400",)
LONG_TIMING = ("measure.repeats=1000000",)
"""Stretch one stage of the tiny run, so a signal lands in it (the run is stopped long before the end)."""


def tiny(tiny_run: tuple[str, ...], *changes: str) -> list[str]:
    """The tiny run's overrides with ``changes`` in place of the same keys."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in tiny_run if o.split("=", 1)[0] not in keys] + list(changes)


def start(workdir: Path, *overrides: str) -> subprocess.Popen[str]:
    """``trimlab`` as a foreground command: SIGINT at its default even where the tests run as a background job
    (which starts with SIGINT ignored, and trimlab leaves an ignored signal ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "trimlab.cli", *overrides], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def trimlab(workdir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trimlab.cli", *overrides], cwd=workdir, capture_output=True, text=True, timeout=600)


def wait_for_stage(process: subprocess.Popen[str], path: Path, stage: str) -> None:
    """Until the record at ``path`` says the run is in ``stage`` (then a moment more, to be inside it)."""
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, f"the run ended before {stage}: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {stage} stage in {path}"
        try:
            if json.loads(path.read_text()).get("stage") == stage:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    time.sleep(1.0)


def run_dir(workdir: Path) -> Path:
    (found,) = [p for p in (workdir / "outputs" / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return found


@pytest.mark.parametrize(
    "signum,stage,stretch",
    [
        (signal.SIGTERM, "finetune", LONG_TRAINING),  # what SLURM sends at its time limit, inside Lightning's loop
        (signal.SIGINT, "finetune", LONG_TRAINING),  # Ctrl+C
        (signal.SIGTERM, "measure_compressed", LONG_TIMING),  # outside training
    ],
)
def test_a_signal_records_interrupted_and_exits_128_plus_its_number(
    tmp_path: Path, tiny_run: tuple[str, ...], signum: int, stage: str, stretch: tuple[str, ...]
) -> None:
    process = start(tmp_path, *tiny(tiny_run, *stretch))
    deadline = time.monotonic() + 120
    while not list((tmp_path / "outputs" / "runs").glob(f"*/{RECORD_FILE}")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    path = run_dir(tmp_path) / RECORD_FILE
    wait_for_stage(process, path, stage)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert f"trimlab: interrupted by {name} during {stage}" in err and "Run the same command again to resume" in err
    record = read_record(path)
    assert record.status == "interrupted" and record.error == f"interrupted by {name} during {stage}"


def test_a_killed_forced_rerun_keeps_the_completed_result(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    overrides = tiny(tiny_run, "finetune.epochs=40")
    assert trimlab(tmp_path, *overrides).returncode == 0
    folder = run_dir(tmp_path)
    before = read_record(folder / RECORD_FILE)
    assert before.status == "completed"

    aside = tmp_path / "aside"
    aside.mkdir()
    checkpoints = {c: aside / c.name for c in (tmp_path / "outputs" / "cache").rglob("*.safetensors")}
    for checkpoint, kept in checkpoints.items():
        checkpoint.rename(kept)  # so the rerun fine-tunes again: a long stage to kill it in
    rerun = start(tmp_path, *overrides, "force=true")
    wait_for_stage(rerun, folder / ATTEMPT_FILE, "finetune")
    assert read_record(folder / RECORD_FILE).finished_at == before.finished_at  # still there while the rerun runs
    rerun.kill()  # SIGKILL: no clean-up at all
    rerun.communicate()
    for checkpoint, kept in checkpoints.items():
        kept.rename(checkpoint)  # the next attempt need not fine-tune again

    after = read_record(folder / RECORD_FILE)
    assert after.status == "completed" and after.compressed == before.compressed
    found = scan(tmp_path / "outputs" / "runs")
    assert [r.run_id for r in found.completed] == [folder.name]  # the table still finds the result
    assert read_record(folder / ATTEMPT_FILE).status == "running"  # what the killed attempt left ...

    again = trimlab(tmp_path, *overrides, "force=true")  # ... is filed as interrupted by the next attempt
    assert again.returncode == 0, again.stderr[-2000:]
    names = sorted(p.name.split("-")[-1] for p in (folder / HISTORY_DIR).glob("*.json"))
    assert names == ["completed.json", "interrupted.json"]
    assert read_record(folder / RECORD_FILE).started_at > before.started_at


@torch.no_grad()
def predictions_of(model: torch.nn.Module, cfg: DictConfig) -> np.ndarray:
    """Class ids of the run's test split, in loader order, from ``model``."""
    datamodule = build_datamodule(cfg.dataset, build_model(cfg.model, cfg.dataset.num_labels), cfg.seed)
    datamodule.setup("fit")
    return torch.cat([model(batch).logits.argmax(-1) for batch in datamodule.test_dataloader()]).numpy()


KILLED_AFTER_SAVING_ITS_MODEL = """
import os, signal, sys, torch
import trimlab.run
from trimlab.cli import main

save = trimlab.run.save_model

def save_then_die(model, *args, **kwargs):
    with torch.no_grad():  # another model than the completed attempt's, so a mix of the two would show
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save(model, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

trimlab.run.save_model = save_then_die
sys.argv[0] = "trimlab"
main()
"""


def test_a_forced_rerun_killed_after_saving_its_model_leaves_the_last_completed_attempt_whole(
    tmp_path: Path, tiny_run: tuple[str, ...], compose_cfg: Callable[..., DictConfig]
) -> None:
    assert trimlab(tmp_path, *tiny_run).returncode == 0
    folder = run_dir(tmp_path)
    before = read_record(folder / RECORD_FILE)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_SAVING_ITS_MODEL, *tiny_run, "force=true"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    record = read_record(folder / RECORD_FILE)
    assert record.status == "completed" and record.started_at == before.started_at
    recorded = read_predictions(folder / PREDICTIONS_FILE)
    preds = predictions_of(load_model(folder), compose_cfg(*tiny_run))
    np.testing.assert_array_equal(preds, recorded.compressed)  # the model is the one the predictions came from
    assert float(score(recorded.metric, recorded.labels, preds)) == pytest.approx(record.compressed["metric"], abs=1e-6)
    assert read_record(folder / ATTEMPT_FILE).status == "running"  # the killed attempt's record, filed by the next one


def test_a_second_process_on_the_same_config_is_refused_naming_the_first(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    first = start(tmp_path, *tiny(tiny_run, *LONG_TRAINING))
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "outputs" / "runs").glob(f"*/{RECORD_FILE}")):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = trimlab(tmp_path, *tiny(tiny_run, *LONG_TRAINING))
        assert second.returncode == 2
        assert f"is being run right now by pid {first.pid} on " in second.stderr and "since" in second.stderr
        assert read_record(run_dir(tmp_path) / RECORD_FILE).status == "running"  # the owner's record, untouched
    finally:
        first.kill()
        first.wait()


def test_a_multirun_goes_on_past_a_job_that_fails_its_checks(tmp_path: Path, tiny_run: tuple[str, ...]) -> None:
    overrides = [o for o in tiny_run if not o.startswith(("method=", "budget="))]
    done = trimlab(tmp_path, "-m", *overrides, "method=pwlq", "budget=bits_4", "budget.target=4,17,6", "dataset.sample_size=32")
    assert done.returncode == 1  # a job failed
    records = {r.budget["target"]: r for r in (read_record(p) for p in (tmp_path / "outputs" / "runs").glob(f"*/{RECORD_FILE}"))}
    assert {t: r.status for t, r in records.items()} == {4.0: "completed", 17.0: "failed", 6.0: "completed"}
    assert "whole number of bits" in records[17.0].error and records[17.0].stage == "checks"
    assert "multirun of 3 job(s): 2 completed, 0 skipped (completed before), 0 running in another process, 1 failed" in done.stderr
    assert "failed job #1 budget.target=17:" in done.stderr


def test_a_typo_added_with_plus_fails_before_any_work(tmp_path: Path) -> None:
    done = trimlab(tmp_path, "+budget.targt=0.5")
    assert done.returncode == 2
    assert "trimlab: error: budget.targt is not a trimlab key; did you mean budget.target?" in done.stderr
    assert not list(tmp_path.rglob(RECORD_FILE))


def test_an_unwritable_cache_folder_fails_before_fine_tuning(compose_cfg: Callable[..., DictConfig], tmp_path: Path, tiny_run) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = compose_cfg(*tiny_run, f"paths.cache_dir={blocker / 'cache'}")
    with pytest.raises(ConfigError, match=r"paths.cache_dir=.*a-file/cache is not a writable folder"):
        run(cfg)
    assert not list(tmp_path.rglob(RECORD_FILE))


def test_a_disk_too_full_for_the_checkpoint_fails_before_fine_tuning(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_run
) -> None:
    monkeypatch.setattr("trimlab.files.shutil.disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(ConfigError, match=r"paths.cache_dir=.* has 0 MiB free but this run needs about"):
        run(compose_cfg(*tiny_run))
    assert not list(tmp_path.rglob(RECORD_FILE)) and not list(tmp_path.rglob("*.safetensors"))


def test_an_unreadable_record_in_the_run_folder_is_named(compose_cfg: Callable[..., DictConfig], tmp_path: Path, tiny_run) -> None:
    cfg = compose_cfg(*tiny_run)
    path = tmp_path / "runs" / run_id(cfg) / RECORD_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=rf"{path} is not a readable trimlab record"):
        run(cfg)
