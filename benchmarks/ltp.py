"""LTP vs top-k token pruning vs the dense model, MiniLM-L6 on the embedded text sets, in one process.

Prints one JSON line per (dataset, FLOPs target): test accuracy of the dense
model, of LTP and of the top-k baseline trained to the same FLOPs target, the
measured FLOPs ratio of LTP on the test set, and LTP's CPU throughput speedup
over the dense model at batch 1 and at padded batches of 32, timed over the
same test examples with dense and pruned passes interleaved.

The fine-tuned dense checkpoint is the one ``trimlab`` caches (made on demand).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from trimlab.config import Budget, ConfigError
from trimlab.run import method_context, run_context
from trimlab.methods.ltp.method import LTPMethod
from trimlab.engine import evaluate

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["bbc_news"], choices=["bbc_news", "tweets"])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5], help="FLOPs ratios (tokens budget)")
    parser.add_argument("--timed-examples", type=int, default=256, help="test examples the throughput is timed on")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", default="outputs", help="where the dense checkpoint is cached (trimlab's paths.output_dir)")
    add_overrides_argument(parser, "extra Hydra overrides, e.g. method.hard_epochs=2")
    args = parser.parse_args()
    for dataset in args.datasets:
        model = [] if any(o.startswith("model=") for o in args.overrides) else ["model=minilm_l6"]  # the default model
        cfg = compose_config(args.output_dir, *model, f"dataset={dataset}", "method=ltp", "budget=tokens_50", *args.overrides)
        for target in args.targets:
            print(json.dumps(benchmark(cfg, target, args)), flush=True)


def benchmark(cfg, target: float, args) -> dict:
    run_dir = Path(args.output_dir) / "benchmarks" / "ltp" / f"{cfg.model.name}-{cfg.dataset.name}-{target:g}"
    dense, dm, make_trainer = dense_model(cfg, run_dir)
    dense_eval = evaluate(dense, dm, make_trainer, dense, cfg.measure.flops_batches)
    budget = Budget("tokens", target)
    results, unreachable = {}, {}
    for selector in ("thresholds", "topk"):
        method_cfg = copy.deepcopy(cfg.method)
        method_cfg.selector = selector
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        method = LTPMethod(method_cfg)
        try:
            method.check(run_context(cfg), budget, model, dm)
        except ConfigError as error:
            if selector == "thresholds":
                raise
            unreachable[selector] = str(error)  # top-k's schedule keeps its first layers whole: report, don't train
            continue
        method.apply(model, dataclasses.replace(method_context(cfg, dm, run_dir / selector, make_trainer), budget=budget))
        results[selector] = (model.eval(), evaluate(model, dm, make_trainer, dense, cfg.measure.flops_batches), time.perf_counter() - start)
    ltp, ltp_eval, ltp_seconds = results["thresholds"]
    examples = [{k: v[i : i + 1] for k, v in b.items()} for b in dm.test_dataloader() for i in range(len(b["labels"]))]
    examples = examples[: args.timed_examples]
    speedups = {}
    for batch_size in (1, 32):
        batches = [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
        dense_s, ltp_s = interleaved_pass_seconds([dense, ltp], batches, args.repeats)
        speedups[f"throughput_speedup_b{batch_size}"] = round(dense_s / ltp_s, 3)
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "target": target,
        "acc_dense": round(dense_eval["metric"], 4),
        "acc_ltp": round(ltp_eval["metric"], 4),
        "acc_topk_same_flops": round(results["topk"][1]["metric"], 4) if "topk" in results else None,
        "flops_ratio": round(ltp_eval["flops"] / dense_eval["flops"], 4),
        "flops_ratio_topk": round(results["topk"][1]["flops"] / dense_eval["flops"], 4) if "topk" in results else None,
        **speedups,
        "ltp_train_seconds": round(ltp_seconds, 1),
        "timed_examples": len(examples),
        "threads": torch.get_num_threads(),
        **({"topk_unreachable": unreachable["topk"]} if unreachable else {}),
    }


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack single examples into one batch, right-padded to the longest real length."""
    length = max(int(e["attention_mask"].sum()) for e in examples)
    return {
        k: torch.cat([e[k][:, :length] if e[k].ndim == 2 else e[k] for e in examples])
        for k in examples[0]
        if k != "labels"
    }


@torch.inference_mode()
def interleaved_pass_seconds(models: list[torch.nn.Module], batches: list[dict[str, torch.Tensor]], repeats: int) -> list[float]:
    """Median seconds of a full pass over ``batches`` per model, passes interleaved model by model."""
    times: list[list[float]] = [[] for _ in models]
    for model in models:
        model(batches[0])  # warm-up
    for _ in range(repeats):
        for model, acc in zip(models, times):
            start = time.perf_counter()
            for batch in batches:
                model(batch)
            acc.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


if __name__ == "__main__":
    main()
