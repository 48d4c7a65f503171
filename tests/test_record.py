"""Run ids, atomic records and the table built from them."""

from __future__ import annotations

import json

import pytest

from trimlab.config import ConfigError
from trimlab.results.collect import collect
from trimlab.results.record import RECORD_FILE, RunRecord, locations, read_record, run_id, write_record
from trimlab.results.table import main as table_main, markdown


def _record(rid: str = "abc", status: str = "completed", **kw) -> RunRecord:
    return RunRecord(
        run_id=rid, status=status, model="m", dataset="d", method="dense", budget={"kind": "none", "target": 1.0},
        seed=0, config={}, dense={"metric": 0.9, "metric_name": "accuracy", "flops": 2.0},
        compressed={"metric": 0.89, "flops": 1.0}, ratios={"flops": 0.5, "speedup_b1": 1.7}, **kw,
    )


def test_run_id_ignores_paths_and_logging_but_not_the_experiment(compose_cfg, tmp_path):
    base = run_id(compose_cfg())
    assert base == run_id(compose_cfg("paths.output_dir=/elsewhere", "logger=none", "trainer.progress_bar=false"))
    assert base != run_id(compose_cfg("seed=1"))
    assert base != run_id(compose_cfg("finetune.lr=1e-4"))
    assert len(base) == 10


def test_a_key_added_later_keeps_finished_runs_ids_at_its_neutral_value(compose_cfg):
    from omegaconf import OmegaConf

    cfg = compose_cfg()
    before = OmegaConf.to_container(cfg, resolve=True)
    del before["trainer"]["num_nodes"]  # a config from before trainer.num_nodes existed
    del before["model"]["packed"]  # ... and before model.packed
    assert run_id(cfg) == run_id(OmegaConf.create(before))
    assert run_id(compose_cfg("trainer.num_nodes=2")) != run_id(cfg)
    assert run_id(compose_cfg("model.packed=false")) != run_id(cfg)  # timed on another layout


def test_write_record_is_atomic_and_round_trips(tmp_path):
    rec = _record()
    path = write_record(tmp_path, rec)
    assert path == tmp_path / RECORD_FILE
    assert read_record(path) == rec
    assert not list(tmp_path.glob(".record.*"))


def test_failed_write_keeps_the_previous_record(tmp_path):
    write_record(tmp_path, _record(status="completed"))
    bad = _record(status="failed")
    bad.dense = {"x": object.__new__(type("Unserialisable", (), {"__str__": None}))}
    with pytest.raises(TypeError):
        write_record(tmp_path, bad)
    assert read_record(tmp_path / RECORD_FILE).status == "completed"
    assert not list(tmp_path.glob(".record.*"))


def test_corrupt_record_names_the_file(tmp_path):
    path = tmp_path / RECORD_FILE
    path.write_text('{"run_id": "abc", "status": "compl')
    with pytest.raises(ConfigError, match="record.json is not a readable trimlab record.*move it away"):
        read_record(path)


def test_table_lists_completed_runs_only(tmp_path, capsys):
    write_record(tmp_path / "a", _record("a"))
    write_record(tmp_path / "b", _record("b", status="failed"))
    records = collect(tmp_path)
    assert [r.run_id for r in records] == ["a"]
    text = markdown(records)
    assert "| a | m | d | dense | none 1 | accuracy | 0.9000 | 0.8900 | 0.500 | 1.70 |" in text
    assert table_main(["--runs", str(tmp_path)]) == 0
    assert "0.8900" in capsys.readouterr().out
    assert table_main(["--runs", str(tmp_path / "missing")]) == 2


def test_record_json_is_plain_json(tmp_path):
    write_record(tmp_path, _record())
    data = json.loads((tmp_path / RECORD_FILE).read_text())
    assert data["status"] == "completed" and data["ratios"]["flops"] == 0.5


def test_a_local_weights_or_data_folder_keeps_the_id_of_what_it_stands_for(compose_cfg, tmp_path):
    weights, data = tmp_path / "bert", tmp_path / "glue"
    weights.mkdir()
    data.mkdir()
    (weights / "config.json").write_text('{"hidden_size": 768}')
    hub = compose_cfg("model=bert_base", "dataset=sst2")
    local = compose_cfg("model=bert_base", "dataset=sst2", f"model.path={weights}", f"dataset.data_dir={data}")
    assert run_id(local) == run_id(hub)
    assert run_id(compose_cfg("model=bert_base", "model.path=roberta-base")) != run_id(hub)  # another hub model
    found = locations(local)
    assert found["model.path"]["path"] == str(weights.resolve()) and len(found["model.path"]["fingerprint"]) == 12
    (weights / "config.json").write_text('{"hidden_size": 1024}')
    assert locations(local)["model.path"]["fingerprint"] != found["model.path"]["fingerprint"]
