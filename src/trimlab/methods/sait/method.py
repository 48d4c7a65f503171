"""SaiT as a training method: dense/sparse training (cached), density chosen at run time, a density sweep.

The trained weights are cached without the run-time keys, so ``method.density=dense``
and ``method.density=0.8`` runs of one config train once and only evaluate after.
The model leaves with a :class:`SaiTSelector` at the chosen density in ``model.encoder``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from trimlab.checkpoints import load_checkpoint, save_checkpoint
from trimlab.config import Budget, ConfigError
from trimlab.distributed import is_primary
from trimlab.measure.flops import analytic_flops, mean_flops_per_example, sequence_length
from trimlab.measure.latency import compare_latency
from trimlab.methods import MethodContext, MethodResult
from trimlab.methods.context import RunContext
from trimlab.methods.bisection import bisect
from trimlab.methods.sait.module import DenseSparseModule
from trimlab.methods.sait.plot import plot_density_curve
from trimlab.methods.sait.selector import MODES, SaiTSelector
from trimlab.models.classifier import TransformerClassifier
from trimlab.engine import evaluate, first_examples, fit, placed_on
from trimlab.models.placement import batch_for

log = logging.getLogger(__name__)

RUN_TIME_KEYS = ("density", "eval_densities", "calibration_examples", "budgets")
"""Method keys that do not change the trained weights (left out of the weights' cache key)."""
MIN_DENSITY = 1e-3


def parse_density(value: str, key: str) -> float | None:
    """``dense`` → None (no pruning); a number in (0, 1] → itself; anything else is a :class:`ConfigError`."""
    if str(value) == "dense":
        return None
    try:
        density = float(value)
    except ValueError:
        density = -1.0
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"{key}={value!r} must be 'dense' or a density in (0, 1], e.g. 0.9")
    return density


def prune_layers_of(cfg: DictConfig, num_layers: int) -> list[int]:
    """The configured pruning layers, or the layer at a quarter of the depth."""
    return sorted(cfg.prune_layers) if len(cfg.prune_layers) else [num_layers // 4]


class SaiTMethod:
    """``method=sait``: one checkpoint for every token density, the density set by ``method.density`` or the budget."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        m = self.cfg
        if not isinstance(model, TransformerClassifier):
            raise ConfigError(f"method=sait prunes the tokens of a Transformer; model={run.model_name} is not one")
        if model.num_protected < 1:
            raise ConfigError(f"method=sait ranks tokens by class-token attention; model={run.model_name} has no class token in its self-attention layers")
        if datamodule.num_labels < 2:
            raise ConfigError(f"method=sait trains a classifier on labels; dataset={run.dataset_name} has none")
        if m.mode not in MODES:
            raise ConfigError(f"method.mode={m.mode!r} is not one of {', '.join(MODES)}")
        layers = len(model.encoder.layers)
        if not all(0 <= layer < layers for layer in m.prune_layers):
            raise ConfigError(f"method.prune_layers={list(m.prune_layers)} must be layers in 0..{layers - 1} of model={run.model_name}")
        low_high = list(m.train_densities)
        if len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1] <= 1.0:
            raise ConfigError(f"method.train_densities={low_high} must be [low, high] with 0 < low ≤ high ≤ 1")
        for value in m.eval_densities:
            parse_density(value, "method.eval_densities")
        if m.teacher != "self" and not Path(m.teacher).is_file():
            raise ConfigError(f"method.teacher={m.teacher!r}: no such checkpoint file; give a state-dict file of model={run.model_name} or 'self'")
        budgeted = budget.kind in ("flops", "tokens")
        if m.density == "budget":
            if not budgeted:
                raise ConfigError("method.density=budget needs a FLOPs budget (e.g. budget=flops_60); or set budget=none and method.density=dense or a number")
            floor = minimum_flops_ratio(model, round(sequence_length(model, datamodule)), prune_layers_of(m, layers), m.package)
            if budget.target < floor:
                raise ConfigError(
                    f"budget.target={budget.target} is below what SaiT can reach with method.prune_layers="
                    f"{prune_layers_of(m, layers)} ({floor:.2f}: the layers before pruning stay whole); "
                    f"choose a target of at least {floor:.2f} or prune at an earlier layer"
                )
        else:
            parse_density(m.density, "method.density")
            if budgeted:
                raise ConfigError(
                    f"method.density={m.density} fixes the density, and budget={budget.kind}_{round(100 * budget.target)} "
                    "would set it too: add budget=none (or use method.density=budget to meet the budget)"
                )

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        m = self.cfg
        selector = SaiTSelector(prune_layers_of(m, len(model.encoder.layers)), m.mode, m.package, model.num_protected)
        model.encoder.token_selector = selector
        stages: dict[str, float] = {}
        start = time.perf_counter()
        weights = ctx.trained_weights(RUN_TIME_KEYS) if ctx.trained_weights is not None else None
        if weights is not None and weights.exists():
            log.info("SaiT weights of this config found in %s; evaluating only", weights)
            load_checkpoint(model, weights)
        else:
            self._train(model, ctx)
            if weights is not None and is_primary():
                save_checkpoint(model, weights)
        stages["train"] = time.perf_counter() - start

        start = time.perf_counter()
        if m.density == "budget":
            density = self._density_for(model, ctx, float(ctx.budget.target))
        else:
            density = parse_density(m.density, "method.density")
        stages["calibrate"] = time.perf_counter() - start

        start = time.perf_counter()
        curve = self._density_curve(model, ctx)
        stages["density_curve"] = time.perf_counter() - start
        selector.density = density
        stats = {"density": "dense" if density is None else density, "prune_layers": selector.prune_layers, "densities": curve}
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (ctx.run_dir / "densities.json").write_text(json.dumps(stats, indent=1))
        plot_density_curve(curve, ctx.run_dir / "density_curve.png", f"SaiT on {ctx.run.dataset_name}: one checkpoint, every density")
        model.eval()
        return MethodResult(model, stats=stats, stages=stages, artifacts={"densities": "densities.json", "density_curve": "density_curve.png"})

    def _train(self, model: TransformerClassifier, ctx: MethodContext) -> None:
        m, dm = self.cfg, ctx.datamodule
        teacher = None
        if m.teacher != "self":
            teacher = copy.deepcopy(model)
            load_checkpoint(teacher, Path(m.teacher))
            teacher.encoder.token_selector = SaiTSelector([], num_protected=model.num_protected)
            teacher.requires_grad_(False).train()  # Lightning expects train mode at fit start; each use switches it to eval
        module = DenseSparseModule(model, dm.num_labels, dm.metric, m, teacher=teacher, seed=ctx.run.seed)
        log.info("SaiT dense/sparse training for %.3g epochs", m.epochs)
        # the trained weights are cached, so the state need not outlive the training
        fit(module, model, dm, m.epochs, ctx.run.trainer, ctx.make_trainer, ctx.resume_state("sait"), "SaiT training", keep_final=False)
        model.encoder.token_selector.reset()

    def _density_for(self, model: TransformerClassifier, ctx: MethodContext, target: float) -> float:
        """The density whose mean FLOPs ratio on calibration images is closest to ``target`` (bisection)."""
        selector = model.encoder.token_selector
        calibration = list(ctx.datamodule.sample_dataloader(num_samples=self.cfg.calibration_examples))
        selector.density = None
        dense = mean_flops_per_example(model, calibration, max_batches=len(calibration))

        def ratio(sparsity: float) -> float:
            selector.density = 1.0 - sparsity
            return mean_flops_per_example(model, calibration, max_batches=len(calibration)) / dense

        return 1.0 - bisect(ratio, target, 0.0, 1.0 - MIN_DENSITY)

    def _density_curve(self, model: TransformerClassifier, ctx: MethodContext) -> list[dict[str, Any]]:
        """Accuracy, FLOPs ratio and measured throughput speedup of the one checkpoint at each ``eval_densities``."""
        selector, measure = model.encoder.token_selector, ctx.run.measure
        dense_path = copy.deepcopy(model).eval()
        dense_path.encoder.token_selector = None
        batch = first_examples(ctx.datamodule.test_dataloader(), max(measure.latency_batch_sizes))
        dense_eval = evaluate(dense_path, ctx.datamodule, ctx.make_trainer, dense_path, measure.flops_batches)
        curve = []
        for value in self.cfg.eval_densities:
            density = parse_density(value, "method.eval_densities")
            selector.density = density
            if density is None:
                result, speedup = dense_eval, 1.0
            else:
                result = evaluate(model, ctx.datamodule, ctx.make_trainer, dense_path, measure.flops_batches)
                with placed_on(torch.device(measure.device), dense_path, model):  # timed where the run times (measure.device)
                    placed = batch_for(dense_path, batch)
                    a, b = compare_latency(dense_path, model.eval(), placed, warmup=measure.warmup, repeats=measure.repeats, threads=measure.threads)
                speedup = a.median_s / b.median_s
            curve.append(
                {
                    "density": value,
                    "metric": result["metric"],
                    "flops_ratio": result["flops"] / dense_eval["flops"],
                    "throughput_speedup": speedup,
                    "batch_size": len(next(iter(batch.values()))),
                    "latency_device": measure.device,
                }
            )
            log.info("SaiT density %s: %s=%.4f, FLOPs %.3fx, throughput %.2fx", value, result["metric_name"], result["metric"], curve[-1]["flops_ratio"], speedup)
        return curve


def minimum_flops_ratio(model: TransformerClassifier, seq_len: int, prune_layers: list[int], package: bool) -> float:
    """The lowest FLOPs ratio pruning at ``prune_layers`` can reach: from the first on, one patch (+ package) and the class tokens."""
    least = model.num_protected + 1 + int(package)
    kept = [[seq_len if i < prune_layers[0] else least] for i in range(len(model.encoder.layers))]
    return analytic_flops(model, [seq_len], kept) / analytic_flops(model, [seq_len])
