"""Wall-clock latency of inference, measured so that speedups can be trusted.

A speedup is only meaningful side by side: the same batch, the same thread
count, in one process, with the two models' repeats interleaved so that
machine noise (other jobs, frequency scaling) falls on both alike.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from trimlab.distributed import is_primary


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one forward on a fixed batch."""

    median_s: float
    p90_s: float
    batch_size: int
    threads: int
    """Intra-op threads torch used during the measurement."""
    device: str
    """Where the models ran: ``cpu`` or ``cuda``."""
    throughput: float = field(init=False)
    """Examples per second at the median latency (a field, so records that ``asdict`` keep it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "throughput", self.batch_size / self.median_s)


def measure_latency(
    model: nn.Module, batch: Mapping[str, Tensor], warmup: int = 3, repeats: int = 10, threads: int = 0
) -> LatencyResult:
    """Time ``model(batch)`` in eval/inference mode; ``threads > 0`` pins torch's thread count for the run.

    ``batch`` must already be on the model's device.
    """
    return _measure([model], batch, warmup, repeats, threads)[0]


def compare_latency(
    model_a: nn.Module,
    model_b: nn.Module,
    batch: Mapping[str, Tensor],
    warmup: int = 3,
    repeats: int = 10,
    threads: int = 0,
) -> tuple[LatencyResult, LatencyResult]:
    """Time two models on one batch with their repeats interleaved (ABAB…), for a fair speedup."""
    a, b = _measure([model_a, model_b], batch, warmup, repeats, threads)
    return a, b


def _measure(
    models: list[nn.Module], batch: Mapping[str, Tensor], warmup: int, repeats: int, threads: int
) -> list[LatencyResult]:
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    first = next(v for v in batch.values() if isinstance(v, Tensor))
    if not is_primary():  # a DDP run times in its primary process only: the others would compete for the cores
        return [LatencyResult(math.nan, math.nan, first.shape[0], torch.get_num_threads(), first.device.type) for _ in models]
    sync = torch.cuda.synchronize if first.is_cuda else (lambda: None)
    modes = [m.training for m in models]
    times: list[list[float]] = [[] for _ in models]
    try:
        for m in models:
            m.eval()
        with _num_threads(threads), torch.inference_mode():
            used_threads = torch.get_num_threads()
            for _ in range(warmup):
                for m in models:
                    m(batch)
            sync()
            for _ in range(repeats):
                for m, record in zip(models, times):
                    start = time.perf_counter()
                    m(batch)
                    sync()
                    record.append(time.perf_counter() - start)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return [
        LatencyResult(statistics.median(t), _percentile(t, 0.9), first.shape[0], used_threads, first.device.type) for t in times
    ]


@contextmanager
def _num_threads(threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the block if ``threads > 0``, then put it back."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: defined for any number of repeats, and always an observed time."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
