"""A run's folder: who owns it now, where this attempt's record goes, and what is kept.

One process owns a run folder at a time: it holds an advisory lock on
``.owner`` (which names it: pid, host, start), and the kernel drops the lock
when the process ends, however it ends. So a ``running`` record in a folder
nobody owns was interrupted (SIGKILL, a full disk, a lost node), and a second
process on the same config is refused with the owner's name instead of
racing it.

A completed result is never overwritten by an attempt: a forced rerun writes
``attempt.json`` beside ``record.json`` and takes its place only when it
completes; the earlier record then moves to ``history/``. Earlier attempts
that did not complete move to ``history/`` too, so every attempt leaves a
record that says what happened.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO

from trimlab.config import ConfigError
from trimlab.results.record import RECORD_FILE, RunRecord, now, read_record, write_record

log = logging.getLogger(__name__)

OWNER_FILE = ".owner"
ATTEMPT_FILE = "attempt.json"
HISTORY_DIR = "history"


class RunBusy(ConfigError):
    """Another live process owns this run folder."""


class RunFolder:
    """The folder of one run id; :meth:`own` it before writing anything in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._owner: IO[str] | None = None
        self._record_name = RECORD_FILE

    def completed(self) -> RunRecord | None:
        """The folder's completed record, if it has one."""
        path = self.path / RECORD_FILE
        if not path.exists():
            return None
        record = read_record(path)
        return record if record.status == "completed" else None

    def own(self) -> RunFolder:
        """Take the folder (``with folder.own():``), or raise :class:`RunBusy` naming the process that has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / OWNER_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RunBusy(
                f"run {self.path.name} is being run right now by {owner} (lock {self.path / OWNER_FILE}); "
                "wait for it to finish (a rerun then skips it), or stop that process first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {now()} ({' '.join(sys.argv)[:300]})")
        handle.flush()
        self._owner = handle
        self._file_away_earlier_attempts()
        return self

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owner is not None:
            fcntl.flock(self._owner, fcntl.LOCK_UN)
            self._owner.close()
            self._owner = None

    def write(self, record: RunRecord) -> Path:
        """Write this attempt's record: ``record.json``, or ``attempt.json`` while a completed record is kept."""
        return write_record(self.path, record, self._record_name)

    def finish(self, record: RunRecord) -> Path:
        """Write the attempt's last record; a completed one becomes ``record.json``, the one it replaces goes to history."""
        if record.status == "completed" and self._record_name != RECORD_FILE:
            self._to_history(self.path / RECORD_FILE)
            path = write_record(self.path, record)
            (self.path / self._record_name).unlink(missing_ok=True)
            self._record_name = RECORD_FILE
            return path
        return self.write(record)

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
        name = f"{stamp.replace(':', '-')}-{status}"
        target = history / f"{name}.json"
        n = 1
        while target.exists():
            target = history / f"{name}-{n}.json"
            n += 1
        return target


def owned(run_dir: Path) -> bool:
    """True while a live process owns the folder (holds its lock)."""
    path = run_dir / OWNER_FILE
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
