"""Files that outlive a crash: atomic writes others can read, and checks that a folder can take them.

A temporary file renamed over its target never leaves half a file behind; its
mode follows the umask, as a plain ``open`` would (``mkstemp`` alone gives
0600, which hides records and checkpoints from the rest of a group).
Writability and free space are checked before the expensive work, so a
read-only folder or a full disk fails in seconds, not after an hour of
fine-tuning.
A fingerprint hashes every byte it covers; each file's digest is cached by its
(path, size, mtime, inode), so large weights are read once, not on every run.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trimlab.config import ConfigError

AT_FDCWD, RENAME_EXCHANGE = -100, 2
CHUNK = 2**22
RACY_NS = 2 * 10**9
"""A file modified this recently may change again within the same mtime tick: its digest is not cached."""
STALE_AFTER_S = 3600
"""A temporary of an atomic write untouched this long belongs to a writer that died (a write takes seconds)."""
FINGERPRINT_CACHE = "fingerprints"
"""Folder, under a cache folder, of the digests :func:`fingerprint` has computed."""


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it replaces ``path`` whole, readable as the umask allows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; on success it replaces ``path`` whole (files flushed to disk first).

    An existing ``path`` is moved aside, then removed, so readers see the old
    folder or the new one, never a mix (a moment without either is possible).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(path: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it (``.<name>.*.tmp`` / ``.old``, untouched for
    ``older_than_s``), so a SIGKILL mid-save costs disk space until the next write, not for ever."""
    removed = []
    cutoff = time.time() - older_than_s
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if leftover.suffix not in (".tmp", ".old"):
            continue
        try:
            if leftover.lstat().st_mtime >= cutoff:
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        except OSError:
            continue  # another process got there first, or it is not ours to remove
        removed.append(leftover)
    return removed


def exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or disk cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` and a file in it now; a config key that points where nothing can be written fails naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"{key}={folder} is not a writable folder ({err.strerror or err}); point {key} at a folder you can write") from err


def check_free_space(folder: Path, needed: int, key: str) -> None:
    """Refuse to start work whose output (``needed`` bytes) the disk under ``folder`` cannot hold."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(
            f"{key}={folder} has {free / 2**20:,.0f} MiB free but this run needs about {needed / 2**20:,.0f} MiB there "
            f"(the fine-tuned checkpoint); free some space or point {key} at another disk"
        )


def fingerprint(path: Path, cache: Path | None = None) -> str:
    """A short hash of the content of a file, or of a folder: every file's relative name and every byte of it.

    Where it lies is left out (a copy elsewhere has the same fingerprint). The
    digest of each file is kept in ``cache/fingerprints`` (one small JSON file
    per fingerprinted path) with the file's size, mtime and inode, so an
    unchanged file is not read again; a file changed in place gets a new mtime
    (or size), so its stale digest is never used (a file changed in the last
    two seconds is not cached: a second change could keep its mtime).
    """
    root = Path(path).expanduser().resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    store = None if cache is None else cache / FINGERPRINT_CACHE / f"{hashlib.sha1(bytes(root)).hexdigest()}.json"
    known = _read_digests(store)
    digests = {}
    for file in files:
        name = "" if file == root else file.relative_to(root).as_posix()  # a single file: its bytes alone
        stat = file.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_dev, stat.st_ino]
        entry = known.get(name)
        digests[name] = entry if entry is not None and entry[:-1] == key else [*key, file_digest(file)]
    settled = time.time_ns() - RACY_NS
    kept = {name: entry for name, entry in digests.items() if entry[1] < settled}
    if store is not None and kept != known:
        try:
            atomic_write_text(store, json.dumps(kept))
        except OSError:  # a cache that cannot be written costs time, not correctness
            pass
    digest = hashlib.sha256()
    for name, entry in digests.items():
        digest.update(f"{name}\0{entry[-1]}\0".encode())
    return digest.hexdigest()[:16]


def file_digest(file: Path) -> str:
    """SHA-256 of every byte of ``file``."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_digests(store: Path | None) -> dict[str, list]:
    try:
        return json.loads(store.read_text()) if store is not None else {}
    except (OSError, ValueError):
        return {}
