"""Any text classification data ``datasets.load_dataset`` reads: ``dataset=hf``.

``dataset.path`` is a hub name (``imdb``), a file builder (``csv``, ``json``,
``parquet``, ``arrow``) reading ``dataset.data_files``, or a local folder
(``save_to_disk`` output, or data files ``load_dataset`` recognises). The
classes are a ``ClassLabel`` column's names, else the sorted unique label
values of every split, so a label seen only in test still has its index. The
splits are ``train``, ``validation`` and ``test`` as ``datasets`` names them;
a missing test, then a missing validation set, is carved from train
(stratified, seeded by ``split_seed``), so the same data always splits the
same way. Tokenization and batching are the text datamodule's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from trimlab.config import HF_FILE_BUILDERS, ConfigError
from trimlab.data.base import carve_indices
from trimlab.data.text import TextDataModule, TextExamples

SPLITS = ("train", "validation", "test")
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")
"""What ``save_to_disk`` writes at the top of its folder (a ``DatasetDict``, or a single ``Dataset``)."""


@dataclass(frozen=True)
class LabelledSplits:
    """Train, val and test examples, labels 0..N-1 naming ``classes[label]``."""

    train: TextExamples
    val: TextExamples
    test: TextExamples
    classes: tuple[str, ...]


class HfTextDataModule(TextDataModule):
    """A ``dataset=hf`` set, tokenized and batched like every text set; ``num_labels`` comes from :func:`hf_classes`."""

    def check_num_labels(self) -> None:
        if self.num_labels < 2:
            raise ConfigError(
                f"dataset.num_labels={self.num_labels}: count the classes of dataset=hf first "
                "(trimlab.data.num_labels_of, as a trimlab run does)"
            )

    def load_splits(self) -> tuple[TextExamples, TextExamples, TextExamples]:
        splits = load_hf_splits(self.cfg)
        return splits.train, splits.val, splits.test


def hf_classes(cfg: DictConfig) -> tuple[str, ...]:
    """The class names of a ``dataset=hf`` config, read from its data (a ``num_labels`` set there must agree)."""
    return _labelled(cfg, _load(cfg))[1]


def load_hf_splits(cfg: DictConfig) -> LabelledSplits:
    """Train, val and test examples of a ``dataset=hf`` config, missing splits carved from train."""
    splits, classes = _labelled(cfg, _load(cfg))
    seed = int(cfg.split_seed)
    train, test, val = splits["train"], splits.get("test"), splits.get("validation")
    val_share = float(cfg.val_fraction)
    if test is None:
        train, test = _carve(train, float(cfg.test_fraction), seed)
        val_share /= 1 - float(cfg.test_fraction)  # a share of the whole training split, as documented
    if val is None:
        train, val = _carve(train, val_share, seed)
    return LabelledSplits(train, val, test, classes)


def _load(cfg: DictConfig) -> dict[str, Any]:
    """The ``datasets.Dataset`` of each split the source has (``train`` at least)."""
    path = str(cfg.path)
    files = {split: str(Path(f).expanduser()) for split, f in cfg.data_files.items() if f}
    if Path(path).expanduser().is_dir():
        where = f"dataset.path={path!r}"
    elif path in HF_FILE_BUILDERS:
        where = f"dataset.data_files ({', '.join(f'{s}={f}' for s, f in files.items())}) as {path}"
    else:
        where = f"dataset.path={path!r} (a hub name)"
    try:
        loaded = _read(cfg, path, files)
    except Exception as err:  # noqa: BLE001 — datasets and pyarrow raise many kinds; each becomes one line naming the key
        detail = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"could not read {where}: {type(err).__name__}: {detail}") from err
    if "train" not in loaded:
        raise ConfigError(
            f"{where} has splits {list(loaded)} but no 'train'; trimlab trains on 'train' "
            "(set dataset.data_files.train, or save a DatasetDict with a train split)"
        )
    return {split: loaded[split] for split in SPLITS if split in loaded}


def _read(cfg: DictConfig, path: str, files: dict[str, str]) -> Any:
    import datasets

    folder = Path(path).expanduser()
    if folder.is_dir():
        return _saved(folder) if any((folder / f).is_file() for f in SAVED_DATASET_FILES) else datasets.load_dataset(str(folder))
    if path in HF_FILE_BUILDERS:
        return datasets.load_dataset(path, data_files=files)
    return datasets.load_dataset(path, cfg.config_name or None, revision=cfg.revision or None, data_files=files or None)


def _saved(folder: Path) -> Any:
    """A ``save_to_disk`` folder as splits; a single saved ``Dataset`` is the train split."""
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    return loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def _labelled(cfg: DictConfig, splits: dict[str, Any]) -> tuple[dict[str, TextExamples], tuple[str, ...]]:
    """Each split's text columns and class indices, and the class names, every column and label checked."""
    fields, label = list(cfg.text_fields), str(cfg.label_field)
    for split, data in splits.items():
        missing = [c for c in (*fields, label) if c not in data.column_names]
        if missing:
            fix = "dataset.label_field to its label column" if missing == [label] else "dataset.text_fields to its text column (or two)"
            raise ConfigError(
                f"the {split} split has no column {', '.join(missing)} (its columns: {', '.join(data.column_names)}); set {fix}"
            )
    values = {split: data[label] for split, data in splits.items()}
    feature = splits["train"].features[label]
    names = getattr(feature, "names", None)  # a ClassLabel
    if names is not None:
        classes, index = tuple(str(n) for n in names), None
    else:
        index = _class_index(values)
        classes = tuple(str(v) for v in index)
    if len(classes) < 2:
        raise ConfigError(
            f"dataset.label_field={label} holds one class only ({', '.join(classes)}); a classifier needs two or more"
        )
    if cfg.num_labels and cfg.num_labels != len(classes):
        raise ConfigError(
            f"dataset.num_labels={cfg.num_labels} but the data has {len(classes)} classes "
            f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); leave dataset.num_labels=0 to count them"
        )
    if cfg.metric == "f1" and len(classes) != 2:
        raise ConfigError(f"dataset.metric=f1 needs two classes; the data has {len(classes)}: use dataset.metric=accuracy")
    examples = {}
    for split, data in splits.items():
        labels = np.asarray(values[split], dtype=np.int64) if index is None else np.asarray([index[v] for v in values[split]], dtype=np.int64)
        if index is None and len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ConfigError(
                f"the {split} split has labels outside 0..{len(classes) - 1} (e.g. {int(labels.min())}: unlabelled examples); "
                f"give labelled data, or data without that split (trimlab then carves it from train)"
            )
        columns = tuple(["" if t is None else str(t) for t in data[c]] for c in fields)
        examples[split] = TextExamples(columns, labels)
    return examples, classes


def _class_index(values: dict[str, list[Any]]) -> dict[Any, int]:
    """Label value → class index over the sorted unique values of every split; floats and missing labels refused."""
    seen: set[Any] = set()
    for split, labels in values.items():
        for v in labels:
            if v is None:
                raise ConfigError(f"the {split} split has examples without a label; drop them or fill dataset.label_field's column")
            if isinstance(v, float):
                raise ConfigError(
                    f"dataset.label_field holds floats (e.g. {v:g} in {split}); dataset=hf classifies: "
                    "give class labels as integers or strings"
                )
        seen.update(labels)
    try:
        return {v: i for i, v in enumerate(sorted(seen))}
    except TypeError:
        kinds = sorted({type(v).__name__ for v in seen})
        raise ConfigError(f"dataset.label_field mixes {' and '.join(kinds)} labels across splits; give every split the same kind") from None


def _carve(examples: TextExamples, fraction: float, seed: int) -> tuple[TextExamples, TextExamples]:
    """``examples`` split into kept and held-out parts, stratified by label where every class can be."""
    try:
        keep, held = carve_indices(examples.labels, len(examples), seed, fraction)
    except ValueError:  # a class with one example, or fewer held-out examples than classes: not stratifiable
        keep, held = carve_indices(None, len(examples), seed, fraction)
    return examples.take(keep), examples.take(held)
