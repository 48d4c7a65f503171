"""The datamodule interface every method relies on, and deterministic split helpers.

Two seeds play different parts: ``dataset.split_seed`` fixes which examples
are train/val/test (so every run on a set sees the same test examples), the
run seed fixes the training order and the calibration sample.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset, default_collate

from trimlab.resumable import ResumableLoader


class TrimlabDataModule(pl.LightningDataModule):
    """Train/val/test loaders plus a seeded sample loader for post-training methods.

    Subclasses implement :meth:`build` (the three datasets, built once) and may
    override :meth:`collate`, :meth:`train_sampler` and :meth:`sample_source`.
    Every loader calls :meth:`setup` first, so the module also works when a
    Trainer is handed its loaders directly.
    """

    def __init__(self, cfg: DictConfig, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.num_labels: int = int(cfg.num_labels)
        self.metric: str = str(cfg.metric)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @abstractmethod
    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """Load and prepare the train, val and test datasets (called once)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build()

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return default_collate(examples)

    def train_sampler(self) -> Sampler[int]:
        """Shuffled order, reproducible from the run seed."""
        return RandomSampler(self.train_set, generator=torch.Generator().manual_seed(self.seed))

    def sample_source(self) -> Dataset:
        """Training examples as evaluation sees them (no augmentation): the pool of :meth:`sample_dataloader`."""
        return self.train_set

    def train_dataloader(self) -> DataLoader:
        """Shuffled, and resumable mid-epoch (worker seeds from its own seeded generator, see :class:`ResumableLoader`)."""
        self.setup()
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_set, self.cfg.batch_size, sampler=self.train_sampler(), kind=ResumableLoader, generator=generator)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, self.cfg.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, self.cfg.eval_batch_size)

    def sample_dataloader(self, num_samples: int | None = None, batch_size: int | None = None) -> DataLoader:
        """``num_samples`` (default ``sample_size``) training examples drawn with the run seed.

        Without replacement when the training set is large enough, else with
        replacement; labels are included when the set has them.
        """
        self.setup()
        source = self.sample_source()
        n = int(num_samples or self.cfg.sample_size)
        rng = np.random.default_rng(self.seed)
        indices = rng.choice(len(source), size=n, replace=n > len(source))
        return self._loader(Subset(source, indices.tolist()), batch_size or self.cfg.batch_size)

    def _loader(
        self, dataset: Dataset, batch_size: int, sampler: Sampler[int] | None = None, kind: type[DataLoader] = DataLoader, **extra: Any
    ) -> DataLoader:
        workers = int(self.cfg.num_workers)
        return kind(
            dataset,
            batch_size=int(batch_size),
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            **extra,
        )


def split_indices(
    labels: np.ndarray | None, n: int, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/val/test indices, stratified by ``labels`` (``None``: not stratified)."""
    everything = np.arange(n)
    rest, test = train_test_split(everything, test_size=test_fraction, random_state=seed, stratify=labels)
    rest_labels = None if labels is None else labels[rest]
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=rest_labels)
    return np.asarray(train), np.asarray(val), np.asarray(test)


def group_split_indices(
    groups: Sequence[str], seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/val/test indices that keep each group whole (no movie's reviews in two splits).

    The groups, not the examples, are split by the fractions, so the example
    counts follow them only on average.
    """
    names, group_of = np.unique(np.asarray(groups), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(names))
    n_test, n_val = round(len(names) * test_fraction), round(len(names) * val_fraction)
    part = np.zeros(len(names), dtype=np.int64)
    part[order[:n_test]] = 2
    part[order[n_test : n_test + n_val]] = 1
    of_example = part[group_of]
    return np.flatnonzero(of_example == 0), np.flatnonzero(of_example == 1), np.flatnonzero(of_example == 2)


def carve_indices(labels: np.ndarray | None, n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (stratified when ``labels`` is given) split of ``n`` examples into keep/held-out indices."""
    keep, held = train_test_split(np.arange(n), test_size=fraction, random_state=seed, stratify=labels)
    return np.asarray(keep), np.asarray(held)


def limit_indices(n: int, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``n`` indices (0 = all), a seeded subset kept in original order."""
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def limited(dataset: Dataset, limit: int, seed: int) -> Dataset:
    """``dataset`` cut to at most ``limit`` examples by :func:`limit_indices`."""
    indices = limit_indices(len(dataset), limit, seed)
    return dataset if len(indices) == len(dataset) else Subset(dataset, indices.tolist())


def subset_of(items: Sequence[Any], indices: np.ndarray) -> list[Any]:
    """``items`` at ``indices``, as a list."""
    return [items[i] for i in indices]

