"""Fisher post-training pruning of MiniLM-L6 × tweets at several FLOPs budgets, against the dense model in one process.

Prints one JSON line per budget (and, with ``--ablation``, per stage set at
the ablation budget): test accuracy dense vs pruned, the measured FLOPs ratio
on the real test lengths, the measured CPU latency speedup of the physically
pruned model at batch 32 (interleaved repeats), the pruning wall time and the
time of one dense forward pass over the same sample set.

The fine-tuned dense checkpoint is the one ``trimlab`` caches (made on demand).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from trimlab.config import Budget
from trimlab.measure.flops import sequence_length
from trimlab.measure.latency import compare_latency
from trimlab.methods.fisher_prune.callback import FisherPruneMethod
from trimlab.methods.post_training import StepInputs
from trimlab.results.intervals import paired_bootstrap
from trimlab.engine import evaluate_predicting, first_examples

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py

STAGE_SETS = {"search": (False, False), "search+rearrange": (True, False), "search+rearrange+tune": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7], help="FLOPs ratios")
    parser.add_argument("--ablation", type=float, default=None, help="also run search only / +rearrange at this budget")
    parser.add_argument("--output-dir", default="outputs", help="where the dense checkpoint is cached (trimlab's paths.output_dir)")
    parser.add_argument("--batch", type=int, default=32, help="latency batch size")
    parser.add_argument("--repeats", type=int, default=20)
    add_overrides_argument(parser, "extra Hydra overrides, e.g. dataset.sample_size=1024")
    args = parser.parse_args()
    cfg = compose_config(args.output_dir, "method=fisher_prune", *args.overrides)
    run_dir = Path(args.output_dir) / "benchmarks" / "fisher_prune" / f"{cfg.model.name}-{cfg.dataset.name}"
    dense, dm, make_trainer = dense_model(cfg, run_dir)
    dense_eval, labels, dense_preds = evaluate_predicting(dense, dm, make_trainer, dense, cfg.measure.flops_batches)
    samples = list(dm.sample_dataloader(batch_size=cfg.method.batch_size))
    start = time.perf_counter()
    with torch.no_grad():
        for batch in samples:
            dense(batch)
    dense_pass = time.perf_counter() - start
    test_batch = first_examples(dm.test_dataloader(), args.batch)
    seq_len = sequence_length(dense, dm)

    runs = [(b, "search+rearrange+tune") for b in args.budgets]
    if args.ablation is not None:
        runs += [(args.ablation, name) for name in ("search", "search+rearrange")]
    for target, stages in runs:
        method = copy.deepcopy(cfg.method)
        method.rearrange, method.tune = STAGE_SETS[stages]
        pruned = copy.deepcopy(dense)
        inputs = StepInputs(samples, dm.num_labels, seq_len, Path(cfg.paths.cache_dir), run_dir / f"{target:g}-{stages}")
        callback = FisherPruneMethod(method).callback(Budget("flops", target), inputs)  # what a run builds
        start = time.perf_counter()
        callback.compress(pruned)
        prune_seconds = time.perf_counter() - start
        pruned.eval()
        result, _, pruned_preds = evaluate_predicting(pruned, dm, make_trainer, dense, cfg.measure.flops_batches)
        _, delta_low, delta_high = paired_bootstrap(labels, dense_preds, pruned_preds, dm.metric)
        a, b = compare_latency(dense, pruned, test_batch, warmup=3, repeats=args.repeats, threads=cfg.measure.threads)
        line = {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "budget": target,
            "stages": stages,
            "acc_dense": round(dense_eval["metric"], 4),
            "acc_pruned": round(result["metric"], 4),
            "delta_ci_low": round(delta_low, 4),
            "delta_ci_high": round(delta_high, 4),
            "flops_ratio": round(result["flops"] / dense_eval["flops"], 4),
            "latency_speedup": round(a.median_s / b.median_s, 3),
            "latency_batch": args.batch,
            "prune_seconds": round(prune_seconds, 1),
            "dense_pass_seconds": round(dense_pass, 1),
            "stage_seconds": {k: round(v, 1) for k, v in callback.stages.items()},
            "heads_kept": sum(callback.stats["heads_per_layer"]),
            "neurons_kept": sum(callback.stats["neurons_per_layer"]),
            "threads": a.threads,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
