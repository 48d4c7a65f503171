"""Token pruning's speed against its physical limit, through the packed and the padded encoder layouts.

For each setting the dense model (trimlab's cached fine-tune) and the
compressed one are timed side by side in one process on the same test
examples, at batch 1 and at batches of 32 right-padded to their longest
example, each model through the packed layout (``encoder.packed``: the
default) and the padded one, all four passes interleaved. One JSON line per
setting::

    {"method", "model", "dataset", "flops_ratio", "speedup_b1", "speedup_b32",
     "limit_fraction_b1", "limit_fraction_b32", "acc_dense", "acc_pruned",
     "padded_speedup_b1", "padded_speedup_b32", ...}

``speedup`` = dense / compressed, both packed; ``padded_speedup`` the same two
models both padded (the path before the packed one existed);
``limit_fraction = speedup × flops_ratio`` (1.0: the FLOPs saving fully
turned into speed); ``dense_packed_over_padded`` the dense model's own gain
from packing; accuracies with their 95% bootstrap interval and the paired
interval of compressed − dense. The pipeline setting adds Fisher pruning
alone at the same FLOPs target, timed in the same interleave
(``fisher_speedup_b*``).

Settings: ``ltp`` (MiniLM-L6 × BBC News, LTP at 0.5 of the FLOPs), ``sait``
(vit_digits, SaiT at density 0.6), ``sait_animal`` (vit_animal_mnist at 0.6),
``pipeline`` (Fisher → LTP → 4-bit PWLQ at 0.5 on tweets, and Fisher alone),
``dense`` (MiniLM-L6 on tweets: packed vs padded, the same model).
Trained weights are trimlab's caches (made on demand: LTP on BBC News trains
for tens of minutes on 2 cores; ``--quick`` shortens every training to a
fraction of an epoch, for trying the script, not for numbers). ``--profile``
adds ``profile_b1``/``profile_b32``: each model's costliest operators in one
packed pass, as shares of its CPU time (what the speedup is made of).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trimlab.config import Budget
from trimlab.methods import build_method
from trimlab.run import method_context, run_context
from trimlab.results.intervals import metric_interval, paired_bootstrap
from trimlab.results.record import run_id
from trimlab.engine import evaluate_predicting, first_examples

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py

SETTINGS: dict[str, dict[str, Any]] = {
    "ltp": {"overrides": ["model=minilm_l6", "dataset=bbc_news", "method=ltp", "budget=tokens_50", "method.soft_epochs=1", "method.hard_epochs=1"]},
    "sait": {"overrides": ["model=vit_digits", "dataset=digits", "method=sait", "budget=none", "method.density=0.6"]},
    "sait_animal": {"overrides": ["model=vit_animal_mnist", "dataset=animal_mnist", "method=sait", "budget=none", "method.density=0.6"]},
    "pipeline": {
        "overrides": ["model=minilm_l6", "dataset=tweets", "method=fisher_ltp_pwlq", "budget=flops_50"],
        "alongside": ("fisher", ["model=minilm_l6", "dataset=tweets", "method=fisher_prune", "budget=flops_50"]),
    },
    "dense": {"overrides": ["model=minilm_l6", "dataset=tweets", "method=dense", "budget=none"]},
}
QUICK = {
    "ltp": ["method.soft_epochs=0.1", "method.hard_epochs=0.1", "finetune.epochs=0.2"],
    "sait": ["method.epochs=1"],
    "sait_animal": ["method.epochs=0.2", "finetune.epochs=1"],
    "pipeline": ["method.steps.tokens.soft_epochs=0.1", "method.steps.tokens.hard_epochs=0.1"],
    "dense": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["dense", "sait", "ltp", "pipeline"], choices=list(SETTINGS))
    parser.add_argument("--timed-examples", type=int, default=256, help="test examples every pass runs over")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved passes per model (the median is kept)")
    parser.add_argument("--output-dir", default="outputs", help="where trained weights are cached (trimlab's paths.output_dir)")
    parser.add_argument("--quick", action="store_true", help="fractions of an epoch of training: try the script, do not quote it")
    parser.add_argument("--profile", action="store_true", help="add where each model's packed pass spends its time (top operators)")
    add_overrides_argument(parser, "extra Hydra overrides for every setting")
    args = parser.parse_args()
    for name in args.settings:
        print(json.dumps(benchmark(name, args)), flush=True)


def benchmark(name: str, args: argparse.Namespace) -> dict[str, Any]:
    setting = SETTINGS[name]
    quick = QUICK[name] if args.quick else []
    cfg = compose_config(args.output_dir, *setting["overrides"], *quick, *args.overrides)
    dense, dm, compressed, make_trainer, method_seconds = _compressed(cfg, Path(args.output_dir) / "benchmarks" / "tokens" / name)
    dense_metrics, labels, dense_preds = evaluate_predicting(dense, dm, make_trainer, dense, cfg.measure.flops_batches)
    metrics, _, preds = evaluate_predicting(compressed, dm, make_trainer, dense, cfg.measure.flops_batches)
    models = {"dense": dense, "pruned": compressed}
    if "alongside" in setting:
        label, overrides = setting["alongside"]
        other_cfg = compose_config(args.output_dir, *overrides, *args.overrides)
        models[label] = _compressed(other_cfg, Path(args.output_dir) / "benchmarks" / "tokens" / f"{name}-{label}")[2]
    flops_ratio = metrics["flops"] / dense_metrics["flops"]
    line: dict[str, Any] = {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "flops_ratio": round(flops_ratio, 4),
    }
    examples = _test_examples(dm, args.timed_examples)
    for batch_size in (1, 32):
        seconds = _interleaved(models, _batches(examples, batch_size), args.repeats)
        b = f"b{batch_size}"
        line[f"speedup_{b}"] = round(seconds["dense", True] / seconds["pruned", True], 3)
        line[f"limit_fraction_{b}"] = round(line[f"speedup_{b}"] * flops_ratio, 3)
        line[f"padded_speedup_{b}"] = round(seconds["dense", False] / seconds["pruned", False], 3)
        line[f"dense_packed_over_padded_{b}"] = round(seconds["dense", False] / seconds["dense", True], 3)
        line[f"pruned_packed_over_padded_{b}"] = round(seconds["pruned", False] / seconds["pruned", True], 3)
        for label in models.keys() - {"dense", "pruned"}:
            line[f"{label}_speedup_{b}"] = round(seconds["dense", True] / seconds[label, True], 3)
        line[f"dense_ms_per_example_{b}"] = round(1e3 * seconds["dense", True] / len(examples), 3)
        if args.profile:
            line[f"profile_{b}"] = _profile(models, _batches(examples, batch_size))
    _, low, high = metric_interval(labels, dense_preds, dm.metric)
    line.update(acc_dense=round(dense_metrics["metric"], 4), acc_dense_ci_low=round(low, 4), acc_dense_ci_high=round(high, 4))
    _, low, high = metric_interval(labels, preds, dm.metric)
    line.update(acc_pruned=round(metrics["metric"], 4), acc_ci_low=round(low, 4), acc_ci_high=round(high, 4))
    _, low, high = paired_bootstrap(labels, dense_preds, preds, dm.metric)
    line.update(delta_ci_low=round(low, 4), delta_ci_high=round(high, 4))
    line.update(
        same_predictions_packed_padded=_same_predictions(compressed, examples),
        metric=dm.metric,
        timed_examples=len(examples),
        threads=torch.get_num_threads(),
        method_seconds=round(method_seconds, 1),
        quick=args.quick,
    )
    return line


def _compressed(cfg: Any, run_dir: Path) -> tuple[nn.Module, Any, nn.Module, Callable[..., Any], float]:
    """The dense model, its datamodule, the method's compressed copy (kept in ``run_dir``), a trainer factory, the method's seconds."""
    dense, dm, make_trainer = dense_model(cfg, run_dir)
    start = time.perf_counter()
    method = build_method(cfg.method)
    method.check(run_context(cfg), Budget.of(cfg.budget), dense, dm)
    if cfg.method.name == "dense":
        return dense, dm, dense, make_trainer, 0.0
    kept = run_dir / f"compressed-{run_id(cfg)}.pt"  # the whole module, so a rerun times it again without training
    if kept.exists():
        return dense, dm, torch.load(kept, weights_only=False).eval(), make_trainer, 0.0
    torch.manual_seed(cfg.seed)
    result = method.apply(copy.deepcopy(dense), method_context(cfg, dm, run_dir, make_trainer))
    seconds = time.perf_counter() - start
    kept.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.model, kept)
    return dense, dm, result.model.eval(), make_trainer, seconds


def _test_examples(dm: Any, n: int) -> list[dict[str, Tensor]]:
    """The first ``n`` test examples, one by one (labels left out)."""
    examples = []
    for batch in dm.test_dataloader():
        size = len(batch["labels"])
        for i in range(size):
            examples.append({k: v[i : i + 1] for k, v in batch.items() if k != "labels"})
            if len(examples) == n:
                return examples
    return examples


def _batches(examples: list[dict[str, Tensor]], batch_size: int) -> list[dict[str, Tensor]]:
    """Consecutive examples stacked, text right-padded to the batch's longest example (as a data loader pads)."""
    return [first_examples(examples[i : i + batch_size], batch_size) for i in range(0, len(examples), batch_size)]


@torch.inference_mode()
def _interleaved(models: dict[str, nn.Module], batches: list[dict[str, Tensor]], repeats: int) -> dict[tuple[str, bool], float]:
    """Median seconds of a pass over ``batches`` for each model × layout, interleaved batch by batch.

    Every batch runs on each model × layout in turn, so a change of load on the
    machine falls on all of them alike, in an order reversed from one batch to
    the next (what runs later finds warmer caches); a pass's time is the sum
    over its batches.
    """
    runs = [(label, packed) for label in models for packed in (True, False)]
    times: dict[tuple[str, bool], list[float]] = {run: [] for run in runs}
    for repeat in range(repeats + 1):  # the first round warms up
        totals = dict.fromkeys(runs, 0.0)
        for i, batch in enumerate(batches):
            for label, packed in runs if i % 2 else runs[::-1]:
                model = models[label]
                model.encoder.packed = packed
                start = time.perf_counter()
                model(batch)
                totals[label, packed] += time.perf_counter() - start
        if repeat:
            for run in runs:
                times[run].append(totals[run])
    for model in models.values():
        model.encoder.packed = True
    return {run: statistics.median(t) for run, t in times.items()}


@torch.inference_mode()
def _profile(models: dict[str, nn.Module], batches: list[dict[str, Tensor]], top: int = 8) -> dict[str, dict[str, float]]:
    """Each model's costliest operators in one packed pass: share of the pass's self CPU time (profiled, so per-op costs weigh more)."""
    shares = {}
    for label, model in models.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for batch in batches:
                model(batch)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        shares[label] = {e.key: round(e.self_cpu_time_total / total, 3) for e in ranked}
    return shares


@torch.inference_mode()
def _same_predictions(model: nn.Module, examples: list[dict[str, Tensor]]) -> bool:
    """Whether both layouts predict the same class for every timed example (batches of 32, padding included)."""
    predictions = []
    for packed in (True, False):
        model.encoder.packed = packed
        predictions.append(torch.cat([model(b).logits.argmax(-1) for b in _batches(examples, 32)]))
    model.encoder.packed = True
    return bool(torch.equal(*predictions))


if __name__ == "__main__":
    main()
