"""The benchmarks keep each seed's result: computed once per config and settings, read back whole, never half-written."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import compose_config, seed_result  # noqa: E402  (benchmarks/common.py)


@pytest.fixture
def cfg(tmp_path: Path):
    return compose_config(str(tmp_path), "model=vit_digits", "dataset=digits", "method=sait", "budget=none", "seed=1")


def test_a_kept_seed_is_read_back_and_not_recomputed(tmp_path: Path, cfg) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"preds": np.arange(5), "metric": 0.75}

    first = seed_result(tmp_path / "seed1", cfg, {"benchmark": "sait"}, compute)
    again = seed_result(tmp_path / "seed1", cfg, {"benchmark": "sait"}, compute)
    assert len(calls) == 1
    assert again["metric"] == first["metric"] == 0.75
    np.testing.assert_array_equal(again["preds"], np.arange(5))


def test_another_config_or_setting_is_computed_anew(tmp_path: Path, cfg) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"n": len(calls)}

    seed_result(tmp_path, cfg, {"benchmark": "mait", "repeats": 20}, compute)
    seed_result(tmp_path, cfg, {"benchmark": "mait", "repeats": 5}, compute)
    other = compose_config(str(tmp_path), "model=vit_digits", "dataset=digits", "method=sait", "budget=none", "seed=1", "method.epochs=3")
    assert seed_result(tmp_path, other, {"benchmark": "mait", "repeats": 20}, compute) == {"n": 3}
    assert seed_result(tmp_path, cfg, {"benchmark": "mait", "repeats": 20}, compute) == {"n": 1}


def test_an_interrupted_seed_leaves_no_result(tmp_path: Path, cfg) -> None:
    def interrupted() -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seed_result(tmp_path, cfg, {"benchmark": "sait"}, interrupted)
    assert list(tmp_path.iterdir()) == []
