"""Mask tuning before and after issue 30: dense-equivalent passes of each pruning stage and tuning wall time, one process.

Runs Fisher pruning's stages (Fisher gradients → FLOPs search → rearrangement
→ mask tuning) on the default sample set, counting each stage's FLOPs with
:class:`torch.utils.flop_counter.FlopCounterMode` in units of one dense
forward pass over the same samples. Mask tuning runs on the same masks in
two versions: today's :func:`~trimlab.methods.fisher_prune.tune.tune_masks`
and the one of git commit ``--baseline`` (read with ``git show``, so run this
from a git checkout), each counted once, then timed alternately ``--repeats``
times so machine noise hits both alike. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from trimlab.measure.flops import sequence_length  # importing it also registers the FLOPs of CPU attention
from trimlab.methods.fisher_prune.callback import encoder_flops, encoder_flops_target
from trimlab.methods.fisher_prune.fisher import collect_mask_gradients
from trimlab.methods.fisher_prune.rearrange import rearrange
from trimlab.methods.fisher_prune.search import Masks, milder_target, search_flops
from trimlab.methods.fisher_prune.tune import tune_masks

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py

TUNE_PATH = "src/trimlab/methods/fisher_prune/tune.py"


def baseline_tune_masks(commit: str):
    """``tune_masks`` as it was at ``commit``."""
    source = subprocess.run(["git", "show", f"{commit}:{TUNE_PATH}"], check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_tune.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_tune", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_tune"] = module
    spec.loader.exec_module(module)
    return module.tune_masks


def counted(fn, *args, **kwargs):
    """``fn``'s result, its FLOPs and its wall time."""
    start = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return result, counter.get_total_flops(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="cffdc44", help="the commit whose mask tuning is the 'before'")
    parser.add_argument("--repeats", type=int, default=3, help="alternate timings of each tuning")
    parser.add_argument("--output-dir", default="outputs", help="where the dense checkpoint is cached (trimlab's paths.output_dir)")
    add_overrides_argument(parser, "extra Hydra overrides, e.g. finetune.enabled=false")
    args = parser.parse_args()
    cfg = compose_config(args.output_dir, *args.overrides)
    model, dm, _ = dense_model(cfg, Path(args.output_dir) / "benchmarks" / "mask_tuning")
    samples = list(dm.sample_dataloader(batch_size=cfg.method.batch_size))
    spec, seq_len = model.encoder.spec, sequence_length(model, dm)
    tokens = sum(int(b["attention_mask"].sum()) for b in samples)

    def dense_pass() -> None:
        with torch.no_grad():
            for batch in samples:
                model(batch)

    _, dense_flops, dense_seconds = counted(dense_pass)
    grads, fisher_flops, _ = counted(collect_mask_gradients, model, samples, dm.num_labels, progress=False)
    costs = (encoder_flops(spec, 1, 0, seq_len), encoder_flops(spec, 0, 1, seq_len))
    heads_imp, neurons_imp = grads.head_importance(), grads.neuron_importance()

    def search(target: float) -> Masks:
        return search_flops(heads_imp, neurons_imp, *costs, encoder_flops_target(model, target, seq_len))

    searched, search_flops_count, _ = counted(search, cfg.budget.target)
    student, rearrange_flops, _ = counted(
        lambda: Masks(rearrange(searched.heads, grads.heads), rearrange(searched.neurons, grads.neurons))
    )
    teacher = search(milder_target(cfg.budget.target, cfg.method.teacher_steps))
    tunings = {"before": baseline_tune_masks(args.baseline), "after": tune_masks}
    tune_args = (model, samples, student, teacher, cfg.method.damping, cfg.method.max_scale)
    flops, seconds, masks, reports = {}, {name: [] for name in tunings}, {}, {}
    for name, tune in tunings.items():  # counted once, untimed: the counter slows every operation
        (masks[name], reports[name]), flops[name], _ = counted(tune, *tune_args, progress=False)
    for _ in range(args.repeats):
        for name, tune in tunings.items():
            start = time.perf_counter()
            tune(*tune_args, progress=False)
            seconds[name].append(time.perf_counter() - start)
    passes = {name: round(f / dense_flops, 2) for name, f in flops.items()}
    others = (fisher_flops + search_flops_count + rearrange_flops) / dense_flops
    line = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "budget": cfg.budget.target,
        "samples": sum(len(b["input_ids"]) for b in samples),
        "tokens": tokens,
        "tune_memory_bound_mb": round(tokens * (4 * spec.hidden_size + spec.ffn_dim) * 4 / 2**20, 1),
        "dense_pass_seconds": round(dense_seconds, 2),
        "passes": {"fisher": round(fisher_flops / dense_flops, 2), "search": round(search_flops_count / dense_flops, 2),
                   "rearrange": round(rearrange_flops / dense_flops, 2), "tune_before": passes["before"], "tune_after": passes["after"]},
        "pruning_passes_before": round(others + passes["before"], 2),
        "pruning_passes_after": round(others + passes["after"], 2),
        "tune_seconds_before": [round(s, 2) for s in seconds["before"]],
        "tune_seconds_after": [round(s, 2) for s in seconds["after"]],
        "tune_time_ratio_median": round(statistics.median(seconds["after"]) / statistics.median(seconds["before"]), 3),
        "tuned_layers": {name: r.tuned_layers for name, r in reports.items()},
        "max_mask_difference": max(
            float((masks["after"].heads - masks["before"].heads).abs().max()),
            float((masks["after"].neurons - masks["before"].neurons).abs().max()),
        ),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
