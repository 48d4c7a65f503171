"""LTP (and its top-k baseline) as a training method: soft stage, budget calibration, hard stage.

The model leaves with its selector installed in ``model.encoder``, so every
later evaluation and latency measurement drops tokens for real.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from trimlab.config import Budget, ConfigError
from trimlab.measure.flops import analytic_flops, mean_flops_per_example, sequence_length
from trimlab.methods import MethodContext, MethodResult
from trimlab.methods.context import RunContext
from trimlab.methods.bisection import bisect
from trimlab.methods.ltp.module import TokenPruningModule
from trimlab.methods.ltp.plot import plot_kept_tokens
from trimlab.methods.ltp.selectors import LearnedThresholds, TopKTokens, topk_keep_rates
from trimlab.models.classifier import TransformerClassifier
from trimlab.engine import fit

log = logging.getLogger(__name__)

SELECTORS = ("thresholds", "topk")
MIN_KEEP_RATE = 0.01
"""The top-k schedule's floor on any layer's keep rate (the reference's)."""


def minimum_flops_ratio(model: TransformerClassifier, seq_len: int, selector: str) -> float:
    """The lowest FLOPs ratio a selector can reach at ``seq_len`` tokens.

    LTP: layer 0 keeps all, every later layer only the class token. Top-k: its
    schedule with the smallest final keep rate (the first layers keep all).
    """
    layers = len(model.encoder.layers)
    if selector == "thresholds":
        kept = [[seq_len]] + [[model.num_protected]] * (layers - 1)
    else:
        kept = [[max(1, round(seq_len * rate))] for rate in topk_keep_rates(layers, MIN_KEEP_RATE)]
    return analytic_flops(model, [seq_len], kept) / analytic_flops(model, [seq_len])


class LTPMethod:
    """``method=ltp``: learn per-layer token thresholds (or train the top-k baseline) under a ``tokens`` budget."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        if not isinstance(model, TransformerClassifier):
            raise ConfigError(f"method=ltp prunes tokens of a Transformer; model={run.model_name} is not one")
        if self.cfg.selector not in SELECTORS:
            raise ConfigError(f"method.selector={self.cfg.selector!r} is not one of {', '.join(SELECTORS)}")
        if datamodule.num_labels < 1:
            raise ConfigError(f"method=ltp trains on labels; dataset={run.dataset_name} has none")
        if self.cfg.temperature <= 0 or self.cfg.score_length < 1 or self.cfg.calibration_examples < 1:
            raise ConfigError("method.temperature, method.score_length and method.calibration_examples must be positive")
        seq_len = round(sequence_length(model, datamodule))
        floor = minimum_flops_ratio(model, seq_len, self.cfg.selector)
        if budget.target < floor:
            raise ConfigError(
                f"budget.target={budget.target} is below what token pruning can reach on {run.dataset_name} "
                f"with method.selector={self.cfg.selector} ({floor:.2f}: the first layers, embeddings and classifier stay); "
                f"choose a target of at least {floor:.2f}"
            )

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        cfg, dm = self.cfg, ctx.datamodule
        target = float(ctx.budget.target)
        calibration = list(dm.sample_dataloader(num_samples=cfg.calibration_examples))
        dense_flops = mean_flops_per_example(model, calibration, max_batches=len(calibration))
        layers = len(model.encoder.layers)
        stages: dict[str, float] = {}

        def ratio() -> float:
            return mean_flops_per_example(model, calibration, max_batches=len(calibration)) / dense_flops

        if cfg.selector == "thresholds":
            selector = LearnedThresholds(layers, cfg.final_threshold, cfg.temperature, cfg.score_length)
            model.encoder.token_selector = selector
            start = time.perf_counter()
            soft = TokenPruningModule(model, dm.num_labels, dm.metric, cfg.lr, cfg.lam, cfg.threshold_lr)
            self._fit(model, ctx, cfg.soft_epochs, soft, "soft")
            stages["soft"] = time.perf_counter() - start
            start = time.perf_counter()
            learned = selector.offsets.detach().clone()

            def with_shift(shift: float) -> float:
                selector.offsets.data = learned + shift
                return ratio()

            with torch.no_grad():
                longest = max(model.embeddings(b)[1].shape[1] for b in calibration)
            thresholds = selector.thresholds().detach()
            no_pruning = -float(thresholds.max()) - 1e-6  # every threshold ≤ 0
            all_pruned = longest / cfg.score_length - float(thresholds.min()) + 1e-6  # every threshold above any score
            before_hard = with_shift(bisect(with_shift, target, no_pruning, all_pruned))
            stages["calibrate"] = time.perf_counter() - start
            selector.hard = True
        else:
            start = time.perf_counter()

            def with_rate(rate_drop: float) -> float:
                model.encoder.token_selector = TopKTokens(topk_keep_rates(layers, 1.0 - rate_drop))
                return ratio()

            before_hard = with_rate(bisect(with_rate, target, 0.0, 1.0 - MIN_KEEP_RATE))
            stages["calibrate"] = time.perf_counter() - start
        start = time.perf_counter()
        self._fit(model, ctx, cfg.hard_epochs, TokenPruningModule(model, dm.num_labels, dm.metric, cfg.hard_lr), "hard")
        stages["hard"] = time.perf_counter() - start
        model.eval()
        return MethodResult(model, stats=self._stats(model, dm, ctx, before_hard, ratio()), stages=stages, artifacts=self._artifacts(ctx))

    def _fit(self, model: nn.Module, ctx: MethodContext, epochs: float, module: TokenPruningModule, stage: str) -> None:
        """One stage's training; its state is kept to the end, so an attempt stopped later skips it (the calibration
        between the stages is computed again, the same way)."""
        if epochs <= 0:
            return
        fit(module, model, ctx.datamodule, epochs, ctx.run.trainer, ctx.make_trainer, ctx.resume_state(f"ltp-{stage}"), f"LTP's {stage} stage")

    def _stats(
        self, model: TransformerClassifier, dm: Any, ctx: MethodContext, before_hard: float, calibration_ratio: float
    ) -> dict[str, Any]:
        """The kept tokens, and the FLOPs ratio on the calibration examples as calibrated and after the hard stage
        (LTP's scores move as the hard stage trains the weights, its thresholds fixed: the ratio drifts from the budget)."""
        kept = kept_fraction_per_layer(model, dm.test_dataloader())
        selector = model.encoder.token_selector
        stats: dict[str, Any] = {
            "selector": self.cfg.selector,
            "kept_fraction_per_layer": kept,
            "calibration_flops_ratio_before_hard": before_hard,
            "calibration_flops_ratio": calibration_ratio,
        }
        if isinstance(selector, LearnedThresholds):
            stats["thresholds"] = selector.thresholds().detach().tolist()
        else:
            stats["keep_rates"] = list(selector.keep_rates)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (ctx.run_dir / "tokens.json").write_text(json.dumps(stats, indent=1))
        plot_kept_tokens(kept, ctx.run_dir / "kept_tokens.png", title=f"{self.cfg.selector}: kept tokens per layer (test set)")
        return stats

    def _artifacts(self, ctx: MethodContext) -> dict[str, str]:
        return {"tokens": "tokens.json", "kept_tokens_plot": "kept_tokens.png"}


@torch.no_grad()
def kept_fraction_per_layer(model: TransformerClassifier, batches: Any) -> list[float]:
    """Mean share of each example's input tokens still present after each layer."""
    model.eval()
    kept, inputs = None, 0.0
    for batch in batches:
        _, valid = model.embeddings(batch)
        counts = torch.stack(model(batch).encoder.kept_tokens).float()  # [layers, B]
        kept = counts.sum(1) if kept is None else kept + counts.sum(1)
        inputs += float(valid.sum())
    return (kept / inputs).tolist()
