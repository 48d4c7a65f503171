"""Each run's per-example test predictions (``predictions.npz``), and the task metrics recomputed from them.

A metric alone cannot say whether compressed − dense is more than the noise
of a small test set; the predictions of both models on the same examples can
(:mod:`trimlab.results.intervals`). One small file per run holds, in the test
split's order, the labels and the dense and compressed predictions (class ids,
or values for regression). For unlabelled data (metric ``agreement``) the
labels are the dense model's own predictions, as the metric has them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trimlab.files import atomic_path
from trimlab.results.record import RunRecord

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.npz"
PREDICTIONS_KEY = "predictions"
"""The key of ``record.artifacts`` that names the file."""


@dataclass(frozen=True)
class Predictions:
    """One run's test split: labels and both models' predictions, example by example."""

    metric: str
    labels: np.ndarray
    dense: np.ndarray
    compressed: np.ndarray


def write_predictions(run_dir: Path, predictions: Predictions) -> str:
    """Write ``run_dir/predictions.npz`` atomically; returns its name for ``record.artifacts``."""
    with atomic_path(run_dir / PREDICTIONS_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, metric=np.array(predictions.metric), labels=predictions.labels, dense=predictions.dense, compressed=predictions.compressed
        )
    return PREDICTIONS_FILE


def read_predictions(path: Path) -> Predictions:
    """Load a predictions file (no pickles: the file may come from anyone's run folder)."""
    with np.load(path, allow_pickle=False) as data:
        return Predictions(str(data["metric"]), data["labels"], data["dense"], data["compressed"])


def load_predictions(records: Iterable[RunRecord], folders: Mapping[str, Path]) -> dict[str, Predictions]:
    """Run id → predictions, for the records whose folder holds their file; older runs and unreadable files are left out."""
    found = {}
    for record in records:
        name, folder = record.artifacts.get(PREDICTIONS_KEY), folders.get(record.run_id)
        if name is None or folder is None:
            continue
        try:
            found[record.run_id] = read_predictions(folder / name)
        except (OSError, ValueError, KeyError) as err:
            log.warning("predictions of run %s left out: %s is unreadable (%s)", record.run_id, folder / name, err)
    return found


def score(metric: str, labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """The task metric along the last axis (so many resamples score at once), as :func:`trimlab.training.task_metric` computes it."""
    if metric in ("accuracy", "agreement"):
        return np.mean(labels == preds, axis=-1)
    if metric == "f1":
        true, positive = labels == 1, preds == 1
        tp = np.sum(true & positive, axis=-1)
        wrong = np.sum(true ^ positive, axis=-1)
        denominator = 2 * tp + wrong
        return np.divide(2 * tp, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    if metric == "pearson":
        x, y = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
        x, y = x - x.mean(axis=-1, keepdims=True), y - y.mean(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sum(x * y, axis=-1) / np.sqrt(np.sum(x * x, axis=-1) * np.sum(y * y, axis=-1))
    raise ValueError(f"unknown metric {metric!r}; use accuracy, f1, pearson or agreement")
