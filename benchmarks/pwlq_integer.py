"""PWLQ W8A8 on integer hardware (two int8 GEMMs per Linear) against simulated PWLQ, FP32 and uniform W8 dynamic int8.

One process, one thread, the four models timed interleaved (median per model
and batch size); accuracy and prediction agreement on the first test examples.
Prints one JSON line. The dense checkpoint is trimlab's cached one (fine-tuned on a miss).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from trimlab.config import Budget
from trimlab.measure.int8_kernel import int8_kernel_model
from trimlab.methods.post_training import StepInputs
from trimlab.methods.pwlq.callback import QuantizeMethod
from trimlab.methods.pwlq.integer import TwoBranchLinear, default_kernel, two_branch_model

from common import add_overrides_argument, compose_config, dense_model  # benchmarks/common.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=512, help="test examples for accuracy and agreement")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per model and batch size")
    parser.add_argument("--output-dir", default="outputs")
    add_overrides_argument(parser, "Hydra overrides, e.g. finetune.epochs=0.1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = ["model=minilm_l6", "dataset=tweets", "method=pwlq", "method.act_bits=8", *args.overrides]
    cfg = compose_config(args.output_dir, *overrides)
    run_dir = Path(args.output_dir) / "benchmarks" / "pwlq_integer"
    dense, dm, _ = dense_model(cfg, run_dir)
    samples = list(dm.sample_dataloader(batch_size=cfg.method.calib_batch_size))
    models = {"fp32": dense}
    for scheme in ("pwlq", "uniform"):
        method = copy.deepcopy(cfg.method)
        method.scheme = scheme
        quantized = copy.deepcopy(dense)
        inputs = StepInputs(samples, dm.num_labels, 0.0, run_dir, run_dir / scheme)
        QuantizeMethod(method).callback(Budget("bits", 8), inputs).compress(quantized)
        models[f"{scheme}_w8_simulated"] = quantized.eval()
    models["pwlq_w8_two_branch"] = two_branch_model(models["pwlq_w8_simulated"])
    models["uniform_w8_dynamic_int8"] = int8_kernel_model(models.pop("uniform_w8_simulated"))
    test, count = [], 0
    for batch in dm.test_dataloader():
        test.append(batch)
        count += len(batch["labels"])
        if count >= args.examples:
            break
    result = {"kernel": default_kernel(), "threads": torch.get_num_threads(), "examples": count}
    predictions = {name: predict(model, test) for name, model in models.items()}
    labels = torch.cat([b["labels"] for b in test])
    for name, predicted in predictions.items():
        result[f"accuracy_{name}"] = round(float((predicted == labels).float().mean()), 4)
    same = predictions["pwlq_w8_two_branch"] == predictions["pwlq_w8_simulated"]
    result["agreement_two_branch_vs_simulated"] = round(float(same.float().mean()), 4)
    for batch_size in (1, 32):
        batch = {k: v[:batch_size] for k, v in test[0].items() if k != "labels"}
        for name, ms in interleaved_latency(models, batch, args.repeats).items():
            result[f"latency_ms_b{batch_size}_{name}"] = round(ms, 2)
    result["linear_weight_mb"] = linear_weight_mb(models)
    print(json.dumps(result), flush=True)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([model({k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) for b in batches])


@torch.no_grad()
def interleaved_latency(
    models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor], repeats: int
) -> dict[str, float]:
    """Median ms per model, the models taking turns so that machine load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model(batch)  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(batch)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def linear_weight_mb(models: dict[str, torch.nn.Module]) -> dict[str, float]:
    """Bytes of the Linear weights each model computes with: fp32 floats, two int8 matrices, or one int8 matrix."""
    fp32 = sum(m.weight.numel() * 4 for m in models["fp32"].modules() if isinstance(m, torch.nn.Linear))
    two = sum(
        m.weight_int8.numel() + m.row_scales.numel() * 4
        for m in models["pwlq_w8_two_branch"].modules()
        if isinstance(m, TwoBranchLinear)
    )
    dynamic = sum(
        m.weight().numel() + m.weight().q_per_channel_scales().numel() * 4
        for m in models["uniform_w8_dynamic_int8"].modules()
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
    )
    sizes = {"fp32": fp32, "pwlq_w8_two_branch": two, "uniform_w8_dynamic_int8": dynamic}
    return {name: round(size / 1e6, 2) for name, size in sizes.items()}


if __name__ == "__main__":
    main()
