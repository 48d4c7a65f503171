"""A shuffled order that puts examples of similar length in the same batch.

With dynamic padding a batch costs as much as its longest example; on a CPU
that padding is most of the time for short texts. Sorting only within chunks
of ~50 batches keeps the order random at the scale of an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class LengthBucketSampler(Sampler[int]):
    """Shuffle with the seed, sort by length within chunks of ``chunk_batches`` batches, shuffle the batches.

    Yields indices: consecutive runs of ``batch_size`` form the batches, so it
    is a plain ``sampler`` of a ``DataLoader(batch_size=batch_size)``. The one
    partial batch stays last so batch boundaries line up. Call
    :meth:`set_epoch` (Lightning does) for a new order each epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, chunk_batches: int = 50) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk = batch_size * chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches: list[np.ndarray] = []
        for start in range(0, len(order), self.chunk):
            chunk = order[start : start + self.chunk]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        for i in rng.permutation(len(full)):
            yield from full[i].tolist()
        for b in partial:
            yield from b.tolist()
