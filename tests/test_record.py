"""Run ids, atomic records and the table built from them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from trimlab import files

from trimlab.config import ConfigError
from trimlab.results.collect import collect
from trimlab.results.record import RECORD_FILE, RunRecord, cpu_int8_flags, environment, locations, read_record, run_id, write_record
from trimlab.files import fingerprint
from trimlab.models.build import build_model
from trimlab.models.text import hub_commit
from trimlab.results.run_folder import RunFolder
from trimlab.results.table import main as table_main, markdown
from trimlab.run import _reusable, run


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
    before["model"].pop("revision", None)  # ... and before model.revision (text models)
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


def glue_folder(root: Path, flip: bool = False) -> Path:
    """A local sst2 folder (train and dev csv); ``flip`` gives every label the other value (same sizes)."""
    root.mkdir(parents=True)
    words = "the a film movie was is great bad dull fun plot acting".split()
    for split, n in (("train", 40), ("dev", 24)):
        rows = [f"{' '.join(words[(i + j) % len(words)] for j in range(2 + i % 5))},{(i % 2) ^ flip}" for i in range(n)]
        (root / f"{split}.csv").write_text("sentence,label\n" + "\n".join(rows) + "\n")
    return root


def weights_folder(root: Path, hidden: int) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 5000)
    return root


def test_the_id_covers_the_content_of_local_data_never_its_location(compose_cfg, tmp_path):
    a, b = glue_folder(tmp_path / "a"), glue_folder(tmp_path / "b", flip=True)
    copy = tmp_path / "elsewhere" / "a-copy"
    shutil.copytree(a, copy)
    ids = {name: run_id(compose_cfg("dataset=sst2", f"dataset.data_dir={folder}")) for name, folder in (("a", a), ("b", b), ("copy", copy))}
    assert ids["a"] != ids["b"]  # flipped labels: another run
    assert ids["a"] == ids["copy"]  # the same files at another path: the same run
    assert run_id(compose_cfg("dataset=sst2")) not in ids.values()  # the hub's sst2 is other data again


def test_the_id_covers_the_content_of_local_weights_never_their_location(compose_cfg, tmp_path):
    one, other = weights_folder(tmp_path / "one", 768), weights_folder(tmp_path / "other", 1024)
    copy = tmp_path / "moved" / "one"
    shutil.copytree(one, copy)
    ids = [run_id(compose_cfg("model=bert_base", f"model.path={folder}")) for folder in (one, other, copy)]
    assert ids[0] != ids[1] and ids[0] == ids[2]
    hub = run_id(compose_cfg("model=bert_base"))
    assert hub not in ids and run_id(compose_cfg("model=bert_base", "model.path=roberta-base")) != hub
    found = locations(compose_cfg("model=bert_base", f"model.path={copy}"))
    assert found["model.path"]["path"] == str(copy.resolve()) and len(found["model.path"]["fingerprint"]) == 16


def test_a_large_file_changed_in_place_at_the_same_size_changes_the_fingerprint(tmp_path):
    path = tmp_path / "weights.bin"
    data = bytearray(range(256)) * 2**14  # 4 MiB: well past what a name-and-size fingerprint would read
    path.write_bytes(data)
    before = fingerprint(path, tmp_path / "cache")
    shutil.copy(path, tmp_path / "renamed.bin")
    assert fingerprint(tmp_path / "renamed.bin") == before  # a state-dict file: its bytes, not its name
    data[3 * 2**20] ^= 1
    path.write_bytes(data)
    assert fingerprint(path, tmp_path / "cache") != before


def test_fingerprints_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    folder = weights_folder(tmp_path / "w", 768)
    for file in folder.iterdir():
        os.utime(file, ns=(10**18, 10**18))  # written long ago (a file written just now may change in the same mtime tick)
    cache = tmp_path / "cache"
    read = []
    real = files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda file: read.append(file.name) or real(file))
    first = fingerprint(folder, cache)
    assert sorted(read) == ["config.json", "model.safetensors"]
    read.clear()
    assert fingerprint(folder, cache) == first and read == []  # unchanged: from the cache, nothing read
    os.utime(folder / "model.safetensors", ns=(1, 1))  # the same bytes, another mtime: read again
    assert fingerprint(folder, cache) == first and read == ["model.safetensors"]
    read.clear()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 76}))  # another size
    assert fingerprint(folder, cache) != first and read == ["config.json"]


def test_a_completed_run_on_other_inputs_is_not_reused(tmp_path):
    folder = RunFolder(tmp_path / "run")
    done = _record(locations={"dataset.data_dir": {"path": "/x", "fingerprint": "aaaa"}})
    write_record(folder.path, done)
    assert _reusable(folder, {"dataset.data_dir": "aaaa"}) == done
    assert _reusable(folder, {"dataset.data_dir": "bbbb"}) is None  # recorded on other data
    assert _reusable(folder, {}) is None  # a hub run never takes a local run's result


def test_two_local_data_folders_give_two_runs_with_their_own_metrics(compose_cfg, tmp_path):
    tiny = ("model=minilm_l6", "dataset=sst2", "method=dense", "budget=none", "finetune=none", "logger=none",
            "dataset.max_eval_examples=24", "measure.latency_batch_sizes=[1]", "measure.repeats=1", "measure.warmup=0")
    a, b = glue_folder(tmp_path / "a"), glue_folder(tmp_path / "b", flip=True)
    first = run(compose_cfg(*tiny, f"dataset.data_dir={a}"))
    second = run(compose_cfg(*tiny, f"dataset.data_dir={b}"))
    assert first.status == second.status == "completed" and first.run_id != second.run_id
    # an untrained head predicts the same labels on the same sentences: flipping every label flips the accuracy
    assert second.compressed["metric"] == pytest.approx(1 - first.compressed["metric"])
    assert second.locations["dataset.data_dir"]["path"] == str(b.resolve())


def test_a_hub_revision_pins_the_weights_and_the_id(compose_cfg, monkeypatch):
    hub = compose_cfg("model=bert_base")
    assert run_id(compose_cfg("model=bert_base", "model.revision=")) == run_id(hub)  # the default keeps every id
    assert run_id(compose_cfg("model=bert_base", "model.revision=v1.0")) != run_id(hub)
    asked = []

    def hf_call(load, source, **kwargs):
        asked.append(kwargs.get("revision"))
        raise ConfigError("offline")

    monkeypatch.setattr("trimlab.models.text._hf_call", hf_call)
    with pytest.raises(ConfigError, match="offline"):
        build_model(compose_cfg("model=bert_base", "model.revision=0123abc").model, num_labels=2)
    assert asked == ["0123abc"]  # from_pretrained(..., revision=...)


def test_the_record_names_the_hub_commit_loaded(tmp_path, monkeypatch):
    commit = "4f" * 20
    repo = tmp_path / "hub" / "models--org--tiny-bert"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_commit("org/tiny-bert") == commit  # the default branch, as cached
    assert hub_commit("org/tiny-bert", commit) == commit
    assert hub_commit("org/not-cached") == "" and hub_commit(str(tmp_path)) == ""  # unknown, or a local folder


def test_the_dense_checkpoint_cache_is_keyed_by_the_content_of_local_data(compose_cfg, tmp_path):
    from omegaconf import OmegaConf

    from trimlab.checkpoints import dense_checkpoint_path

    data = glue_folder(tmp_path / "glue")
    cfg = compose_cfg("dataset=sst2", f"dataset.data_dir={data}")
    before = dense_checkpoint_path(cfg)
    flipped = tmp_path / "flipped"
    glue_folder(flipped, flip=True)
    for name in ("train.csv", "dev.csv"):  # the same folder, its labels flipped in place
        (data / name).write_bytes((flipped / name).read_bytes())
    assert dense_checkpoint_path(cfg) != before  # never the weights fine-tuned on the old labels
    old = OmegaConf.to_container(compose_cfg(), resolve=True)
    del old["model"]["revision"]  # a config from before model.revision: its cached weights are still found
    assert dense_checkpoint_path(OmegaConf.create(old)) == dense_checkpoint_path(compose_cfg())


def test_a_paper_table_finds_runs_on_a_local_copy_given_with_with(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, copy = glue_folder(tmp_path / "glue"), tmp_path / "elsewhere"
    shutil.copytree(data, copy)
    spec = tmp_path / "spec.yaml"
    spec.write_text("runs:\n  common: [dataset=sst2, method=dense, budget=none]\n  methods:\n    dense: []\n"
                    "table: {rows: [model], columns: [dense]}\n")
    seen = []
    monkeypatch.setattr("trimlab.results.table.aggregate", lambda spec, ids, *rest: seen.append(ids) or [])
    monkeypatch.setattr("trimlab.results.table.spec_markdown", lambda spec, results: "")
    monkeypatch.setattr("trimlab.results.plot.pareto_plot", lambda *a: None)
    table = [str(spec), "--block", "runs", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "table")]
    for extra in ([], ["--with", f"dataset.data_dir={data}"], ["--with", f"dataset.data_dir={copy}"]):
        assert table_main([*table, *extra]) == 0
    hub, local, elsewhere = (next(iter(ids.items())) for ids in seen)
    assert local[1] != hub[1] and local[1] == elsewhere[1]  # the user's data, wherever it lies
    (cell, seed), _ = local
    assert cell.overrides[-1] == f"dataset.data_dir={data}"  # so --run-missing runs on it too


def test_the_environment_names_the_cpu_features_that_pick_the_int8_kernels() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
    assert cpu_int8_flags(x86) == ["avx2", "avx512f", "avx512_vnni"]
    assert cpu_int8_flags("Features\t: fp asimd asimddp\n") == ["asimddp"]  # ARM's int8 dot product
    assert cpu_int8_flags("model name\t: a CPU\n") == []
    assert isinstance(environment()["cpu_flags"], list) and "onnxruntime" in environment()["versions"]
