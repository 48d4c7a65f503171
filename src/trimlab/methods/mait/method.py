"""MaiT as a training method: masks on chosen heads, trained with the dense model's own recipe.

``init=scratch`` re-initialises the model (as the dense model started) so the
masked and unmasked models differ only in their masks; ``init=dense`` fine-tunes
the dense checkpoint with the masks installed (hub ViTs). The model leaves with
its masks in place, so the run's measurements (accuracy, FLOPs, latency) see them.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from omegaconf import DictConfig
from torch import nn

from trimlab.config import Budget, ConfigError
from trimlab.methods import MethodContext, MethodResult
from trimlab.methods.context import RunContext
from trimlab.methods.mait.masks import MASK_FORMS, locality_mask, masked_heads_of, thirds_schedule
from trimlab.methods.mait.module import MaskedAttentionModule
from trimlab.methods.mait.plot import plot_masks
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.embeddings import PatchEmbeddings
from trimlab.engine import fit

log = logging.getLogger(__name__)

INITS = ("scratch", "dense")


class MaiTMethod:
    """``method=mait``: locality masks on ``masked_heads`` heads per layer, windows of ``window`` patches, in ``mask_form``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def masked_heads(self, model: TransformerClassifier) -> list[int]:
        if len(self.cfg.masked_heads):
            return list(self.cfg.masked_heads)
        return thirds_schedule(len(model.encoder.layers), model.encoder.spec.num_heads)

    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        m = self.cfg
        if not isinstance(model, TransformerClassifier) or not isinstance(model.embeddings, PatchEmbeddings):
            raise ConfigError(f"method=mait masks attention over a patch grid; model={run.model_name} is not a ViT")
        if m.mask_form not in MASK_FORMS:
            raise ConfigError(f"method.mask_form={m.mask_form!r} is not one of {', '.join(MASK_FORMS)}")
        if m.init not in INITS:
            raise ConfigError(f"method.init={m.init!r} is not one of {', '.join(INITS)}")
        if m.init == "scratch" and run.model_weights != "scratch":
            raise ConfigError(
                f"method.init=scratch retrains from random weights, but model={run.model_name} loads {run.model_weights} weights; "
                "use method.init=dense to fine-tune them with the masks"
            )
        if len(m.window) != 2 or any(w < 1 or w % 2 == 0 for w in m.window):
            raise ConfigError(f"method.window={list(m.window)} must be two odd sizes [rows, cols], e.g. [3, 3]")
        layers, heads = len(model.encoder.layers), model.encoder.heads_per_layer
        counts = self.masked_heads(model)
        if len(counts) != layers or any(not 0 <= c <= h for c, h in zip(counts, heads)):
            raise ConfigError(
                f"method.masked_heads={counts} must give, for each of the {layers} layers, 0 to {max(heads)} masked heads "
                "(or be empty for the paper's schedule)"
            )

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        m, dm = self.cfg, ctx.datamodule
        counts = self.masked_heads(model)
        grid = model.embeddings.grid
        allowed = locality_mask(grid, grid, tuple(m.window), model.num_protected)
        if m.init == "scratch":
            if ctx.scratch_weights is None:
                raise ConfigError("method.init=scratch needs the weights the model started from; use method.init=dense")
            model.load_state_dict(ctx.scratch_weights())
        ft = ctx.run.recipe
        module = MaskedAttentionModule(
            model,
            allowed,
            counts,
            m.mask_form,
            dm.num_labels,
            dm.metric,
            lr=ft.lr,
            weight_decay=ft.weight_decay,
            warmup_ratio=ft.warmup_ratio,
            label_smoothing=ft.label_smoothing,
        )
        log.info(
            "MaiT: masked heads per layer %s, window %s, %s masks, training %s for %.3g epochs", counts, list(m.window), m.mask_form, m.init, ft.epochs
        )
        start = time.perf_counter()
        fit(module, model, dm, ft.epochs, ctx.run.trainer, ctx.make_trainer, ctx.resume_state("mait"), "MaiT training")
        stages = {"train": time.perf_counter() - start}
        stats = {"masked_heads": masked_heads_of(model.encoder), "window": list(m.window), "mask_form": m.mask_form, "init": m.init}
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (ctx.run_dir / "masks.json").write_text(json.dumps(stats, indent=1))
        plot_masks(allowed, counts, model.encoder.spec.num_heads, (grid, grid), model.num_protected, m.mask_form, ctx.run_dir / "masks.png")
        return MethodResult(model, stats=stats, stages=stages, artifacts={"masks": "masks.json", "masks_plot": "masks.png"})
