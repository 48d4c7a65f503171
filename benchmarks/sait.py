"""SaiT: one dense/sparse-trained checkpoint at every density vs a dense model trained as long.

``--dataset digits`` (vit_digits, 180 test images) or ``animal_mnist``
(vit_animal_mnist: 196 patch tokens, 1,000 test images).
Per seed: the cached dense ViT (trimlab's dense checkpoint) is trained
further by SaiT (dense + sparse path every step) and, separately, by plain dense
training with the same recipe and number of steps (``acc_dense_baseline``).
The SaiT checkpoint is then evaluated at each density: test accuracy, FLOPs
ratio and CPU throughput speedup over its own dense path (batch
``--batch-size``, dense and sparse passes interleaved). Prints one JSON line
per density with mean, std and 95% Student-t interval over the seeds
(``acc_ci_low``/``acc_ci_high``), and the paired bootstrap 95% interval of
SaiT at that density − the dense baseline on the same test images
(``delta_ci_low``/``delta_ci_high``, seeds pooled). Each seed's result is kept
under ``--output-dir``: a rerun resumes, and seeds run side by side as separate
processes are aggregated by one more call with all of them.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from trimlab.config import ConfigError
from trimlab.run import method_context
from trimlab.methods.sait.method import SaiTMethod, parse_density
from trimlab.results.intervals import paired_bootstrap, seed_interval
from trimlab.engine import evaluate_predicting
from trimlab.training import ClassifierModule, steps_for

from common import add_overrides_argument, compose_config, dense_model, seed_result  # benchmarks/common.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=["digits", "animal_mnist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--densities", nargs="+", type=density_arg, default=["dense", "0.9", "0.8", "0.7", "0.6", "0.5"],
        help="densities to evaluate the one checkpoint at; put Hydra overrides before this option",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="batch the throughput is timed at")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output-dir", default="outputs", help="where dense checkpoints are cached (trimlab's paths.output_dir)")
    add_overrides_argument(parser, "extra Hydra overrides, e.g. method.epochs=20")
    args = parser.parse_args()
    per_seed = [benchmark_seed(seed, args) for seed in args.seeds]
    labels, baseline = np.stack([seed["labels"] for seed in per_seed]), np.stack([seed["baseline_preds"] for seed in per_seed])
    for i, density in enumerate(args.densities):
        points = [seed["curve"][i] for seed in per_seed]
        _, low, high = seed_interval([p["metric"] for p in points])
        _, delta_low, delta_high = paired_bootstrap(labels, baseline, np.stack([seed["preds"][i] for seed in per_seed]), "accuracy")
        print(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "density": density,
                    "acc": mean(p["metric"] for p in points),
                    "acc_std": std(p["metric"] for p in points),
                    "acc_ci_low": round(low, 4),
                    "acc_ci_high": round(high, 4),
                    "delta_ci_low": round(delta_low, 4),
                    "delta_ci_high": round(delta_high, 4),
                    "acc_dense_baseline": mean(seed["baseline"] for seed in per_seed),
                    "acc_dense_baseline_std": std(seed["baseline"] for seed in per_seed),
                    "flops_ratio": mean(p["flops_ratio"] for p in points),
                    "throughput_speedup": mean(p["throughput_speedup"] for p in points),
                    "throughput_speedup_std": std(p["throughput_speedup"] for p in points),
                    "seeds": len(per_seed),
                    "batch_size": args.batch_size,
                    "sait_train_seconds": mean(seed["sait_seconds"] for seed in per_seed),
                    "baseline_train_seconds": mean(seed["baseline_seconds"] for seed in per_seed),
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


def density_arg(value: str) -> str:
    """A ``--densities`` value, checked: a Hydra override typed after the list would otherwise be read as one."""
    try:
        parse_density(value, "--densities")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(f"{error} (Hydra overrides such as method.epochs=3 go before --densities)") from None
    return value


def benchmark_seed(seed: int, args: argparse.Namespace) -> dict:
    cfg = compose_config(
        args.output_dir,
        f"model=vit_{args.dataset}",
        f"dataset={args.dataset}",
        "method=sait",
        "budget=none",
        "method.density=dense",
        f"method.eval_densities=[{','.join(args.densities)}]",
        f"measure.latency_batch_sizes=[{args.batch_size}]",
        f"measure.repeats={args.repeats}",
        f"seed={seed}",
        *args.overrides,
    )
    run_dir = Path(args.output_dir) / "benchmarks" / "sait" / f"{args.dataset}-seed{seed}"
    return seed_result(run_dir, cfg, {"benchmark": "sait"}, lambda: train_and_evaluate(cfg, run_dir, args.densities))


def train_and_evaluate(cfg: DictConfig, run_dir: Path, densities: list[str]) -> dict:
    """Train the dense baseline and SaiT from the seed's dense model; predictions at each density."""
    dense, dm, make_trainer = dense_model(cfg, run_dir)

    start = time.perf_counter()
    baseline = copy.deepcopy(dense)
    train_dense(cfg, baseline, dm, make_trainer)
    baseline_seconds = time.perf_counter() - start
    baseline_metrics, labels, baseline_preds = evaluate_predicting(baseline.eval(), dm, make_trainer, baseline, cfg.measure.flops_batches)

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    result = SaiTMethod(cfg.method).apply(copy.deepcopy(dense), method_context(cfg, dm, run_dir, make_trainer))
    sait, preds = result.model.eval(), []
    for density in densities:  # the same checkpoint at each density, example by example
        sait.encoder.token_selector.density = parse_density(density, "--densities")
        preds.append(evaluate_predicting(sait, dm, make_trainer, sait, cfg.measure.flops_batches)[2])
    total_seconds = time.perf_counter() - start
    return {
        "curve": result.stats["densities"],
        "preds": preds,
        "labels": labels,
        "baseline_preds": baseline_preds,
        "baseline": baseline_metrics["metric"],
        "baseline_seconds": baseline_seconds,
        "sait_seconds": result.stages["train"],
        "total_seconds": total_seconds,
    }


def train_dense(cfg: DictConfig, model: torch.nn.Module, dm, make_trainer) -> None:
    """The baseline: SaiT's recipe and number of steps, dense path only."""
    m = cfg.method
    module = ClassifierModule(
        model, dm.num_labels, dm.metric, lr=m.lr, weight_decay=m.weight_decay, warmup_ratio=m.warmup_ratio, label_smoothing=m.label_smoothing
    )
    torch.manual_seed(cfg.seed)
    steps = steps_for(m.epochs, len(dm.train_dataloader()), cfg.trainer)
    model.train()
    make_trainer(max_steps=steps, max_epochs=-1).fit(module, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())


def mean(values) -> float:
    return round(statistics.fmean(values), 4)


def std(values) -> float:
    values = list(values)
    return round(statistics.stdev(values), 4) if len(values) > 1 else 0.0


if __name__ == "__main__":
    main()
