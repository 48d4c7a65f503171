"""Post-training quantization as a Lightning Callback: weights by PWLQ or uniform, activations by calibration.

Every Conv2d and Linear is quantized in place (fake quantization: the
weights are replaced by their quantized values, activations pass through
quantize-dequantize hooks), so any model, CNN or Transformer, pruned or not,
takes it. The first and last layers can keep more bits, as the paper does.
Each layer keeps its codes (``quantized_weight``) and its input quantizer
(``input_quantizer``): the run stores those, and its ``size_mb_quantized`` is
the size of that stored model (:mod:`trimlab.saved_model`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from trimlab.config import Budget, ConfigError
from trimlab.methods.post_training import PostTrainingCallback, PostTrainingMethod, StepInputs
from trimlab.methods.pwlq.batchnorm import conv_batchnorm_pairs, fold_batchnorm, folding_error
from trimlab.methods.pwlq.calibrate import calibrate_ranges, correct_output_bias, install_activation_quantizers, mean_inputs
from trimlab.methods.pwlq.quantizer import bias_correction, pwlq_codes, uniform_codes
from trimlab.methods.pwlq.schema import BREAKPOINTS
from trimlab.models.placement import model_dtype, statistics_dtype

SCHEMES = ("pwlq", "uniform")


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear with weights, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() > 0}


class PostTrainingQuantization(PostTrainingCallback):
    """Quantizes ``pl_module.model`` once, when a validate/test loop starts."""

    def __init__(self, cfg: DictConfig, bits: int, samples: Iterable[Mapping[str, Tensor]], run_dir: Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.bits = int(bits)
        self.samples = samples
        self.run_dir = Path(run_dir)

    def layer_bits(self, index: int, count: int) -> int:
        edge = index in (0, count - 1)
        return int(self.cfg.first_last_bits) if edge and self.cfg.first_last_bits > 0 else self.bits

    @torch.no_grad()
    def compress(self, model: nn.Module) -> None:
        """Weights first, then activation ranges calibrated on the weight-quantized model."""
        start = time.perf_counter()
        if self.cfg.fold_batchnorm:
            self.stats["batchnorm_folded"] = fold_batchnorm(model)
        layers = quantizable_layers(model)
        means = mean_inputs(model, layers, self.samples) if self.cfg.output_bias_correction else {}
        per_layer: dict[str, dict[str, Any]] = {}
        for index, (name, module) in enumerate(layers.items()):
            bits = self.layer_bits(index, len(layers))
            original = module.weight.data
            w = original.to(statistics_dtype(original.dtype))  # a 16-bit weight's grid is found in float32
            if self.cfg.scheme == "pwlq":
                quantized = pwlq_codes(w, bits, self.cfg.per_channel, self.cfg.breakpoint)
            else:
                quantized = uniform_codes(w, bits, self.cfg.per_channel, self.cfg.symmetric)
            if self.cfg.bias_correction:
                quantized = bias_correction(w, quantized, self.cfg.per_channel)
            q = quantized.dequantize()
            breakpoints = quantized.params.get("breakpoint")
            per_layer[name] = {
                "bits": bits,
                "code_bits": quantized.code_bits,
                "relative_mse": float((q - w).pow(2).mean() / w.pow(2).mean().clamp_min(1e-30)),
                "mean_breakpoint_over_max": None
                if breakpoints is None
                else float((breakpoints / quantized.params["max_abs"].clamp_min(1e-12)).mean()),
            }
            module.weight.data = q.to(original.dtype)
            module.quantized_weight = quantized  # what the kept model stores (trimlab.saved_model)
            if name in means:
                correct_output_bias(module, w, means[name])
        self.stages["weights"] = time.perf_counter() - start
        if self.cfg.act_bits > 0:
            start = time.perf_counter()
            ranges = calibrate_ranges(model, layers, self.samples, self.cfg.top_k)
            install_activation_quantizers(layers, ranges, self.cfg.act_bits)
            for name, (low, high) in ranges.items():
                per_layer[name]["act_range"] = [low, high]
            self.stages["calibrate"] = time.perf_counter() - start
        self.stats.update(
            weight_bits=self.bits,
            act_bits=int(self.cfg.act_bits),
            scheme=self.cfg.scheme,
            mean_relative_mse=sum(v["relative_mse"] for v in per_layer.values()) / max(1, len(per_layer)),
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "quantization.json").write_text(json.dumps(per_layer, indent=1))
        self.artifacts["quantization"] = "quantization.json"


class QuantizeMethod(PostTrainingMethod):
    """Runs :class:`PostTrainingQuantization` in a validate run (``method=pwlq`` or ``method=uniform_ptq``).

    Its weight bits are its ``bits`` key when set, else the bits budget's.
    """

    @property
    def sample_batch_size(self) -> int:
        return int(self.cfg.calib_batch_size)

    def check_model(self, model: nn.Module, budget: Budget, inputs: StepInputs, model_name: str) -> None:
        name = self.cfg.name
        if self.cfg.scheme not in SCHEMES:
            raise ConfigError(f"method.scheme={self.cfg.scheme!r} is not one of {', '.join(SCHEMES)}")
        if self.cfg.breakpoint not in BREAKPOINTS:
            raise ConfigError(f"method.breakpoint={self.cfg.breakpoint!r} is not one of {', '.join(BREAKPOINTS)}")
        if self.cfg.act_bits != 0 and not 2 <= self.cfg.act_bits <= 16:
            raise ConfigError(f"method.act_bits={self.cfg.act_bits} must be 0 (full precision) or in [2, 16]")
        if self.cfg.bits == 0 and budget.kind != "bits":
            raise ConfigError(
                f"method={name} needs weight bits: use budget=bits_4 (or bits_6, bits_8), "
                f"or set method.bits when the budget is {budget.kind!r}"
            )
        if self.cfg.bits != 0 and not 2 <= self.cfg.bits <= 16:
            raise ConfigError(f"method.bits={self.cfg.bits} must be 0 (the budget's) or in [2, 16]")
        if not quantizable_layers(model):
            raise ConfigError(f"{model_name} has no Conv2d or Linear layer for {name} to quantize")
        if self.cfg.fold_batchnorm and conv_batchnorm_pairs(model):
            batch = next(iter(inputs.samples))
            error = folding_error(model, {k: v[:2] for k, v in batch.items() if k != "labels"})
            if error > max(1e-4, 8 * torch.finfo(model_dtype(model)).eps):  # a 16-bit model's own rounding is no error
                raise ConfigError(
                    f"folding BatchNorm into the convolutions of {model_name} changes its outputs "
                    f"(relative error {error:.1e}): its BatchNorms do not follow their convolutions. "
                    "Set fold_batchnorm=false (method.fold_batchnorm=false; in compress(): options={'fold_batchnorm': False})."
                )

    def callback(self, budget: Budget, inputs: StepInputs) -> PostTrainingCallback:
        bits = self.cfg.bits or int(budget.target)
        return PostTrainingQuantization(self.cfg, bits, inputs.samples, inputs.folder)
