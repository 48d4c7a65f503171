"""benchmarks/deploy.py's rows on a tiny random BERT: every variant at every batch size, the keys a deployer reads (no timings asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_api import small_bert, text_batches
from trimlab.models.convert import to_trimlab

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from deploy import PEER, ROW_KEYS, VARIANTS, build_variants, markdown, measure_rows, singles  # noqa: E402  (benchmarks/deploy.py)


def test_every_variant_gets_a_row_per_batch_size_with_the_deployers_keys(tmp_path: Path) -> None:
    batches = text_batches(4, num_labels=2)
    dense = to_trimlab(small_bert(num_labels=2))
    examples = singles(batches[2:], 16)
    variants = build_variants(dense, batches[:2], batches[:2], batches[2:], tmp_path, threads=1)
    rows = measure_rows(variants, examples, timed=4, batch_sizes=[1, 4], repeats=1, threads=1, model="tiny", dataset="random")
    assert [(r["variant"], r["batch"]) for r in rows] == [(v, b) for b in (1, 4) for v in VARIANTS]
    for row in rows:
        assert tuple(row) == ROW_KEYS
        json.dumps(row)
        low, high = row["accuracy_ci"]
        assert 0 <= low <= row["accuracy"] <= high <= 1
        assert row["size_mb"] > 0 and row["latency_ms"] > 0
    by = {(r["variant"], r["batch"]): r for r in rows}
    assert by[("dense_ort_int8", 1)]["speedup_vs_peer"] == 1.0 and by[("dense", 4)]["speedup_vs_dense"] == 1.0
    assert by[("fisher_ltp_w8a8", 1)]["engine"] == "onnxruntime_qdq_gathered"
    assert by[("fisher_ltp_w8a8", 4)]["engine"] == "onnxruntime_qdq_masked"
    assert by[("pwlq_w8_int", 1)]["engine"] == "onnxruntime_qdq_two_branch"
    assert by[("fisher", 1)]["flops_ratio"] < 0.8 and by[("fisher_ltp_w8a8", 1)]["flops_ratio"] <= by[("fisher", 1)]["flops_ratio"]
    assert by[("dense_ort", 4)]["agreement"] == 1.0  # the float graph predicts what PyTorch does
    assert markdown(rows).count("\n") == len(rows) + 1


def test_a_variant_list_builds_only_what_those_need_and_their_rows_leave_missing_speedups_out(tmp_path: Path) -> None:
    batches = text_batches(4, num_labels=2)
    dense = to_trimlab(small_bert(num_labels=2))
    with pytest.raises(ValueError, match="variants fisher_w4: not among dense, dense_ort"):
        build_variants(dense, batches[:2], batches[:2], batches[2:], tmp_path, threads=1, variants=["fisher_w4"])
    variants = build_variants(dense, batches[:2], batches[:2], batches[2:], tmp_path, threads=1, variants=["fisher_w8a8", PEER])
    assert [v.name for v in variants] == [PEER, "fisher_w8a8"]  # in VARIANTS' order
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["dense.onnx", "dense_ort_int8.onnx", "fisher_w8a8.onnx"]
    assert all(v.engine.path in tmp_path.iterdir() for v in variants)  # the files deploy_profile.py profiles
    rows = measure_rows(variants, singles(batches[2:], 8), timed=2, batch_sizes=[1], repeats=1, threads=1, model="tiny", dataset="random")
    assert all(r["speedup_vs_dense"] is None and r["dense_accuracy"] is None for r in rows)
    assert [r["speedup_vs_peer"] is None for r in rows] == [False, False] and rows[0]["speedup_vs_peer"] == 1.0
    assert markdown(rows).count("| – |") == 2
    (signed,) = build_variants(dense, batches[:2], batches[:2], batches[2:], tmp_path / "s8", threads=1, variants=["fisher_w8a8"], int8_weights=True)
    assert signed.engine.name == "onnxruntime_qdq_s8"


def test_a_trained_ltp_row_trains_ltp_on_the_fisher_model_and_exports_what_it_learned(tmp_path: Path) -> None:
    batches = text_batches(4, num_labels=2)
    dense = to_trimlab(small_bert(num_labels=2))
    (variant,) = build_variants(dense, batches[:2], batches[:2], batches[2:], tmp_path, threads=1, ltp_target=0.9,
                                variants=["fisher_ltp_w8a8"], ltp_train=batches[:2], ltp_epochs=1.0)  # fmt: skip
    assert variant.note.startswith("LTP trained on the Fisher model")
    thresholds = variant.reference.encoder.token_selector
    assert thresholds is not None and variant.flops_ratio < 0.8  # Fisher's 0.5 times LTP's share
    examples = singles(batches[2:], 4)
    (row,) = measure_rows([variant], examples, timed=1, batch_sizes=[1], repeats=1, threads=1, model="tiny", dataset="random")
    assert row["engine"] == "onnxruntime_qdq_gathered" and row["agreement"] >= 0.75
