"""The dense model's test evaluation, cached by content, so the cells of a block that share a dense model and a
test set evaluate it once (a PWLQ block runs 15 cells per model; the dense pass was a third of each).

An entry is read only under its key, a hash of everything its numbers come from: the model's structure and
every weight and buffer, every test batch's tensors, the evaluation settings, and the software and hardware
that compute them (the record's ``environment``: versions, CPU, threads and the content of trimlab's own
source files; not its git commit, which misses uncommitted edits and is empty outside a clone). Any changed
input is a new key, so a stale entry is never used; entries are written whole (:func:`trimlab.files.atomic_path`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trimlab.files import atomic_path
from trimlab.results.record import environment

log = logging.getLogger(__name__)

DENSE_EVALUATIONS = "dense_evaluations"
"""The folder of entries under the run's ``paths.cache_dir``."""

Evaluation = tuple[dict[str, Any], np.ndarray, np.ndarray]
"""Metrics, targets and predictions, as :func:`trimlab.engine.evaluate_predicting` returns them."""


def evaluation_key(model: nn.Module, batches: Iterable[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    """sha256 of ``model`` (structure, weights, buffers), every batch's content, ``settings`` and the environment (trimlab's source included)."""
    software = {k: v for k, v in environment().items() if k != "git_commit"}  # the source's content is in it: trimlab_source
    digest = hashlib.sha256()
    digest.update(json.dumps({"settings": dict(settings), "environment": software, "model": repr(model)}, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        _update(digest, name, tensor)
    for batch in batches:
        for name in sorted(batch):
            _update(digest, name, batch[name])
    return digest.hexdigest()


def _update(digest: Any, name: str, value: Any) -> None:
    digest.update(name.encode())
    if isinstance(value, torch.Tensor):
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        digest.update(repr(value).encode())


def load_evaluation(folder: Path, key: str) -> Evaluation | None:
    """The entry stored under ``key``, or None (none stored, or unreadable)."""
    path = folder / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            return json.loads(str(stored["metrics"])), stored["targets"], stored["preds"]
    except (OSError, ValueError, KeyError) as err:
        log.warning("dense evaluation cache %s unreadable (%s); evaluating again", path, err)
        return None


def save_evaluation(folder: Path, key: str, evaluation: Evaluation) -> None:
    """Store ``evaluation`` under ``key``; a disk that fails costs the cache, not the run."""
    metrics, targets, preds = evaluation
    try:
        with atomic_path(folder / f"{key}.npz") as temporary, open(temporary, "wb") as f:
            np.savez(f, key=np.array(key), metrics=np.array(json.dumps(metrics)), targets=targets, preds=preds)
    except OSError as err:
        log.warning("could not cache the dense evaluation in %s (%s)", folder, err)
