"""Methods composed under one budget: Fisher pruning → LTP → PWLQ in one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trimlab.config import ConfigError
from trimlab.results.plot import pareto_front
from trimlab.run import run

SMALL_VIT = ("experiment=smoke", "model=vit_digits", "dataset=digits")


def test_fisher_ltp_pwlq_splits_one_flops_budget_and_quantizes(compose_cfg) -> None:
    target = 0.4
    record = run(compose_cfg(
        *SMALL_VIT, "method=fisher_ltp_pwlq", f"budget.target={target}", "method.split=0.5", "method.steps.prune.tune=false",
        "method.steps.tokens.soft_epochs=1", "method.steps.tokens.hard_epochs=1", "method.steps.tokens.calibration_examples=64",
    ))
    assert record.status == "completed"
    c = record.compressed
    assert c["prune/budget_target"] == pytest.approx(target**0.5)  # Fisher: its share, sqrt(target) at split 0.5
    assert target < c["tokens/budget_target"] < 1.0  # LTP: what remains after Fisher, relative to the pruned model
    assert c["tokens/calibration_flops_ratio"] <= c["tokens/budget_target"]
    assert abs(record.ratios["flops"] - target) < 0.1  # both cuts multiply to the run's target (test set)
    assert sum(c["prune/heads_per_layer"]) < 6 * 4 and c["tokens/kept_fraction_per_layer"][-1] < 1.0
    assert c["quantize/weight_bits"] == 4 and record.ratios["size"] < 0.2  # 4-bit weights of a pruned model
    run_dir = Path(record.config["paths"]["output_dir"]) / "runs" / record.run_id
    assert json.loads((run_dir / record.artifacts["prune/masks"]).read_text())
    assert (run_dir / record.artifacts["tokens/kept_tokens_plot"]).stat().st_size > 0
    assert set(record.stages) >= {"prune/fisher", "tokens/soft", "tokens/hard", "quantize/weights"}


def test_split_outside_zero_one_is_rejected_before_any_work(compose_cfg) -> None:
    with pytest.raises(ConfigError, match="method.split"):
        run(compose_cfg(*SMALL_VIT, "method=fisher_ltp", "budget.target=0.4", "method.split=1.0"))


def test_pareto_front_keeps_the_points_nothing_beats() -> None:
    points = [(0.5, 90.0), (0.4, 89.0), (0.4, 85.0), (0.3, 80.0), (0.6, 89.5), (0.5, 90.0)]
    assert pareto_front(points, lower_x_is_better=True) == [(0.3, 80.0), (0.4, 89.0), (0.5, 90.0)]
    speedups = [(2.0, 88.0), (1.5, 90.0), (1.2, 89.0)]
    assert pareto_front(speedups, lower_x_is_better=False) == [(1.5, 90.0), (2.0, 88.0)]
