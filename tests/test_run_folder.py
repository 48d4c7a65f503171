"""Run folders: one owner at a time, one complete attempt in the folder (swapped in whole), every attempt's record kept."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from trimlab.config import ConfigError
from trimlab.results import run_folder
from trimlab.results.collect import scan
from trimlab.results.record import RECORD_FILE, RunRecord, read_record, write_record
from trimlab.results.run_folder import ATTEMPT_FILE, HISTORY_DIR, RunBusy, RunFolder, completed_folder, effective_status, owned
from trimlab.results.table import main as table_main


def record(status: str, metric: float = 0.5, started: str = "2026-12-01T10:00:00+00:00") -> RunRecord:
    return RunRecord(
        run_id="abc", status=status, model="m", dataset="d", method="dense", budget={"kind": "none", "target": 1.0},
        seed=0, config={}, dense={"metric": metric}, compressed={"metric": metric, "flops": 1.0}, started_at=started,
    )


def history(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / HISTORY_DIR).glob("*.json")) if (folder / HISTORY_DIR).is_dir() else []


def test_an_attempt_on_a_completed_run_writes_beside_it_until_it_completes(tmp_path: Path) -> None:
    write_record(tmp_path, record("completed", 0.9))
    with RunFolder(tmp_path).own() as folder:
        attempt = record("running", 0.0, started="2026-12-02T10:00:00+00:00")
        assert folder.write(attempt).name == ATTEMPT_FILE
        assert read_record(tmp_path / RECORD_FILE).compressed["metric"] == 0.9  # still readable meanwhile
        attempt.status, attempt.compressed = "completed", {"metric": 0.7}
        folder.finish(attempt)
    assert read_record(tmp_path / RECORD_FILE).compressed["metric"] == 0.7
    assert not (tmp_path / ATTEMPT_FILE).exists()
    assert history(tmp_path) == ["2026-12-01T10-00-00+00-00-completed.json"]  # the earlier result is kept


def test_a_failed_attempt_leaves_the_completed_record_and_says_what_happened(tmp_path: Path) -> None:
    write_record(tmp_path, record("completed", 0.9))
    with RunFolder(tmp_path).own() as folder:
        attempt = record("failed", started="2026-12-02T10:00:00+00:00")
        attempt.error = "boom"
        folder.finish(attempt)
    assert read_record(tmp_path / RECORD_FILE).status == "completed"
    assert read_record(tmp_path / ATTEMPT_FILE).error == "boom"
    with RunFolder(tmp_path).own():  # the next attempt files the failed one away
        assert history(tmp_path) == ["2026-12-02T10-00-00+00-00-failed.json"]


def test_a_running_record_whose_process_is_gone_is_interrupted(tmp_path: Path) -> None:
    with RunFolder(tmp_path).own() as folder:
        folder.write(record("running"))
        assert owned(tmp_path) and effective_status(read_record(tmp_path / RECORD_FILE), tmp_path) == "running"
    # the lock is gone as it would be after SIGKILL: the record still says running
    assert effective_status(read_record(tmp_path / RECORD_FILE), tmp_path) == "interrupted"
    with RunFolder(tmp_path).own():
        moved = json.loads((tmp_path / HISTORY_DIR / "2026-12-01T10-00-00+00-00-interrupted.json").read_text())
        assert moved["status"] == "interrupted" and "killed" in moved["error"]


def _hold(path: str, ready, release) -> None:
    with RunFolder(Path(path)).own():
        ready.set()
        release.wait(30)


def test_a_second_process_is_refused_naming_the_owner(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunBusy, match=rf"being run right now by pid {holder.pid} on .* since "):
            RunFolder(tmp_path).own()
    finally:
        release.set()
        holder.join(30)
    with RunFolder(tmp_path).own():  # free once the owner is gone
        pass


def test_records_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_record(tmp_path, record("completed"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # group and others can read it (mkstemp alone gives 0600)


def test_one_bad_record_does_not_hide_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_record(tmp_path / "good", record("completed", 0.8))
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / RECORD_FILE).write_text('{"run_id": "x", "stat')
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / RECORD_FILE).write_bytes(bytes(range(256)))
    write_record(tmp_path / "killed", record("running"))
    found = scan(tmp_path)
    assert [r.compressed["metric"] for r in found.completed] == [0.8]
    assert sorted(p.parent.name for p, _ in found.unreadable) == ["garbage", "truncated"]
    assert found.unfinished == [(tmp_path / "killed" / RECORD_FILE, "interrupted")]
    assert table_main(["--runs", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "0.8000" in out
    assert str(tmp_path / "garbage" / RECORD_FILE) in err and "utf-8" in err  # names the file and the reason
    assert "interrupted run (left out)" in err


class Killed(BaseException):
    """Stands for SIGKILL at one point of a swap: nothing after it runs."""


def completed_folder_with(tmp_path: Path, model: str) -> Path:
    folder = tmp_path / "runs" / "abc"
    write_record(folder, record("completed", 0.9))
    (folder / "model.txt").write_text(model)
    (folder / "plot.png").write_text("the old attempt's plot")
    (folder / "cli.log").write_text("Hydra's job log of the run")
    return folder


def stage_attempt(folder: RunFolder, model: str) -> RunRecord:
    attempt = record("running", 0.7, started="2026-12-02T10:00:00+00:00")
    folder.write(attempt)
    (folder.staging / "model.txt").write_text(model)
    attempt.status = "completed"
    return attempt


@pytest.mark.parametrize("one_step", [True, False], ids=["renameat2", "two-renames"])
def test_a_completed_attempt_replaces_the_run_folder_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_step: bool) -> None:
    if not one_step:
        monkeypatch.setattr(run_folder, "exchange", lambda a, b: False)
    path = completed_folder_with(tmp_path, "old")
    with RunFolder(path).own() as folder:
        assert folder.staging.is_dir() and not any(folder.staging.iterdir())
        attempt = stage_attempt(folder, "new")
        assert (path / "model.txt").read_text() == "old"  # nothing of the attempt in the run folder before it completes
        folder.finish(attempt)
        assert owned(path)  # the lock is beside the folder: the swap does not take it away
        folder.finish(record("interrupted"))  # a signal that arrives once the attempt is in place changes nothing
    assert read_record(path / RECORD_FILE).compressed["metric"] == 0.7 and (path / "model.txt").read_text() == "new"
    assert not (path / "plot.png").exists() and not (path / ATTEMPT_FILE).exists()  # nothing left of the replaced attempt
    assert history(path) == ["2026-12-01T10-00-00+00-00-completed.json"]
    assert (path / "cli.log").read_text() == "Hydra's job log of the run"  # the run's log goes on in the new folder
    assert not folder.staging.exists()
    assert [r.run_id for r in scan(tmp_path / "runs").completed] == ["abc"]  # the attempts' folder is not a run


def test_an_attempt_killed_before_it_completes_leaves_the_run_folder_as_it_was(tmp_path: Path) -> None:
    path = completed_folder_with(tmp_path, "old")
    with RunFolder(path).own() as folder:
        stage_attempt(folder, "half-written")  # then SIGKILL: no finish
    assert (path / "model.txt").read_text() == "old" and read_record(path / RECORD_FILE).compressed["metric"] == 0.9
    with RunFolder(path).own() as folder:
        assert not any(folder.staging.iterdir())  # the killed attempt's files are gone
        assert history(path) == ["2026-12-02T10-00-00+00-00-interrupted.json"]  # its record says what happened
    assert (path / "model.txt").read_text() == "old"


@pytest.mark.parametrize("kill_at", ["between the renames", "before history moves"])
def test_a_swap_cut_short_is_completed_by_the_next_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: str) -> None:
    path = completed_folder_with(tmp_path, "old")
    folder = RunFolder(path)
    if kill_at == "between the renames":
        monkeypatch.setattr(run_folder, "exchange", lambda a, b: False)
        real = os.replace

        def replace(src, dst):
            if Path(src) == folder.staging:
                raise Killed
            real(src, dst)

        monkeypatch.setattr(run_folder.os, "replace", replace)
    else:
        monkeypatch.setattr(RunFolder, "_carry_over", lambda self, replaced: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed), folder.own():
        folder.finish(stage_attempt(folder, "new"))
    monkeypatch.undo()
    with RunFolder(path).own():
        pass
    assert read_record(path / RECORD_FILE).compressed["metric"] == 0.7 and (path / "model.txt").read_text() == "new"
    assert history(path) == ["2026-12-01T10-00-00+00-00-completed.json"]  # no record lost
    assert not (path.parent / ".attempts" / "abc" / "aside").exists()


def test_only_a_completed_folder_may_be_read(tmp_path: Path) -> None:
    write_record(tmp_path, record("failed"))
    with pytest.raises(ConfigError, match=r"status is failed, so its files are no result to read; run the same command again"):
        completed_folder(tmp_path)
    write_record(tmp_path, record("completed"))
    assert completed_folder(tmp_path).status == "completed"


def test_a_killed_writers_temporaries_go_at_the_next_write_and_a_live_ones_stay(tmp_path: Path) -> None:
    """A SIGKILL mid-save leaves ``.<name>.*.tmp`` beside the target; the next atomic write of it removes what has
    been untouched for an hour (a writer's file, or folder, is touched every few seconds), nothing else."""
    import os
    import time

    from torch import nn

    from trimlab.checkpoints import save_checkpoint

    target = tmp_path / "cache" / "dense" / "m-d-abc.safetensors"
    target.parent.mkdir(parents=True)
    dead_file = target.parent / f".{target.name}.k1ll3d.tmp"
    dead_folder = target.parent / f".{target.name}.f0ld3r.tmp"
    live = target.parent / f".{target.name}.wr1t1ng.tmp"
    other = target.parent / ".other.safetensors.k1ll3d.tmp"
    for path in (dead_file, live, other):
        path.write_bytes(b"half a checkpoint")
    dead_folder.mkdir()
    (dead_folder / "weights.safetensors").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for path in (dead_file, dead_folder, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    save_checkpoint(nn.Linear(2, 2), target)
    assert target.is_file()
    assert not dead_file.exists() and not dead_folder.exists()
    assert live.exists() and other.exists()  # a live writer's; another target's
