"""Per-layer latency look-up tables measured on this machine, and the piecewise-linear fit the search uses.

Kwon et al. time one attention sublayer for every head count and one FFN for
every neuron count, then fit "constant up to a threshold, linear after it".
Timing every one of 1,536 or 3,072 neuron counts would take minutes on a CPU,
so the FFN is timed on an even grid of counts and the fit is done on those
points. Tables are timed on the model's device and cached per architecture ×
input shape × threads × CPU (× GPU), so they are built once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trimlab.files import atomic_write_text
from trimlab.models.encoder import Attention, FeedForward, TokenState


@dataclass(frozen=True)
class LatencyFn:
    """Latency of a sublayer with ``n`` units: 0 if none, ``c`` up to ``threshold``, then ``slope`` per unit."""

    threshold: int
    c: float
    slope: float

    def __call__(self, n: int) -> float:
        if n <= 0:
            return 0.0
        return self.c + self.slope * max(0, n - self.threshold)


@dataclass
class LatencyTable:
    """Measured median seconds of one sublayer per unit count."""

    counts: list[int]
    seconds: list[float]

    def fit(self) -> LatencyFn:
        return fit_latency_fn(self.counts, self.seconds)


def fit_latency_fn(counts: list[int], seconds: list[float]) -> LatencyFn:
    """Least-squares constant-then-linear fit; the threshold is tried at every measured count."""
    x = np.asarray(counts, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    best: tuple[float, LatencyFn] | None = None
    for i, threshold in enumerate(x):
        c = float(y[: i + 1].mean())
        dx, dy = x[i + 1 :] - threshold, y[i + 1 :] - c
        slope = max(0.0, float((dx * dy).sum() / (dx * dx).sum())) if len(dx) else 0.0
        fn = LatencyFn(int(threshold), c, slope)
        error = float(sum((fn(int(n)) - t) ** 2 for n, t in zip(x, y)))
        if best is None or error < best[0]:
            best = (error, fn)
    assert best is not None
    return best[1]


@dataclass
class LayerLatency:
    """The two tables of one encoder layer shape, and how they were measured."""

    attention: LatencyTable
    ffn: LatencyTable
    batch_size: int
    seq_len: int
    threads: int


def _time(fn, warmup: int, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_layer_latency(
    hidden: int,
    heads: int,
    head_dim: int,
    ffn_dim: int,
    activation: str,
    batch_size: int,
    seq_len: int,
    ffn_points: int = 24,
    warmup: int = 3,
    repeats: int = 10,
    device: str = "cpu",
) -> LayerLatency:
    """Time an attention sublayer for 1..``heads`` heads and an FFN for ``ffn_points`` neuron counts on ``device`` (cpu, cuda)."""
    x = torch.randn(batch_size, seq_len, hidden, device=device)
    valid = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
    state = TokenState(x, valid, torch.arange(seq_len, device=device).expand(batch_size, -1))
    head_counts = list(range(1, heads + 1))
    attention_s = []
    for h in head_counts:
        attn = Attention(hidden, h, head_dim, 0.0).to(device).eval()
        attention_s.append(_time(lambda: attn(x, state), warmup, repeats, device))
    neuron_counts = sorted({max(1, int(round(v))) for v in np.linspace(0, ffn_dim, ffn_points + 1)[1:]} | {1})
    ffn_s = []
    for n in neuron_counts:
        ffn = FeedForward(hidden, n, activation).to(device).eval()
        ffn_s.append(_time(lambda: ffn(x), warmup, repeats, device))
    return LayerLatency(
        LatencyTable(head_counts, attention_s), LatencyTable(neuron_counts, ffn_s), batch_size, seq_len, torch.get_num_threads()
    )


def lut_key(
    hidden: int, heads: int, head_dim: int, ffn_dim: int, activation: str, batch_size: int, seq_len: int, device: str = "cpu"
) -> str:
    """A file name that changes with anything the timings depend on (shape, threads, CPU, GPU)."""
    machine = f"{platform.machine()}-{platform.processor()}-{os.cpu_count()}-{torch.__version__}"
    if device == "cuda":
        machine += f"-{torch.cuda.get_device_name()}"
    digest = hashlib.sha1(machine.encode()).hexdigest()[:8]
    return f"d{hidden}-h{heads}x{head_dim}-f{ffn_dim}-{activation}-b{batch_size}-s{seq_len}-t{torch.get_num_threads()}-{digest}.json"


def cached_layer_latency(cache_dir: Path, **shape) -> tuple[LayerLatency, bool]:
    """The layer's tables from ``cache_dir`` or, measured now and cached (atomically). Returns (tables, was_cached)."""
    keys = ("hidden", "heads", "head_dim", "ffn_dim", "activation", "batch_size", "seq_len", "device")
    path = Path(cache_dir) / lut_key(**{k: shape[k] for k in keys if k in shape})
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            return (
                LayerLatency(LatencyTable(**raw["attention"]), LatencyTable(**raw["ffn"]), raw["batch_size"], raw["seq_len"], raw["threads"]),
                True,
            )
        except (ValueError, KeyError, TypeError):
            path.unlink()  # a damaged cache entry is re-measured
    tables = measure_layer_latency(**shape)
    atomic_write_text(path, json.dumps(asdict(tables)))
    return tables, False
