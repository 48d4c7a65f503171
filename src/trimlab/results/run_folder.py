"""A run's folder: who owns it now, where an attempt writes, and how a completed attempt replaces the last one.

One process owns a run folder at a time: it holds an advisory lock on the
``owner`` file beside the folder (``<runs>/.attempts/<id>/owner``, which names
it: pid, host, start), and the kernel drops the lock when the process ends,
however it ends. So a ``running`` record in a folder nobody owns was
interrupted (SIGKILL, a full disk, a lost node), and a second process on the
same config is refused with the owner's name instead of racing it.

The run folder holds one complete attempt: its record, model, predictions and
artifacts agree. An attempt writes its files into a staging folder
(``<runs>/.attempts/<id>/staging``) and its progress record into the run folder
(``record.json``, or ``attempt.json`` while a completed record is kept there).
Only when it completes does the staging folder replace the run folder, in one
step (``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, which the next
:meth:`RunFolder.own` completes if a crash fell between them). The replaced
completed record moves to ``history/``, as do the records of attempts that did
not complete, so every attempt leaves a record that says what happened;
``history/``, Hydra's ``.hydra/`` and its job logs pass to the new folder. The
files of an attempt that did not complete stay in its staging folder until the
next attempt starts. Training states (``<runs>/.attempts/<id>/resume``, see
:mod:`trimlab.resumable`) outlive every attempt but the one that completes.

Hydra's job folder is ``<runs>/.attempts/<id>/job``, not the run folder, so an
invocation refused by trimlab's checks leaves no run folder behind (the CLI
removes the job folder): only an owner adopts Hydra's files into the run folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO

from trimlab.config import ConfigError
from trimlab.files import exchange
from trimlab.interrupt import signals_deferred
from trimlab.results.record import RECORD_FILE, RunRecord, now, read_record, write_record

log = logging.getLogger(__name__)

ATTEMPTS_DIR = ".attempts"
"""Beside the run folders: per run id, the lock file and the staging folder, which must outlive the swap."""
OWNER_FILE = "owner"
STAGING_DIR = "staging"
ASIDE_DIR = "aside"
"""Where the two-rename swap moves the replaced run folder (and where the next owner finds it after a crash)."""
RESUME_DIR = "resume"
"""Where an attempt's training phases keep their states for the next attempt of the same run."""
ATTEMPT_FILE = "attempt.json"
HISTORY_DIR = "history"
LASTING = (HISTORY_DIR, ".hydra")
"""What a completed attempt's folder takes over from the one it replaces (and ``*.log``, Hydra's job logs)."""


def attempts_dir(run_dir: Path) -> Path:
    """The folder beside ``run_dir`` that holds its lock and staging folder."""
    return run_dir.parent / ATTEMPTS_DIR / run_dir.name


def resume_dir(run_dir: Path) -> Path:
    """Where the run's training phases keep their states between attempts (every process of a DDP run uses this one)."""
    return attempts_dir(run_dir) / RESUME_DIR


class RunBusy(ConfigError):
    """Another live process owns this run folder."""


class RunFolder:
    """The folder of one run id; :meth:`own` it before writing anything; an attempt's files go to :attr:`staging`."""

    def __init__(self, path: Path, hydra_job: Path | None = None) -> None:
        self.path = path
        self.hydra_job = hydra_job
        """Hydra's job folder of this process (its ``.hydra/`` and job log), adopted by :meth:`own`."""
        self.staging = attempts_dir(path) / STAGING_DIR
        self._owner: IO[str] | None = None
        self._record_name = RECORD_FILE
        self._swapped = False

    def completed(self) -> RunRecord | None:
        """The folder's completed record, if it has one."""
        path = self.path / RECORD_FILE
        if not path.exists():
            return None
        record = read_record(path)
        return record if record.status == "completed" else None

    def own(self) -> RunFolder:
        """Take the folder (``with folder.own():``), or raise :class:`RunBusy` naming the process that has it.

        The owner finishes or undoes what a crashed attempt left (a swap cut
        short, a staging folder), files earlier attempts' records away and
        starts an empty staging folder.
        """
        lock = attempts_dir(self.path) / OWNER_FILE
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RunBusy(
                f"run {self.path.name} is being run right now by {owner} (lock {lock}); "
                "wait for it to finish (a rerun then skips it), or stop that process first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()} ({' '.join(sys.argv)[:300]})")
        handle.flush()
        self._owner = handle
        self._swapped = False
        self._recover()
        self.path.mkdir(parents=True, exist_ok=True)
        self._adopt_hydra_job()
        self._file_away_earlier_attempts()
        self.staging.mkdir()
        return self

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owner is not None:
            with contextlib.suppress(OSError):
                self.staging.rmdir()  # only when no file was staged
            fcntl.flock(self._owner, fcntl.LOCK_UN)
            self._owner.close()
            self._owner = None

    def write(self, record: RunRecord) -> Path:
        """Write this attempt's record: ``record.json``, or ``attempt.json`` while a completed record is kept.
        Once the attempt has completed and replaced the folder, its record stays (a late signal changes nothing)."""
        if self._swapped:
            return self.path / RECORD_FILE
        return write_record(self.path, record, self._record_name)

    def finish(self, record: RunRecord) -> Path:
        """Write the attempt's last record. A completed attempt's staging folder, with this record, replaces the run
        folder in one step; the completed record it replaces goes to history. Any other keeps the last completed one."""
        self._adopt_hydra_job()  # logs that appeared there since the start (DDP's other processes write theirs there)
        if record.status != "completed" or self._swapped:
            return self.write(record)
        write_record(self.staging, record)
        with signals_deferred():
            kept = self.completed()
            if kept is not None:  # copied, so that the folder stays whole until the swap
                target = self.path / HISTORY_DIR / f"{_stamp(kept.started_at or now())}-completed.json"
                if not target.exists():
                    write_record(target.parent, kept, target.name)
            replaced = self.staging
            if not exchange(self.staging, self.path):
                replaced = attempts_dir(self.path) / ASIDE_DIR
                os.replace(self.path, replaced)
                os.replace(self.staging, self.path)
            self._swapped = True
            self._carry_over(replaced)
            shutil.rmtree(replaced)
        shutil.rmtree(resume_dir(self.path), ignore_errors=True)  # the run folder now holds what the training led to
        return self.path / RECORD_FILE

    def _recover(self) -> None:
        """Complete a two-rename swap a crash cut short, keep what a crash left in the replaced folder (history, logs),
        and remove what an attempt that did not complete left in staging."""
        aside = attempts_dir(self.path) / ASIDE_DIR
        if aside.exists() and not self.path.exists():  # moved aside only once the staging folder was complete
            os.replace(self.staging if self.staging.exists() else aside, self.path)
        for leftover in (aside, self.staging):
            if leftover.exists():
                self._carry_over(leftover)
                shutil.rmtree(leftover)

    def _carry_over(self, replaced: Path) -> None:
        """Move what belongs to the run rather than to one attempt (history, Hydra's config and logs) from the replaced
        folder into the run folder; a log still being written moves with its open file."""
        for item in replaced.iterdir():
            if (item.name in LASTING or item.suffix == ".log") and not (self.path / item.name).exists():
                os.replace(item, self.path / item.name)

    def _adopt_hydra_job(self) -> None:
        """Move Hydra's files of this invocation into the run folder: its ``.hydra/`` replaces an earlier one, its
        job log is appended to the run's log, and the open log handler writes on in the run folder."""
        job = self.hydra_job
        if job is None or not job.is_dir() or job.resolve() == self.path.resolve():
            return
        for item in sorted(job.iterdir()):
            target = self.path / item.name
            if item.suffix == ".log":
                if target.exists():
                    with open(target, "ab") as kept, open(item, "rb") as new:
                        shutil.copyfileobj(new, kept)
                    item.unlink()
                else:
                    os.replace(item, target)
                repoint_log_handlers(item, target)
            elif item.is_dir():
                if target.exists():
                    shutil.rmtree(target)
                os.replace(item, target)
        with contextlib.suppress(OSError):
            job.rmdir()

    def _file_away_earlier_attempts(self) -> None:
        """Move what earlier attempts left (not completed) to history; keep a completed record where it is."""
        self._to_history(self.path / ATTEMPT_FILE)
        record_path = self.path / RECORD_FILE
        if record_path.exists():
            try:
                keep = read_record(record_path).status == "completed"
            except ConfigError:
                keep = False  # unreadable: kept in history as it is, never deleted
            if not keep:
                self._to_history(record_path)
        self._record_name = ATTEMPT_FILE if record_path.exists() else RECORD_FILE

    def _to_history(self, path: Path) -> None:
        """Move an earlier record to ``history/<started>-<status>.json``; a ``running`` one is marked interrupted
        (this process owns the folder, so its writer is gone)."""
        if not path.exists():
            return
        try:
            record = read_record(path)
        except ConfigError:
            os.replace(path, self._history_path(now(), "unreadable"))
            return
        if record.status == "running":
            record.status = "interrupted"
            record.error = record.error or "the process ended without finishing its record (killed, out of disk, or its machine lost)"
        kept = write_record(self.path / HISTORY_DIR, record, self._history_path(record.started_at or now(), record.status).name)
        path.unlink()
        if record.status != "completed":
            log.warning("an earlier attempt of run %s %s during %s; its record is kept as %s",
                        self.path.name, record.status, record.stage or "start-up", kept)

    def _history_path(self, stamp: str, status: str) -> Path:
        history = self.path / HISTORY_DIR
        history.mkdir(exist_ok=True)
        name = f"{_stamp(stamp)}-{status}"
        target = history / f"{name}.json"
        n = 1
        while target.exists():
            target = history / f"{name}-{n}.json"
            n += 1
        return target


def repoint_log_handlers(old: Path, new: Path) -> None:
    """File handlers writing to ``old`` write to ``new`` from their next message on."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == old.absolute():
                handler.acquire()
                try:
                    handler.close()
                    handler.baseFilename = str(new.absolute())
                    handler.mode = "a"
                finally:
                    handler.release()


def discard_hydra_job(job: Path) -> None:
    """Remove what Hydra made for an invocation that ran nothing (refused, busy, or completed before): its job
    folder, then the folders above it that it leaves empty, up to the runs folder's parent."""
    if job.name != "job" or job.parent.parent.name != ATTEMPTS_DIR or not job.is_dir():
        return
    for item in job.iterdir():
        if item.suffix == ".log":
            repoint_log_handlers(item, Path(os.devnull))
    shutil.rmtree(job, ignore_errors=True)
    for folder in (job.parent, job.parent.parent, job.parent.parent.parent, job.parent.parent.parent.parent):
        try:
            folder.rmdir()
        except OSError:
            break


def _stamp(started_at: str) -> str:
    return started_at.replace(":", "-")


def completed_folder(run_dir: Path) -> RunRecord:
    """The record of a run folder whose files may be read: it says ``completed`` (anything else is refused)."""
    record = read_record(run_dir / RECORD_FILE)
    status = effective_status(record, run_dir)
    if status != "completed":
        fix = ("wait for it to finish" if status == "running"
               else "run the same command again to resume it (or with force=true), then read it")
        raise ConfigError(f"{run_dir}: the run's status is {status}, so its files are no result to read; {fix}")
    return record


def owned(run_dir: Path) -> bool:
    """True while a live process owns the folder (holds its lock)."""
    path = attempts_dir(run_dir) / OWNER_FILE
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def effective_status(record: RunRecord, run_dir: Path) -> str:
    """The record's status, except that ``running`` with no live owner is ``interrupted``."""
    if record.status != "running":
        return record.status
    return "running" if owned(run_dir) else "interrupted"
