"""PWLQ vs uniform post-training quantization on CNNs and Transformers, against the full-precision model in one process.

Prints one JSON line per (model, weight bits, scheme), named as a run's record names
its method (``pwlq``, ``uniform_ptq``, ``pwlq+obc`` with ``method.output_bias_correction=true``): the task metric of the
fake-quantized model with its 95% bootstrap interval over the test examples
(``acc_ci_low``/``acc_ci_high``; for PWLQ also the paired interval of PWLQ − uniform
at the same bits, ``delta_ci_low``/``delta_ci_high``), the full-precision metric, and the calibration time
(BatchNorm folding, weight quantization, any bias correction and activation
ranges). The settings are the method's defaults (the paper's) unless overridden. EfficientNet-Lite0/1/2 (ImageNet weights) are scored by top-1
agreement with the full-precision model on crops of the bundled photos; the
others by accuracy on their labelled test split. Dense checkpoints are the
ones ``trimlab`` caches under ``--output-dir`` (trained on demand).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from trimlab.config import Budget
from trimlab.methods import method_label
from trimlab.methods.post_training import StepInputs
from trimlab.methods.pwlq.callback import QuantizeMethod
from trimlab.results.intervals import metric_interval, paired_bootstrap

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py

CONFIDENT = 0.5
"""Label-free photos: ``metric_confident`` is the agreement on crops whose FP top-1 probability is at least this.

Most crops of the bundled photos are not ImageNet-like (median FP top-1
probability 0.29), so their top two classes are near ties that any
perturbation flips; agreement on confident crops isolates quantization damage."""

MODELS = {
    "efficientnet_lite0": ["model=efficientnet_lite0", "dataset=photos", "dataset.crops_per_image=200"],  # 2,000 crops
    "efficientnet_lite1": ["model=efficientnet_lite1", "dataset=photos", "dataset.crops_per_image=200"],
    "efficientnet_lite2": ["model=efficientnet_lite2", "dataset=photos", "dataset.crops_per_image=200"],
    "cnn_digits": ["model=cnn_digits", "dataset=digits"],
    "cnn_animal_mnist": ["model=cnn_animal_mnist", "dataset=animal_mnist"],  # 1,000 test images
    "vit_digits": ["model=vit_digits", "dataset=digits"],
    "minilm_l6": ["model=minilm_l6", "dataset=tweets"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 6, 8], help="weight bits")
    parser.add_argument("--schemes", nargs="+", choices=["uniform", "pwlq"], default=["uniform", "pwlq"])
    parser.add_argument("--act-bits", type=int, default=8, help="activation bits (0 = full precision); the paper's 8")
    parser.add_argument("--output-dir", default="outputs", help="where dense checkpoints are cached (trimlab's paths.output_dir)")
    add_overrides_argument(parser, "extra Hydra overrides for every model, e.g. method.first_last_bits=0")
    args = parser.parse_args()
    for name in args.models:
        cfg = compose_config(
            args.output_dir, *MODELS[name], "method=pwlq", "budget=bits_8", f"method.act_bits={args.act_bits}", *args.overrides
        )
        for line in benchmark_model(cfg, args.bits, args.schemes, Path(args.output_dir) / "benchmarks" / "pwlq" / name):
            print(json.dumps(line), flush=True)


def benchmark_model(cfg, bits_list: list[int], schemes: list[str], run_dir: Path):
    """Yield one result per (bits, scheme) for the model of ``cfg``, all against the same full-precision model."""
    dense, dm, _ = dense_model(cfg, run_dir)
    test_batches = list(dm.test_dataloader())
    fp_logits = logits(dense, test_batches)
    fp_predictions = fp_logits.argmax(-1)
    metric_fp = task_metric(fp_predictions, fp_predictions, test_batches)
    confident = fp_logits.softmax(-1).amax(-1) >= CONFIDENT
    samples = list(dm.sample_dataloader(batch_size=cfg.method.calib_batch_size))
    metric_name = "agreement" if dm.num_labels == 0 else "accuracy"
    truth = fp_predictions if "labels" not in test_batches[0] else torch.cat([b["labels"] for b in test_batches])
    for bits in bits_list:
        predicted_by: dict[str, torch.Tensor] = {}
        for scheme in schemes:
            method = copy.deepcopy(cfg.method)
            method.scheme = scheme
            method.name = "pwlq" if scheme == "pwlq" else "uniform_ptq"
            quantized = copy.deepcopy(dense)
            inputs = StepInputs(samples, dm.num_labels, 0.0, Path(cfg.paths.cache_dir), run_dir / f"{scheme}-w{bits}")
            callback = QuantizeMethod(method).callback(Budget("bits", bits), inputs)  # what a run builds
            start = time.perf_counter()
            callback.compress(quantized)
            calib_seconds = time.perf_counter() - start
            predicted = logits(quantized.eval(), test_batches).argmax(-1)
            predicted_by[scheme] = predicted
            metric, low, high = metric_interval(truth.numpy(), predicted.numpy(), metric_name)
            extra = {}
            if scheme == "pwlq" and "uniform" in predicted_by:  # PWLQ − uniform at the same bits, on the same examples
                _, delta_low, delta_high = paired_bootstrap(truth.numpy(), predicted_by["uniform"].numpy(), predicted.numpy(), metric_name)
                extra.update(delta_ci_low=round(delta_low, 4), delta_ci_high=round(delta_high, 4))
            if "labels" not in test_batches[0]:  # label-free: also on the crops the FP model is sure about
                extra.update(
                    metric_confident=round(float((predicted == fp_predictions)[confident].float().mean()), 4),
                    confident_examples=int(confident.sum()),
                )
            yield {
                "model": cfg.model.name,
                "dataset": cfg.dataset.name,
                "bits": bits,
                "scheme": scheme,
                "method": method_label(method),
                "metric": round(metric, 4),
                "acc_ci_low": round(low, 4),
                "acc_ci_high": round(high, 4),
                "metric_fp": round(metric_fp, 4),
                "metric_name": metric_name,
                "act_bits": int(method.act_bits),
                "calib_seconds": round(calib_seconds, 1),
                "eval_examples": len(fp_predictions),
                "calib_examples": sum(len(b[next(iter(b))]) for b in samples),
                "mean_relative_mse": round(callback.stats["mean_relative_mse"], 6),
                **extra,
            }


@torch.no_grad()
def logits(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Logits of every example."""
    return torch.cat([model({k: v for k, v in b.items() if k != "labels"}).logits for b in batches])


def task_metric(predicted: torch.Tensor, fp_predicted: torch.Tensor, batches: list[dict[str, torch.Tensor]]) -> float:
    """Accuracy on the labels, or (unlabelled photos) top-1 agreement with the full-precision model."""
    if "labels" not in batches[0]:
        return float((predicted == fp_predicted).float().mean())
    return float((predicted == torch.cat([b["labels"] for b in batches])).float().mean())


if __name__ == "__main__":
    main()
