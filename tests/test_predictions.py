"""Each run stores its per-example test predictions; the metrics recomputed from them are the recorded ones."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from trimlab.results.collect import scan
from trimlab.results.predictions import PREDICTIONS_FILE, Predictions, load_predictions, read_predictions, score, write_predictions
from trimlab.results.record import RECORD_FILE, RunRecord
from trimlab.run import run
from trimlab.training import task_metric


@pytest.mark.parametrize("method", [("method=dense", "budget=none"), ("method=pwlq", "budget=bits_4")], ids=["dense", "pwlq"])
def test_a_run_stores_its_test_predictions_and_they_give_the_recorded_metrics(
    compose_cfg: Callable[..., DictConfig], tiny_run: tuple[str, ...], tmp_path: Path, method: tuple[str, ...]
) -> None:
    overrides = [o for o in tiny_run if not o.startswith(("method=", "budget="))]
    record = run(compose_cfg(*overrides, *method))
    assert record.artifacts["predictions"] == PREDICTIONS_FILE
    folders = scan(tmp_path / "runs").folders
    run_dir = folders[record.run_id]
    assert not list(run_dir.glob(".predictions*"))  # no temporary file left
    predictions = read_predictions(run_dir / PREDICTIONS_FILE)
    assert predictions.metric == record.dense["metric_name"] == "accuracy"
    assert len(predictions.labels) == len(predictions.dense) == len(predictions.compressed) == 64  # dataset.max_eval_examples
    assert score(predictions.metric, predictions.labels, predictions.dense) == pytest.approx(record.dense["metric"], abs=1e-6)
    assert score(predictions.metric, predictions.labels, predictions.compressed) == pytest.approx(record.compressed["metric"], abs=1e-6)
    if record.method == "dense":
        assert np.array_equal(predictions.compressed, predictions.dense)
    assert json.loads((run_dir / RECORD_FILE).read_text())["artifacts"]["predictions"] == PREDICTIONS_FILE
    assert load_predictions([record], folders).keys() == {record.run_id}


def test_predictions_round_trip_and_missing_or_unreadable_files_are_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    written = Predictions("pearson", np.linspace(0, 5, 7, dtype=np.float32), np.arange(7, dtype=np.float32), np.ones(7, dtype=np.float32))
    name = write_predictions(tmp_path / "a", written)
    back = read_predictions(tmp_path / "a" / name)
    assert back.metric == "pearson" and all(np.array_equal(getattr(back, k), getattr(written, k)) for k in ("labels", "dense", "compressed"))

    def record(rid: str, artifacts: dict[str, str]) -> RunRecord:
        return RunRecord(run_id=rid, status="completed", model="m", dataset="d", method="x", budget={}, seed=0, config={}, artifacts=artifacts)

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / PREDICTIONS_FILE).write_text("not numpy")
    records = [record("a", {"predictions": name}), record("b", {}), record("c", {"predictions": PREDICTIONS_FILE})]
    with caplog.at_level(logging.WARNING):
        found = load_predictions(records, {"a": tmp_path / "a", "b": tmp_path / "b", "c": tmp_path / "c"})
    assert found.keys() == {"a"}
    assert "predictions of run c left out" in caplog.text


def test_metrics_from_predictions_match_torchmetrics() -> None:
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    values, targets = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    for metric, y, p in (("accuracy", labels, preds), ("agreement", labels, preds), ("f1", labels, preds), ("pearson", targets, values)):
        expected = task_metric(metric, 1 if metric == "pearson" else 2)(torch.from_numpy(p), torch.from_numpy(y))
        assert score(metric, y, p) == pytest.approx(float(expected), abs=1e-6), metric
    assert score("f1", np.zeros(4), np.zeros(4)) == 0.0  # no positives at all: 0, as torchmetrics gives


class Linear(torch.nn.Module):
    """A classifier on ``pixel_values`` with trimlab's output shape (``.logits``)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(4, 5)

    def forward(self, batch: dict[str, torch.Tensor]) -> SimpleNamespace:
        return SimpleNamespace(logits=self.net(batch["pixel_values"]))


def test_unlabelled_data_take_the_reference_models_predictions_as_labels() -> None:
    import lightning.pytorch as pl

    from trimlab.training import ClassifierModule

    reference, model = Linear(0), Linear(1)
    pixels = torch.randn(40, 4)
    loader = torch.utils.data.DataLoader([{"pixel_values": x} for x in pixels], batch_size=16)
    module = ClassifierModule(model, 0, "agreement", reference=reference)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metric = trainer.test(module, dataloaders=loader, verbose=False)[0]["test/agreement"]
    labels, preds = module.test_predictions()
    with torch.no_grad():
        assert torch.equal(labels, reference.net(pixels).argmax(-1)) and torch.equal(preds, model.net(pixels).argmax(-1))
    assert score("agreement", labels.numpy(), preds.numpy()) == pytest.approx(metric, abs=1e-6)


class Counting(Linear):
    """:class:`Linear` that counts the batches it runs on."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> SimpleNamespace:
        self.calls += 1
        return super().forward(batch)


def test_agreement_takes_known_reference_predictions_and_runs_a_self_reference_once() -> None:
    import lightning.pytorch as pl

    from trimlab.training import ClassifierModule

    pixels = torch.randn(40, 4)
    loader = torch.utils.data.DataLoader([{"pixel_values": x} for x in pixels], batch_size=16)

    def test(module: ClassifierModule) -> tuple[float, torch.Tensor, torch.Tensor]:
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        metric = trainer.test(module, dataloaders=loader, verbose=False)[0]["test/agreement"]
        return (metric, *module.test_predictions())

    reference = Counting(0)
    metric, labels, preds = test(ClassifierModule(reference, 0, "agreement", reference=reference))
    assert reference.calls == 3 and metric == 1.0 and torch.equal(labels, preds)  # one pass over 3 batches, not two

    model = Linear(1)
    ran = test(ClassifierModule(model, 0, "agreement", reference=reference))
    reference.calls = 0
    known = test(ClassifierModule(model, 0, "agreement", reference=reference, reference_preds=labels))
    assert reference.calls == 0
    assert known[0] == ran[0] < 1.0 and torch.equal(known[1], ran[1]) and torch.equal(known[2], ran[2])
