"""``trimlab-table`` on a paper-table spec: cells found by run id, seeds averaged, the paper's numbers beside, missing runs listed."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trimlab.config import ConfigError
from trimlab.results.aggregate import CellResult
from trimlab.results.intervals import paired_bootstrap
from trimlab.results.predictions import Predictions, write_predictions
from trimlab.results.record import RunRecord
from trimlab.results.spec import Cell, load_spec
from trimlab.results.table import LEGEND, main as table_main, trimlab_run_ids

FIXTURES = Path(__file__).parent / "fixtures" / "table"
EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def runs_from_fixtures(runs_dir: Path) -> dict[str, Path]:
    """Each fixture record (named ``<model>-<column>-seed<n>``) under the run id trimlab gives that cell; fixture name → run folder."""
    spec = load_spec(FIXTURES / "spec.yaml", "embedded_runs")
    ids = trimlab_run_ids(spec)
    folders = {}
    for (cell, seed), rid in ids.items():
        name = f"{cell.row[0]}-{cell.column}-seed{seed}"
        fixture = FIXTURES / "records" / f"{name}.json"
        if fixture.exists():
            record = json.loads(fixture.read_text()) | {"run_id": rid}
            (runs_dir / rid).mkdir(parents=True)
            (runs_dir / rid / "record.json").write_text(json.dumps(record))
            folders[name] = runs_dir / rid
    return folders


def add_predictions(folder: Path, predictions: Predictions) -> None:
    """A predictions file in a run folder, named in its record as ``trimlab`` names it."""
    record = json.loads((folder / "record.json").read_text())
    record["artifacts"] = {"predictions": write_predictions(folder, predictions)}
    (folder / "record.json").write_text(json.dumps(record))


def accuracy_shift(n: int, gained: int, lost: int) -> Predictions:
    """Dense right on 99% of ``n`` examples; compressed right on ``gained`` of dense's misses and wrong on ``lost`` of its hits."""
    labels = np.arange(n) % 10
    dense = labels.copy()
    dense[: n // 100] = (labels[: n // 100] + 1) % 10
    compressed = dense.copy()
    compressed[:gained] = labels[:gained]
    compressed[n // 100 : n // 100 + lost] = (labels[n // 100 : n // 100 + lost] + 1) % 10
    return Predictions("accuracy", labels, dense, compressed)


def test_table_from_fixture_records_matches_the_expected_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_from_fixtures(tmp_path / "runs")
    out = tmp_path / "table"
    assert table_main([str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert (out / "table.md").read_text() == (FIXTURES / "expected.md").read_text()
    assert capsys.readouterr().out.strip() == (FIXTURES / "expected.md").read_text().strip()
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0] == (
        "model,column,mean,std,seeds,paper,delta,ci_low,ci_high,delta_vs_dense,delta_vs_dense_ci_low,delta_vs_dense_ci_high,flops_ratio,speedup_b1"
    )
    assert "cnn_digits,dense,98.5,0.707107,2,,,92.1469,104.853,,,,1,1" in csv_lines  # 98.5 ± t(0.975, 1) · 0.707 / √2
    assert "\\pm" in (out / "table.tex").read_text()
    assert (out / "pareto.png").stat().st_size > 0 and (out / "pareto.svg").stat().st_size > 0


@pytest.mark.parametrize("n,gained,lost,undecided", [(100, 1, 3, True), (1000, 0, 20, False)], ids=["100-examples", "1000-examples"])
def test_a_compressed_cell_carries_the_paired_interval_and_is_marked_when_it_includes_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int, gained: int, lost: int, undecided: bool
) -> None:
    folders = runs_from_fixtures(tmp_path / "runs")
    add_predictions(folders["vit_digits-pwlq_8-seed0"], accuracy_shift(n, gained, lost))  # 99% → 97%, as its record says
    for seed in (0, 1):  # the dense column: compressed is dense, no difference to show
        add_predictions(folders[f"cnn_digits-dense-seed{seed}"], replace(accuracy_shift(n, 0, 0), compressed=accuracy_shift(n, 0, 0).dense))
    out = tmp_path / "table"
    assert table_main([str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    marker = " ≈" if undecided else ""
    assert f"| vit_digits | — [99.0] | 97.0{marker} (1/2 seeds) [98.5, -1.5] |" in text
    assert "| cnn_digits | 98.5 ± 6.4 | — |" in text
    assert LEGEND in text
    rows = {(r["model"], r["column"]): r for r in csv.DictReader(io.StringIO((out / "table.csv").read_text()))}
    pwlq = rows[("vit_digits", "pwlq_8")]
    assert float(pwlq["delta_vs_dense"]) == pytest.approx(-2.0)
    assert float(pwlq["delta_vs_dense_ci_low"]) < -2.0 < float(pwlq["delta_vs_dense_ci_high"])
    assert (float(pwlq["delta_vs_dense_ci_high"]) >= 0) is undecided
    assert f"-2.0 [{float(pwlq['delta_vs_dense_ci_low']):+.1f}, {float(pwlq['delta_vs_dense_ci_high']):+.1f}]{marker} | 1 |" in text
    assert rows[("cnn_digits", "dense")]["delta_vs_dense"] == "" and rows[("cnn_digits", "dense")]["ci_low"] == "92.1469"
    assert ("$\\approx$ (98.5)" in (out / "table.tex").read_text()) is undecided


def test_the_interval_of_compressed_minus_dense_covers_the_seeds_spread_too() -> None:
    """Two seeds (two calibration samples) on one test split: −1 and −3 points; the test set alone would say ±~0.5."""
    runs = [accuracy_shift(4000, 0, 40), accuracy_shift(4000, 0, 120)]
    records = [RunRecord(f"r{i}", "completed", "cnn", "digits", "pwlq", {}, i, {}, compressed={"metric": 0.0}) for i in range(2)]
    result = CellResult(Cell(("cnn",), "pwlq_4", ()), 100.0, records=records, predictions=dict(enumerate(runs)))
    test_only = paired_bootstrap(*(np.stack([getattr(p, part) for p in runs]) for part in ("labels", "dense", "compressed")), "accuracy")
    delta, low, high = result.vs_dense
    assert delta == pytest.approx(-2.0) and delta == pytest.approx(100 * test_only[0])
    assert high - low > 10 * 100 * (test_only[2] - test_only[1])  # t(1 df) over a 2-point spread dwarfs the test noise
    assert low < -3.0 and high > 0 and result.undecided  # two seeds that far apart cannot decide the sign
    one_seed = CellResult(result.cell, 100.0, records=records[:1], predictions={0: runs[0]})
    assert one_seed.vs_dense == pytest.approx(tuple(100 * v for v in paired_bootstrap(runs[0].labels, runs[0].dense, runs[0].compressed, "accuracy")))


def test_one_cell_versus_another_pairs_their_seeds_and_needs_one_test_split() -> None:
    a, b = accuracy_shift(1000, 0, 10), accuracy_shift(1000, 0, 40)  # compressed: 98.0 and 95.0
    records = [RunRecord(f"r{i}", "completed", "cnn", "digits", "pwlq", {}, i, {}, compressed={"metric": 0.0}) for i in range(2)]
    mine = CellResult(Cell(("ltp",), "bbc", ()), 100.0, records=records[:1], predictions={0: a})
    theirs = CellResult(Cell(("topk",), "bbc", ()), 100.0, records=records, predictions={0: b, 1: b})
    delta, low, high = mine.versus(theirs)  # seed 0 only: the one both ran
    assert delta == pytest.approx(3.0) and low < 3.0 < high
    assert (delta, low, high) == pytest.approx(tuple(100 * v for v in paired_bootstrap(a.labels, b.compressed, a.compressed, "accuracy")))
    other_split = replace(b, labels=np.roll(b.labels, 1))
    assert mine.versus(CellResult(theirs.cell, 100.0, records=records[:1], predictions={0: other_split})) is None
    assert mine.versus(CellResult(theirs.cell, 100.0, records=records[1:], predictions={1: b})) is None  # no seed in common
    assert mine.versus(CellResult(theirs.cell, 100.0, records=records[:1])) is None  # its predictions were not stored


def test_the_listing_shows_compressed_minus_dense_where_runs_stored_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = runs_from_fixtures(tmp_path / "runs")
    add_predictions(folders["vit_digits-pwlq_8-seed0"], accuracy_shift(100, 1, 3))
    assert table_main(["--runs", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| Δ [95% CI] |") and LEGEND in lines
    rows = {line.split(" | ")[3]: line for line in lines[2:] if line.startswith("| ")}  # method → its row
    assert rows["pwlq"].endswith(" ≈ |") and rows["dense"].endswith("|  |")


def test_paper_numbers_are_found_through_rows_columns_and_the_common_model() -> None:
    mait = load_spec(EXPERIMENTS / "mait2022.yaml", "runs")
    numbers = {(c.row, c.column): mait.paper_number(c) for c in mait.cells}
    assert numbers[(("xt_24",), "mait")] == 73.7
    assert numbers[(("deit_t",), "mait")] is None
    ablation = load_spec(EXPERIMENTS / "mait2022.yaml", "ablation_runs")
    assert {c.column: ablation.paper_number(c) for c in ablation.cells} == {"mait_1head_3x3": 79.9, "mait_1head_3x5": 80.1, "mait_1head_5x5": 80.0}
    pwlq = load_spec(EXPERIMENTS / "pwlq2020.yaml", "runs")
    assert {(c.row, c.column): pwlq.paper_number(c) for c in pwlq.cells}[(("resnet50",), "w4_pwlq")] == 74.28
    ltp = load_spec(EXPERIMENTS / "ltp2021.yaml", "runs")
    assert ltp.common_model == "bert_base" and ltp.rows == [("dense",), ("ltp_50",), ("ltp_75",), ("topk_75",)]


@pytest.mark.parametrize("spec", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_block_of_every_spec_lays_out(spec: Path) -> None:
    import yaml

    content = yaml.safe_load(spec.read_text())
    for block in (k for k in content if k == "runs" or k.endswith("_runs")):
        laid_out = load_spec(spec, block)
        assert laid_out.columns and laid_out.rows
        assert len(laid_out.cells) == len(laid_out.rows) * len(laid_out.columns)


def test_unknown_block_names_the_ones_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert table_main([str(FIXTURES / "spec.yaml"), "--block", "runs", "--runs", str(tmp_path)]) == 2
    assert "has no run block 'runs'; it has embedded_runs" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.yaml")


def test_run_missing_needs_the_runs_folder_of_an_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(FIXTURES / "spec.yaml", tmp_path / "spec.yaml")
    assert table_main([str(tmp_path / "spec.yaml"), "--runs", str(tmp_path / "elsewhere"), "--run-missing"]) == 2
    assert "--runs <output_dir>/runs" in capsys.readouterr().err


def test_a_record_round_trips_through_the_wandb_summary_and_config() -> None:
    from trimlab.results.collect import record_from_wandb
    from trimlab.results.record import RunRecord
    from trimlab.results.tracking import flatten, record_summary

    fixture = json.loads((FIXTURES / "records" / "vit_digits-pwlq_8-seed0.json").read_text())
    record = RunRecord(**fixture | {"run_id": "abc", "config": {"model": {"name": "vit_digits"}, "dataset": {"name": "digits"},
                                                                  "method": {"name": "pwlq"}, "budget": {"kind": "bits", "target": 8}, "seed": 0}})
    back = record_from_wandb("abc", flatten(record.config), record_summary(record))
    assert (back.model, back.dataset, back.method, back.status) == ("vit_digits", "digits", "pwlq", "completed")
    assert back.compressed == record.compressed and back.ratios == record.ratios and back.dense == record.dense


def test_wandb_run_config_is_flat_so_dashboards_group_by_any_key(compose_cfg, tmp_path: Path) -> None:
    from trimlab.results.tracking import open_tracker

    cfg = compose_cfg("logger.mode=disabled", "method=ltp", "dataset=bbc_news", "budget=tokens_50")
    tracker = open_tracker(cfg, "abc123", tmp_path / "run")
    try:
        config = dict(tracker.logger.experiment.config)
        assert tracker.logger.experiment.id == "abc123"
        assert (config["model.name"], config["dataset.name"], config["method.name"], config["budget.kind"]) == (
            "minilm_l6", "bbc_news", "ltp", "tokens")
        assert not any(isinstance(v, dict) for v in config.values())
        assert config["trimlab_run_id"] == "abc123" and tracker.run_id == "abc123"
    finally:
        tracker.finish()


def test_a_named_option_reaches_the_wandb_run_and_back(compose_cfg, tmp_path: Path) -> None:
    from trimlab.results.collect import record_from_wandb
    from trimlab.results.tracking import open_tracker

    cfg = compose_cfg("logger.mode=disabled", "method=mait", "method.mask_form=additive", "model=vit_digits", "dataset=digits", "budget=none")
    tracker = open_tracker(cfg, "abc123", tmp_path / "run")
    try:
        config = dict(tracker.logger.experiment.config)
        assert config["trimlab_method"] == "mait+additive" and config["method.name"] == "mait"
        assert record_from_wandb("abc123", config, {"status": "completed"}).method == "mait+additive"
    finally:
        tracker.finish()


def test_a_wandb_agent_run_is_found_under_trimlabs_run_id() -> None:
    from types import SimpleNamespace

    from trimlab.results.collect import wandb_records

    agent_run = SimpleNamespace(id="x7agent", config={"trimlab_run_id": "abc123", "model.name": "m"}, summary={"status": "completed"})
    plain_run = SimpleNamespace(id="def456", config={"model.name": "m"}, summary={"status": "completed"})
    assert [r.run_id for r in wandb_records([agent_run, plain_run])] == ["abc123", "def456"]


def test_a_run_block_may_carry_its_own_seeds(tmp_path: Path) -> None:
    from trimlab.results.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "seeds: [0]\nembedded_runs:\n  common: [experiment=smoke]\n  methods:\n    dense: [method=dense]\n"
        "larger_runs:\n  seeds: [0, 1, 2]\n  common: [experiment=smoke]\n  methods:\n    dense: [method=dense]\n"
        "table: {rows: [model], columns: [dense]}\n"
    )
    assert load_spec(spec, "embedded_runs").seeds == [0]
    larger = load_spec(spec, "larger_runs")
    assert larger.seeds == [0, 1, 2] and [c.column for c in larger.cells] == ["dense"]  # seeds is not an axis


CLAIMS = """
claims:
  - {claim: "at most 1 point lost", block: embedded_runs, row: vit_digits, column: pwlq_8, at_least: -1.0}
  - {claim: "at most 3 points lost", block: embedded_runs, row: [vit_digits], column: pwlq_8, at_least: -3.0}
  - {claim: "not run", block: embedded_runs, row: cnn_digits, column: pwlq_8, at_least: -1.0}
  - {claim: "another block's", block: runs, row: cnn_digits, column: pwlq_8, at_least: -1.0}
"""


@pytest.mark.parametrize(
    "n,gained,lost,first,second", [(100, 1, 3, "undecided", "undecided"), (1000, 0, 20, "not met", "met")], ids=["100-examples", "1000-examples"]
)
def test_claims_are_judged_by_the_interval_of_the_cell_they_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int, gained: int, lost: int, first: str, second: str
) -> None:
    folders = runs_from_fixtures(tmp_path / "runs")
    add_predictions(folders["vit_digits-pwlq_8-seed0"], accuracy_shift(n, gained, lost))  # −2 points
    spec = tmp_path / "spec.yaml"
    spec.write_text((FIXTURES / "spec.yaml").read_text() + CLAIMS)
    assert table_main([str(spec), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "table")]) == 0
    text = capsys.readouterr().out
    assert f"- at most 1 point lost — **{first}**: ours -2.0 [" in text
    assert f"- at most 3 points lost — **{second}**: ours -2.0 [" in text  # 100 examples: the interval reaches below −3
    assert "- not run — not run yet (cnn_digits · pwlq_8: vs_dense >= -1)" in text
    assert "another block's" not in text


def test_the_header_names_the_metric_the_blocks_columns_share(tmp_path: Path) -> None:
    from trimlab.results.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "a_runs:\n  common: [experiment=smoke]\n  datasets: {tweets: [dataset=tweets]}\n  methods: {dense: [method=dense]}\n"
        "b_runs:\n  common: [experiment=smoke]\n  datasets: {tweets: [dataset=tweets], stsb: [dataset=stsb]}\n  methods: {dense: [method=dense]}\n"
        "table:\n  rows: [method]\n  columns: [tweets, stsb]\n"
        "  metrics: {tweets: {trimlab: accuracy}, stsb: {trimlab: pearson}}\n"
    )
    assert load_spec(spec, "a_runs").metric == "accuracy"
    assert load_spec(spec, "b_runs").metric == "metric"  # mixed: each column says its own


def test_the_plot_takes_the_float_models_speedup_beside_an_int8_kernel_one(tmp_path: Path) -> None:
    """An 8-bit Transformer run also records ``speedup_b<n>_int8_kernel``: the plot's axis is still the batch speedup."""
    folders = runs_from_fixtures(tmp_path / "runs")
    record_path = folders["vit_digits-pwlq_8-seed0"] / "record.json"
    record = json.loads(record_path.read_text())
    record["ratios"] |= {"speedup_b32": 1.5, "speedup_b32_int8_kernel": 2.3, "speedup_b1_int8_kernel": 2.0}
    record_path.write_text(json.dumps(record))
    assert table_main([str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "table")]) == 0
    assert (tmp_path / "table" / "pareto.svg").read_text().count("speedup b32") == 1


def _fake_trimlab(returncodes: dict[str, int]) -> object:
    """``subprocess.run`` for ``--run-missing``: each run exits with the code its model maps to (0 when unlisted)."""

    def run(argv: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        model = next(a.split("=")[1] for a in argv if a.startswith("model="))
        return subprocess.CompletedProcess(argv, returncodes.get(model, 0))

    return run


def test_run_missing_exits_1_and_names_each_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs_from_fixtures(tmp_path / "output" / "runs")
    monkeypatch.setattr("trimlab.results.table.subprocess.run", _fake_trimlab({"cnn_digits": 1}))
    argv = [str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "output" / "runs"), "--out", str(tmp_path / "table"), "--run-missing"]
    assert table_main(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 5 run(s) failed" in err
    assert "cnn_digits · pwlq_8 · seed 0: `trimlab dataset=digits budget=none model=cnn_digits method=pwlq budget=bits_8 seed=0`" in err
    assert "vit_digits · dense" not in err.split("failed")[-1]


def test_an_interrupted_run_stops_run_missing_with_its_signal_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs_from_fixtures(tmp_path / "output" / "runs")
    calls = []
    fake = _fake_trimlab({"vit_digits": 130})
    monkeypatch.setattr("trimlab.results.table.subprocess.run", lambda argv, check=False: calls.append(argv) or fake(argv))
    argv = [str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "output" / "runs"), "--out", str(tmp_path / "table"), "--run-missing"]
    assert table_main(argv) == 130
    assert len(calls) == 1 and "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,match",
    [
        ("- a\n- b\n", "must be a mapping"),
        ("42\n", "must be a mapping"),
        ((FIXTURES / "spec.yaml").read_text().replace("metric: accuracy", "metric: abc"), "table.metric 'abc'"),
        ((FIXTURES / "spec.yaml").read_text().replace("scale: 100", "scale: abc"), "table.scale"),
        ((FIXTURES / "spec.yaml").read_text().replace("rows: [model]", "rows: 3"), "spec.yaml"),
    ],
    ids=["list", "number", "metric", "scale", "rows"],
)
def test_a_malformed_spec_is_one_line_naming_the_file_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, match: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert table_main([str(spec), "--block", "embedded_runs", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-table: error:") and str(spec) in err and match in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_an_out_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    assert table_main([str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-table: error: cannot write the table to") and str(tmp_path / "taken") in err


def test_help_says_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        table_main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes" in out and "2 " in out and "130" in out


def test_run_missing_on_a_launcher_starts_one_multirun_per_grid_and_lists_what_did_not_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    runs_from_fixtures(tmp_path / "output" / "runs")
    calls = []
    monkeypatch.setattr("trimlab.results.table.subprocess.run", lambda argv, check=False: calls.append(argv) or subprocess.CompletedProcess(argv, 0))
    argv = [str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "output" / "runs"), "--out", str(tmp_path / "table"), "--run-missing",
            "--launcher", "submitit_slurm", "--launcher-arg", "partition=gpu", "--launcher-arg", "+not_in_its_schema=1"]
    assert table_main(argv) == 1  # the fake launcher wrote no records
    launched = [a[a.index("-m", 3):] for a in calls]  # after `python -m trimlab.cli`
    head = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "+hydra.launcher.not_in_its_schema=1"]
    assert all(a[:4] == head and a[-1] == f"paths.output_dir={(tmp_path / 'output').resolve()}" for a in launched)
    sweeps = sorted(" ".join(a[4:-1]) for a in launched)
    assert sweeps == [  # missing: vit dense at seeds 0, 1 (a grid); pwlq_8 of cnn at 0, 1 and of vit at 1 (3 of a 2 × 2 grid)
        "dataset=digits budget=none model=cnn_digits method=pwlq budget=bits_8 seed=0,1",
        "dataset=digits budget=none model=vit_digits method=dense seed=0,1",
        "dataset=digits budget=none model=vit_digits method=pwlq budget=bits_8 seed=1",
    ]
    err = capsys.readouterr().err
    assert "5 of 5 run(s) failed" in err and "launcher's logs" in err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--run-missing", "--launcher", "nope"], "--launcher nope: no such Hydra launcher is installed; the installed ones are basic, submitit_local"),
        (["--run-missing", "--launcher", "submitit_local", "--launcher-arg", "nope=1"], "--launcher-arg: Could not override 'hydra.launcher.nope'"),
        (["--run-missing", "--launcher", "submitit_local", "--launcher-arg", "timeout_min"], "--launcher-arg timeout_min: write KEY=VALUE"),
        (["--launcher", "submitit_local"], "pass it with --run-missing"),
        (["--run-missing", "--launcher-arg", "timeout_min=5"], "pass it with --run-missing"),
    ],
    ids=["unknown", "unknown-key", "no-value", "no-run-missing", "no-launcher"],
)
def test_a_bad_launcher_is_one_line_and_exit_2_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: list[str], match: str
) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setattr("trimlab.results.table.subprocess.run", lambda *a, **k: pytest.fail("a run started"))
    argv = [str(FIXTURES / "spec.yaml"), "--runs", str(tmp_path / "output" / "runs"), "--out", str(tmp_path / "table"), *extra]
    assert table_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimlab-table: error:") and match in err and len(err.strip().splitlines()) == 1


def test_a_claim_against_another_row_is_judged_by_their_paired_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = runs_from_fixtures(tmp_path / "runs")
    spec = load_spec(FIXTURES / "spec.yaml", "embedded_runs")
    cnn_id = next(rid for (cell, seed), rid in trimlab_run_ids(spec).items() if cell.row == ("cnn_digits",) and cell.column == "pwlq_8" and seed == 0)
    record = json.loads((folders["vit_digits-pwlq_8-seed0"] / "record.json").read_text()) | {"run_id": cnn_id, "model": "cnn_digits"}
    (tmp_path / "runs" / cnn_id).mkdir()
    (tmp_path / "runs" / cnn_id / "record.json").write_text(json.dumps(record))
    labels = np.arange(1000) % 10
    vit, cnn = labels.copy(), labels.copy()
    vit[:10] = (labels[:10] + 1) % 10  # 99.0
    cnn[:60] = (labels[:60] + 1) % 10  # 94.0: vit − cnn = +5 points, on the same examples
    add_predictions(folders["vit_digits-pwlq_8-seed0"], Predictions("accuracy", labels, labels, vit))
    add_predictions(tmp_path / "runs" / cnn_id, Predictions("accuracy", labels, labels, cnn))
    claims = (
        "claims:\n"
        "  - {claim: beats the CNN, block: embedded_runs, row: vit_digits, column: pwlq_8, quantity: vs_row, than: cnn_digits, at_least: 2}\n"
        "  - {claim: beats it by 8, block: embedded_runs, row: vit_digits, column: pwlq_8, quantity: vs_row, than: [cnn_digits], at_least: 8}\n"
        "  - {claim: beats a row not run, block: embedded_runs, row: cnn_digits, column: dense, quantity: vs_row, than: vit_digits, at_least: 0}\n"
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text((FIXTURES / "spec.yaml").read_text() + claims)
    assert table_main([str(spec_file), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "table")]) == 0
    text = capsys.readouterr().out
    assert "- beats the CNN — **met**: ours +5.0 [" in text and "(vit_digits · pwlq_8 − cnn_digits · pwlq_8: vs_row >= +2)" in text
    assert "- beats it by 8 — **not met**: ours +5.0 [" in text
    assert "- beats a row not run — not run yet (cnn_digits · dense − vit_digits · dense: vs_row >= +0)" in text


@pytest.mark.parametrize(
    "claim, message",
    [
        ("{claim: x, block: embedded_runs, row: a, column: b}", "one of at_least / at_most"),
        ("{claim: x, block: embedded_runs, row: a, column: b, quantity: vs_row, at_least: 0}", "`than` .* goes with quantity vs_row"),
        ("{claim: x, block: embedded_runs, row: a, column: b, than: c, at_least: 0}", "`than` .* goes with quantity vs_row"),
    ],
)
def test_a_malformed_claim_names_what_it_needs(tmp_path: Path, claim: str, message: str) -> None:
    from trimlab.results.spec import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text((FIXTURES / "spec.yaml").read_text() + f"claims:\n  - {claim}\n")
    with pytest.raises(ConfigError, match=message):
        load_spec(spec, "embedded_runs")
