"""The dense test evaluation cache: a hit gives the numbers a miss gives; any changed input is a miss."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from trimlab.dense_evaluation import DENSE_EVALUATIONS, evaluation_key, load_evaluation, save_evaluation
from trimlab.results.predictions import PREDICTIONS_FILE, read_predictions
from trimlab.results.record import environment, source_digest
from trimlab.run import run


def test_a_cache_hit_gives_the_record_and_predictions_of_a_miss(
    compose_cfg: Callable[..., DictConfig], tiny_run: tuple[str, ...], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [o for o in tiny_run if not o.startswith(("method=", "budget="))] + ["method=pwlq", "budget=bits_4"]
    missed = run(compose_cfg(*overrides))
    assert len(list((tmp_path / "cache" / DENSE_EVALUATIONS).glob("*.npz"))) == 1
    missed_preds = read_predictions(tmp_path / "runs" / missed.run_id / PREDICTIONS_FILE)
    with caplog.at_level(logging.INFO, logger="trimlab.run"):
        hit = run(compose_cfg(*overrides, "force=true"))
    assert "dense test evaluation taken from" in caplog.text
    hit_preds = read_predictions(tmp_path / "runs" / hit.run_id / PREDICTIONS_FILE)
    assert hit.run_id == missed.run_id
    for key in ("metric", "flops", "params", "size_mb"):
        assert hit.dense[key] == missed.dense[key] and hit.compressed[key] == missed.compressed[key], key
    for field in ("labels", "dense", "compressed"):
        assert np.array_equal(getattr(hit_preds, field), getattr(missed_preds, field)), field


def test_a_changed_weight_batch_or_setting_is_another_key_and_an_entry_is_read_only_under_its_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    batches = [{"pixel_values": torch.randn(2, 4), "labels": torch.tensor([0, 2])}]
    settings = {"metric": "accuracy", "flops_batches": 4}
    key = evaluation_key(model, batches, settings)
    assert evaluation_key(model, [dict(b) for b in batches], dict(settings)) == key
    changed_batch = [{**batches[0], "labels": torch.tensor([0, 1])}]
    assert evaluation_key(model, changed_batch, settings) != key
    assert evaluation_key(model, batches, {**settings, "flops_batches": 2}) != key
    with torch.no_grad():
        model.bias[0] += 1e-6
    assert evaluation_key(model, batches, settings) != key

    evaluation = ({"metric": 0.5, "metric_name": "accuracy"}, np.array([0, 2]), np.array([0, 1]))
    save_evaluation(tmp_path, key, evaluation)
    metrics, targets, preds = load_evaluation(tmp_path, key)
    assert metrics == evaluation[0] and np.array_equal(targets, evaluation[1]) and np.array_equal(preds, evaluation[2])
    assert load_evaluation(tmp_path, "0" * 64) is None
    (tmp_path / f"{key}.npz").rename(tmp_path / f"{'1' * 64}.npz")  # an entry under another name than its key
    assert load_evaluation(tmp_path, "1" * 64) is None


def test_an_edit_to_trimlabs_source_is_another_key_committed_or_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key hashes the package's source files, not the git commit (an uncommitted edit keeps the commit)."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "engine.py").write_text("SCALE = 1\n")
    (tmp_path / "pkg" / "sub" / "metric.py").write_text("def f(): ...\n")
    before = source_digest(tmp_path / "pkg")
    assert source_digest.__wrapped__(tmp_path / "pkg") == before
    (tmp_path / "pkg" / "sub" / "metric.py").write_text("def f(): return 1\n")
    assert source_digest.__wrapped__(tmp_path / "pkg") != before
    (tmp_path / "pkg" / "sub" / "metric.py").write_text("def f(): ...\n")
    (tmp_path / "pkg" / "sub" / "metric.py").rename(tmp_path / "pkg" / "sub" / "metrics.py")
    assert source_digest.__wrapped__(tmp_path / "pkg") != before  # a moved file is another program

    assert environment()["trimlab_source"] == source_digest()  # the record names the source it ran
    model, batches = torch.nn.Linear(4, 3), [{"pixel_values": torch.randn(2, 4)}]
    keys = {}
    for commit, source in (("a288c2d", "s1"), ("7d6bff0", "s1"), ("7d6bff0", "s2")):  # commits differ, or the source does
        monkeypatch.setattr("trimlab.dense_evaluation.environment", lambda c=commit, s=source: {"git_commit": c, "trimlab_source": s})
        keys[commit, source] = evaluation_key(model, batches, {})
    assert keys["a288c2d", "s1"] == keys["7d6bff0", "s1"] != keys["7d6bff0", "s2"]
