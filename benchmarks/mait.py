"""MaiT vs the unmasked ViT: the same model, recipe and seeds, with and without locality masks.

``--dataset digits`` (vit_digits / cait_digits, 180 test images) or ``animal_mnist``
(vit_animal_mnist / cait_animal_mnist: 196 patch tokens, 1,000 test images).

Per seed, the unmasked model is trimlab's dense model (trained from scratch with
the model's recipe, cached) and the MaiT model is the same architecture
re-initialised and trained with the same recipe, masks installed. Prints one
JSON line per variant: test accuracy mean, std and 95% Student-t interval over
the seeds (``acc_ci_low``/``acc_ci_high``), for MaiT the paired bootstrap 95%
interval of masked − unmasked on the same test images (``delta_ci_low``/
``delta_ci_high``), params, FLOPs per image, and the CPU throughput of the
variant over the unmasked model (batch ``--batch-size``, passes interleaved,
median of ``--repeats``). Each seed's result is kept under ``--output-dir``: a
rerun resumes, and seeds run side by side as separate processes are aggregated
by one more call with all of them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from trimlab.data import build_datamodule
from trimlab.measure.latency import compare_latency
from trimlab.run import method_context
from trimlab.methods.mait.masks import install_masks, locality_mask, masked_heads_of
from trimlab.methods.mait.method import MaiTMethod
from trimlab.models.build import build_model
from trimlab.results.intervals import paired_bootstrap, seed_interval
from trimlab.engine import evaluate_predicting, first_examples

from common import add_overrides_argument, compose_config, dense_model, seed_result  # benchmarks/common.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=["digits", "animal_mnist"])
    parser.add_argument("--model", default="vit", choices=["vit", "cait"], help="the ViT or its CaiT-style variant for the dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64, help="batch the throughput is timed at")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output-dir", default="outputs", help="where dense checkpoints are cached (trimlab's paths.output_dir)")
    parser.add_argument("--timing-only", action="store_true", help="only time masked vs unmasked (untrained weights: the cost does not depend on them)")
    add_overrides_argument(parser, "extra Hydra overrides, e.g. method.window=[5,5]")
    args = parser.parse_args()
    args.model = f"{args.model}_{args.dataset}"
    if args.timing_only:
        print(json.dumps(time_masks(args)), flush=True)
        return
    runs = [benchmark_seed(seed, args) for seed in args.seeds]
    labels, unmasked = np.stack([r["labels"] for r in runs]), np.stack([r["unmasked_preds"] for r in runs])
    _, delta_low, delta_high = paired_bootstrap(labels, unmasked, np.stack([r["mait_preds"] for r in runs]), "accuracy")
    for variant in ("unmasked", "mait"):
        accs = [r[variant]["metric"] for r in runs]
        _, low, high = seed_interval(accs)
        print(
            json.dumps(
                {
                    "variant": variant,
                    "model": args.model,
                    "dataset": args.dataset,
                    "acc_mean": round(statistics.fmean(accs), 4),
                    "acc_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                    "acc_ci_low": round(low, 4),
                    "acc_ci_high": round(high, 4),
                    **({"delta_ci_low": round(delta_low, 4), "delta_ci_high": round(delta_high, 4)} if variant == "mait" else {}),
                    "accs": [round(a, 4) for a in accs],
                    "params": runs[0][variant]["params"],
                    "flops": round(runs[0][variant]["flops"]),
                    "throughput_ratio_vs_unmasked": round(statistics.fmean(r["throughput_ratio"] for r in runs), 3) if variant == "mait" else 1.0,
                    "masked_heads": runs[0]["masked_heads"] if variant == "mait" else None,
                    "seeds": len(runs),
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


def benchmark_seed(seed: int, args: argparse.Namespace) -> dict:
    cfg = compose_config(args.output_dir, f"model={args.model}", f"dataset={args.dataset}", "method=mait", "budget=none", f"seed={seed}", *args.overrides)
    run_dir = Path(args.output_dir) / "benchmarks" / "mait" / f"{args.model}-seed{seed}"
    settings = {"benchmark": "mait", "batch_size": args.batch_size, "repeats": args.repeats}
    return seed_result(run_dir, cfg, settings, lambda: train_and_evaluate(cfg, run_dir, args.batch_size, args.repeats))


def train_and_evaluate(cfg: DictConfig, run_dir: Path, batch_size: int, repeats: int) -> dict:
    """Train MaiT from scratch beside the seed's dense (unmasked) model; time both and predict the test set."""
    unmasked, dm, make_trainer = dense_model(cfg, run_dir)
    result = MaiTMethod(cfg.method).apply(copy.deepcopy(unmasked), method_context(cfg, dm, run_dir, make_trainer))
    mait = result.model.eval()
    batch = first_examples(dm.test_dataloader(), batch_size)
    plain_time, mait_time = compare_latency(unmasked, mait, batch, warmup=3, repeats=repeats)
    unmasked_metrics, labels, unmasked_preds = evaluate_predicting(unmasked, dm, make_trainer, unmasked, cfg.measure.flops_batches)
    mait_metrics, _, mait_preds = evaluate_predicting(mait, dm, make_trainer, mait, cfg.measure.flops_batches)
    return {
        "unmasked": unmasked_metrics,
        "mait": mait_metrics,
        "labels": labels,
        "unmasked_preds": unmasked_preds,
        "mait_preds": mait_preds,
        "throughput_ratio": plain_time.median_s / mait_time.median_s,
        "masked_heads": result.stats["masked_heads"],
    }


def time_masks(args: argparse.Namespace) -> dict:
    """Throughput of the masked over the unmasked model on one batch of real test images, repeats interleaved."""
    cfg = compose_config(args.output_dir, f"model={args.model}", f"dataset={args.dataset}", "method=mait", "budget=none", *args.overrides)
    torch.manual_seed(0)
    built = build_model(cfg.model, cfg.dataset.num_labels)
    dm = build_datamodule(cfg.dataset, built, cfg.seed)
    dm.setup()
    plain = built.model.eval()
    masked = copy.deepcopy(plain)
    method = MaiTMethod(cfg.method)
    install_masks(masked.encoder, locality_mask(plain.embeddings.grid, plain.embeddings.grid, tuple(cfg.method.window), plain.num_protected), method.masked_heads(plain), cfg.method.mask_form)
    batch = first_examples(dm.test_dataloader(), args.batch_size)
    plain_time, masked_time = compare_latency(plain, masked, batch, warmup=5, repeats=args.repeats)
    return {
        "model": args.model,
        "masked_heads": masked_heads_of(masked.encoder),
        "mask_form": cfg.method.mask_form,
        "throughput_ratio_vs_unmasked": round(plain_time.median_s / masked_time.median_s, 3),
        "ms_unmasked": round(plain_time.median_s * 1e3, 2),
        "ms_masked": round(masked_time.median_s * 1e3, 2),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    main()
