"""Every supported encoder family loads through ``model=hf`` and matches ``transformers`` (logits ≤ 1e-4).

No network: for each family a tiny random ``*ForSequenceClassification`` is
saved to a temporary folder with a tiny tokenizer, then built from the composed
``model=hf model.path=<folder>`` config, as a run builds it. Batches come from
that tokenizer, so they are padded with the family's own padding id.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizer,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    MPNetConfig,
    MPNetTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaTokenizer,
    T5Config,
    XLMRobertaConfig,
)

from trimlab.api import compress
from trimlab.config import ConfigError, validate
from trimlab.data import build_datamodule
from trimlab.measure.flops import analytic_flops, count_flops
from trimlab.models.build import build_model
from trimlab.models.convert import to_trimlab
from trimlab.models.text import FAMILIES, text_classifier_from_config

BOUND = 1e-4
LABELS = 3
VOCAB = 64
SENTENCES = ["a first sentence", "and a second, longer one, longer than the first sentence", "one"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHAPE = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


def bert_tokenizer() -> BertTokenizer:
    """A WordPiece vocabulary of the test sentences (BERT, DistilBERT, ELECTRA)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "first", "sentence", "and", "second", ",", "longer", "one", "than", "the"]
    return BertTokenizer(vocab={word: i for i, word in enumerate(words)})


def roberta_tokenizer() -> RobertaTokenizer:
    """A byte-level BPE of single letters and space-led letters (<pad> = 1, as RoBERTa's)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = specials + list(LETTERS + ",Ġ") + [f"Ġ{c}" for c in LETTERS + ","]
    return RobertaTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[("Ġ", c) for c in LETTERS + ","])


def mpnet_tokenizer() -> MPNetTokenizer:
    words = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", "a", "first", "sentence", "and", "second", ",", "longer", "one", "than", "the"]
    return MPNetTokenizer(vocab={word: i for i, word in enumerate(words)})


CHECKPOINTS: dict[str, tuple[Callable[[], PretrainedConfig], Callable[[], object]]] = {
    "bert": (lambda: BertConfig(vocab_size=VOCAB, **SHAPE), bert_tokenizer),
    "roberta": (lambda: RobertaConfig(vocab_size=VOCAB, max_position_embeddings=VOCAB + 2, type_vocab_size=1, **SHAPE), roberta_tokenizer),
    "xlm-roberta": (lambda: XLMRobertaConfig(vocab_size=VOCAB, max_position_embeddings=VOCAB + 2, type_vocab_size=1, **SHAPE), roberta_tokenizer),
    "distilbert": (lambda: DistilBertConfig(vocab_size=VOCAB, n_layers=2, dim=32, n_heads=2, hidden_dim=64), bert_tokenizer),
    "distilbert-sinusoidal": (
        lambda: DistilBertConfig(vocab_size=VOCAB, n_layers=2, dim=32, n_heads=2, hidden_dim=64, sinusoidal_pos_embds=True),
        bert_tokenizer,
    ),
    "electra": (lambda: ElectraConfig(vocab_size=VOCAB, embedding_size=16, **SHAPE), bert_tokenizer),  # 16 → 32: embeddings_project
    "mpnet": (lambda: MPNetConfig(vocab_size=VOCAB, **SHAPE), mpnet_tokenizer),
}


def reference(name: str) -> PreTrainedModel:
    """A tiny random ``transformers`` sequence classifier of checkpoint ``name``, in eval mode."""
    torch.manual_seed(0)
    config = CHECKPOINTS[name][0]()
    config.num_labels = LABELS
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # a non-trivial head and biases, so a wrongly mapped one shows
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def save_checkpoint(name: str, folder: Path) -> tuple[PreTrainedModel, Path]:
    """A user's folder: ``save_pretrained`` of the model and of its tokenizer."""
    model = reference(name)
    model.save_pretrained(folder)
    CHECKPOINTS[name][1]().save_pretrained(folder)
    return model, folder


def hf_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_every_family_is_tested_here() -> None:
    families = {AutoModelForSequenceClassification.from_config(CHECKPOINTS[n][0]()).base_model_prefix for n in CHECKPOINTS}
    assert families == set(FAMILIES)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_a_saved_folder_loads_through_model_hf_and_matches_transformers(
    name: str, compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    theirs, folder = save_checkpoint(name, tmp_path / name)
    cfg = compose_cfg("model=hf", f"model.path={folder}")
    validate(cfg)
    built = build_model(cfg.model, num_labels=LABELS)
    batch = dict(built.tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert not batch["attention_mask"].all() and batch["input_ids"][0, -1] == built.tokenizer.pad_token_id  # padded
    ours = built.model.eval()
    with torch.no_grad():
        got = ours(batch).logits
    assert float((got - hf_logits(theirs, batch)).abs().max()) <= BOUND
    ours.encoder.packed = not ours.encoder.packed  # the other layout gives the same logits
    with torch.no_grad():
        assert float((ours(batch).logits - got).abs().max()) <= BOUND


def test_a_roberta_folder_is_fed_by_the_text_datamodule(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """The datamodule pads with the folder tokenizer's padding id (1) and sends no token types, as RoBERTa expects.

    Tweets has 2 labels, the checkpoint 3: the head's trained dense layer is kept, under a fresh output layer.
    """
    theirs, folder = save_checkpoint("roberta", tmp_path / "roberta")
    cfg = compose_cfg("model=hf", f"model.path={folder}", "model.max_length=24", "dataset=tweets", "dataset.max_train_examples=16")
    built = build_model(cfg.model, num_labels=cfg.dataset.num_labels)
    datamodule = build_datamodule(cfg.dataset, built, seed=0)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    assert "token_type_ids" not in batch and (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()
    with torch.no_grad():
        got = built.model.eval()(inputs).logits
    theirs.classifier.out_proj = built.model.head.classifier  # tweets has its own label count: compare on one head
    assert float((got - hf_logits(theirs, inputs)).abs().max()) <= BOUND


HUB_LOAD = """
import sys, torch
from trimlab.models.text import hub_commit, load_text_classifier
model, tokenizer = load_text_classifier(sys.argv[1], "auto", num_labels=3)
batch = dict(tokenizer(sys.argv[3:], padding=True, return_tensors="pt"))
with torch.no_grad():
    torch.save({"logits": model.eval()(batch).logits, "batch": batch, "commit": hub_commit(sys.argv[1])}, sys.argv[2])
"""


def test_a_hub_id_loads_through_the_same_path(tmp_path: Path) -> None:
    """A hub id resolved by ``huggingface_hub`` from its cache (offline), in a fresh process as a run loads it."""
    theirs, folder = save_checkpoint("roberta", tmp_path / "saved")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-roberta"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.pt"
    subprocess.run([sys.executable, "-c", HUB_LOAD, "someone/tiny-roberta", str(out), *SENTENCES], env=env, check=True)
    got = torch.load(out)
    assert got["commit"] == commit
    assert float((got["logits"] - hf_logits(theirs, got["batch"])).abs().max()) <= BOUND


@pytest.mark.parametrize("name", ["roberta", "electra"])
def test_a_users_transformers_model_converts_with_the_same_logits(name: str) -> None:
    theirs = reference(name)
    batch = dict(CHECKPOINTS[name][1]()(SENTENCES, padding=True, return_tensors="pt"))
    with torch.no_grad():
        got = to_trimlab(theirs)(batch).logits
    assert float((got - hf_logits(theirs, batch)).abs().max()) <= BOUND


def test_fisher_prunes_a_roberta_classifier() -> None:
    """Right-padded with RoBERTa's padding id 1, as its tokenizer pads."""
    theirs = reference("roberta")
    gen = torch.Generator().manual_seed(1)
    data = []
    for _ in range(3):
        ids = torch.randint(5, VOCAB, (8, 16), generator=gen)
        mask = (torch.arange(16)[None] < torch.randint(5, 17, (8, 1), generator=gen)).long()
        data.append({"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask, "labels": torch.randint(0, LABELS, (8,), generator=gen)})
    small, report = compress(theirs, method="fisher_prune", budget=0.6, data=data, options={"tune": False})
    assert report.flops_ratio <= 0.6 + 0.02
    assert sum(report.stats["heads_per_layer"]) + sum(report.stats["neurons_per_layer"]) < 2 * 2 + 2 * 64
    assert small(data[0]).logits.shape == (8, LABELS)


def test_electra_embedding_projection_is_priced() -> None:
    """Its projection up to the hidden width runs on every token: the analytic count includes it."""
    model = to_trimlab(reference("electra"))
    model.encoder.packed = False
    batch = {"input_ids": torch.randint(5, VOCAB, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    assert analytic_flops(model, [10, 10]) == pytest.approx(count_flops(model, batch), rel=0.01)


@pytest.mark.parametrize(
    "config", [DebertaV2Config(vocab_size=VOCAB, **SHAPE), T5Config(vocab_size=VOCAB, d_model=32)], ids=["deberta-v2", "t5"]
)
def test_an_unsupported_model_type_is_refused_with_the_supported_families(
    config: PretrainedConfig, compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    config.save_pretrained(tmp_path)
    match = rf"model.path='{tmp_path}' is a '{config.model_type}' model.*supported model types: bert .*roberta.*distilbert, electra, mpnet"
    for option in ("hf", "bert_base"):  # whether the family is read from the checkpoint or named
        cfg = compose_cfg(f"model={option}", f"model.path={tmp_path}")
        with pytest.raises(ConfigError, match=match):
            build_model(cfg.model, num_labels=LABELS)


def test_a_family_that_contradicts_the_checkpoint_names_the_right_one(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    _, folder = save_checkpoint("roberta", tmp_path / "roberta")
    cfg = compose_cfg("model=bert_base", f"model.path={folder}")
    with pytest.raises(ConfigError, match="model.family=bert but .* is a 'roberta' model; set model.family=roberta or model.family=auto"):
        build_model(cfg.model, num_labels=LABELS)


def test_model_hf_needs_a_path(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match="model.path is empty"):
        validate(compose_cfg("model=hf"))


def test_a_random_sinusoidal_distilbert_starts_from_the_sinusoidal_table() -> None:
    config = CHECKPOINTS["distilbert-sinusoidal"][0]()
    torch.manual_seed(0)
    theirs = AutoModelForSequenceClassification.from_config(config)
    ours = text_classifier_from_config(config, "distilbert", num_labels=LABELS)
    torch.testing.assert_close(ours.embeddings.position.weight, theirs.distilbert.embeddings.position_embeddings.weight, atol=1e-5, rtol=0)
