"""Fisher pruning as a Lightning Callback: the model is pruned on the trainer's device, then the trainer validates it.

Stages (each timed and recorded): Fisher gradients of the masks on the sample
set → search under the FLOPs or latency budget → rearrangement → mask tuning
→ folding the tuned masks into the weights and removing pruned heads and
neurons, so the model is physically smaller.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from trimlab.config import Budget, ConfigError
from trimlab.measure.flops import fixed_flops, head_cost, neuron_cost
from trimlab.methods.context import RunContext
from trimlab.methods.post_training import PostTrainingCallback, PostTrainingMethod, StepInputs
from trimlab.methods.fisher_prune.fisher import collect_mask_gradients
from trimlab.methods.fisher_prune.latency_lut import LayerLatency, cached_layer_latency
from trimlab.methods.fisher_prune.plot import plot_masks
from trimlab.methods.fisher_prune.rearrange import rearrange
from trimlab.methods.fisher_prune.search import Masks, check_latency_budget, milder_target, search_flops, search_latency
from trimlab.methods.fisher_prune.tune import fold_masks, tune_masks
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.encoder import EncoderSpec
from trimlab.models.placement import model_device

log = logging.getLogger(__name__)


class FisherPruning(PostTrainingCallback):
    """Prunes ``pl_module.model`` once, when a validate/test loop starts, to fit ``budget`` (flops or latency).

    ``cfg`` is the method's own config (:class:`~trimlab.methods.fisher_prune.schema.FisherPruneConfig`);
    each batch of ``samples`` gives one Fisher gradient.
    """

    def __init__(
        self,
        cfg: DictConfig,
        budget: Budget,
        samples: Iterable[Mapping[str, Tensor]],
        num_labels: int,
        seq_len: float,
        cache_dir: Path,
        run_dir: Path,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.budget = budget
        self.samples = samples
        self.num_labels = num_labels
        self.seq_len = seq_len
        self.cache_dir = Path(cache_dir)
        self.run_dir = Path(run_dir)

    def _timed(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.stages[name] = time.perf_counter() - start
        return result

    def compress(self, model: TransformerClassifier) -> None:
        """All stages, in place."""
        spec = model.encoder.spec
        search = self._searcher(model)  # a latency table is measured (or read) before the expensive stages
        batches = list(self.samples)
        grads = self._timed("fisher", collect_mask_gradients, model, batches, self.num_labels)
        heads_imp, neurons_imp = grads.head_importance(), grads.neuron_importance()
        masks = self._timed("search", search, heads_imp, neurons_imp, self.budget.target)
        searched = masks.counts()
        if self.cfg.rearrange:
            masks = self._timed("rearrange", lambda: Masks(rearrange(masks.heads, grads.heads), rearrange(masks.neurons, grads.neurons)))
        if self.cfg.tune:
            teacher = search(heads_imp, neurons_imp, milder_target(self.budget.target, self.cfg.teacher_steps))
            masks, report = self._timed("tune", tune_masks, model, batches, masks, teacher, self.cfg.damping, self.cfg.max_scale)
            self.stats.update(tuned_layers=report.tuned_layers, tune_stopped=report.stopped)
        self._timed("remove", fold_masks, model, masks)
        heads, neurons = masks.counts()
        dense_cost = encoder_flops(spec, spec.num_layers * spec.num_heads, spec.num_layers * spec.ffn_dim, self.seq_len)
        kept_cost = encoder_flops(spec, sum(heads), sum(neurons), self.seq_len)
        self.stats.update(
            heads_per_layer=heads,
            neurons_per_layer=neurons,
            searched_heads_per_layer=searched[0],
            searched_neurons_per_layer=searched[1],
            encoder_flops_ratio_at_avg_len=kept_cost / dense_cost,
            avg_seq_len=self.seq_len,
            num_samples=sum(len(next(iter(b.values()))) for b in batches),
        )
        self._write_artifacts(masks, heads_imp)
        log.info("pruned to %d/%d heads, %d/%d neurons", sum(heads), spec.num_layers * spec.num_heads, sum(neurons), spec.num_layers * spec.ffn_dim)

    def _searcher(self, model: TransformerClassifier):
        spec = model.encoder.spec
        if self.budget.kind == "flops":
            costs = (encoder_flops(spec, 1, 0, self.seq_len), encoder_flops(spec, 0, 1, self.seq_len))
            return lambda h, n, target: search_flops(h, n, *costs, encoder_flops_target(model, target, self.seq_len))
        if self.budget.kind != "latency":
            raise ConfigError(f"method=fisher_prune takes flops or latency budgets, not {self.budget.kind!r}")
        tables, cached = self._timed("latency_lut", layer_latency, model, self.cfg, self.seq_len, self.cache_dir)
        attention, ffn = tables.attention.fit(), tables.ffn.fit()
        self.stats.update(latency_lut_cached=cached, latency_fit={"attention": vars(attention), "ffn": vars(ffn)})
        return lambda h, n, target: search_latency(h, n, attention, ffn, target)

    def _write_artifacts(self, masks: Masks, heads_imp: torch.Tensor) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        masks_path = self.run_dir / "masks.json"
        masks_path.write_text(
            json.dumps(
                {
                    "heads": masks.heads.tolist(),
                    "neurons_kept": [row.nonzero().flatten().tolist() for row in masks.neurons],
                    "head_importance": heads_imp.tolist(),
                }
            )
        )
        plot_path = self.run_dir / "masks.png"
        plot_masks(masks, plot_path)
        self.artifacts.update(masks=masks_path.name, masks_plot=plot_path.name)


def encoder_flops(spec: EncoderSpec, heads: int, neurons: int, seq_len: float) -> float:
    """Analytic FLOPs of ``heads`` attention heads and ``neurons`` FFN neurons at sequence length ``seq_len``."""
    return heads * head_cost(seq_len, spec.hidden_size, spec.dim_per_head) + neurons * neuron_cost(seq_len, spec.hidden_size)


def encoder_flops_target(model: TransformerClassifier, target: float, seq_len: float) -> float:
    """The encoder's share of a whole-model FLOPs ``target``: the embeddings and head cannot shrink.

    Raises :class:`ConfigError` when ``target`` is below what they cost alone.
    """
    spec = model.encoder.spec
    encoder = encoder_flops(spec, spec.num_layers * spec.num_heads, spec.num_layers * spec.ffn_dim, seq_len)
    fixed = fixed_flops(model, seq_len)
    share = (target * (encoder + fixed) - fixed) / encoder
    if share <= 0:
        raise ConfigError(
            f"budget.target={target:g} is below the FLOPs of the embeddings and classifier alone "
            f"({fixed / (encoder + fixed):.3f} of the dense model), which pruning heads and neurons cannot remove; "
            "raise budget.target"
        )
    return share


def layer_latency(model: TransformerClassifier, cfg: DictConfig, seq_len: float, cache_dir: Path) -> tuple[LayerLatency, bool]:
    """This machine's latency tables for the model's layer shape, timed on its device (cached under ``cache_dir/latency_lut``)."""
    spec = model.encoder.spec
    return cached_layer_latency(
        Path(cache_dir) / "latency_lut",
        hidden=spec.hidden_size,
        heads=spec.num_heads,
        head_dim=spec.dim_per_head,
        ffn_dim=spec.ffn_dim,
        activation=spec.activation,
        batch_size=cfg.lut_batch_size,
        seq_len=max(1, round(seq_len)),
        ffn_points=cfg.lut_ffn_points,
        device=model_device(model).type,
    )


def check_transformer(model: nn.Module, name: str) -> None:
    """Raise :class:`ConfigError` unless ``model`` has the unified encoder whose heads and neurons this method prunes."""
    if not isinstance(model, TransformerClassifier):
        raise ConfigError(
            f"method=fisher_prune prunes attention heads and FFN neurons; {name} is not a "
            "Transformer. Use a BERT or ViT model, or method=pwlq for CNNs."
        )
    spec, encoder = model.encoder.spec, model.encoder
    for i, (heads, neurons) in enumerate(zip(encoder.heads_per_layer, encoder.neurons_per_layer)):
        if heads != spec.num_heads or neurons != spec.ffn_dim:
            raise ConfigError(
                f"method=fisher_prune ranks every head and neuron of a full model; {name} is already structurally pruned "
                f"(layer {i} keeps {heads} of {spec.num_heads} heads, {neurons} of {spec.ffn_dim} neurons): "
                "prune the dense model once, to the combined budget"
            )


def check_budget(model: TransformerClassifier, budget: Budget, cfg: DictConfig, seq_len: float, cache_dir: Path) -> None:
    """Raise :class:`ConfigError` for a budget the search cannot meet, before the Fisher gradients are paid for.

    A latency budget measures (or reads) this machine's latency table under ``cache_dir`` now.
    """
    if budget.kind == "flops":
        encoder_flops_target(model, budget.target, seq_len)
    elif budget.kind == "latency":
        spec = model.encoder.spec
        tables, _ = layer_latency(model, cfg, seq_len, cache_dir)
        check_latency_budget(budget.target, spec.num_layers, spec.num_heads, spec.ffn_dim, tables.attention.fit(), tables.ffn.fit())
    else:
        raise ConfigError(f"method=fisher_prune takes flops or latency budgets, not {budget.kind!r}")


class FisherPruneMethod(PostTrainingMethod):
    """Runs :class:`FisherPruning` in a validate run, so the pruned model's val metric is logged at once."""

    @property
    def sample_batch_size(self) -> int:
        return int(self.cfg.batch_size)

    def check_run(self, run: RunContext, model: nn.Module) -> None:
        check_transformer(model, f"model={run.model_name}")
        if not run.task_trained:
            raise ConfigError(
                f"method=fisher_prune needs a model trained on the task, but finetune is off and model={run.model_name} "
                f"(weights={run.model_weights}) has no {run.dataset_name} classifier; use finetune=text "
                "(or finetune=vit_scratch), or point model.path at a fine-tuned checkpoint"
            )

    def check_model(self, model: nn.Module, budget: Budget, inputs: StepInputs, model_name: str) -> None:
        check_transformer(model, model_name)
        check_budget(model, budget, self.cfg, inputs.seq_len, inputs.cache_dir)

    def callback(self, budget: Budget, inputs: StepInputs) -> PostTrainingCallback:
        return FisherPruning(self.cfg, budget, inputs.samples, inputs.num_labels, inputs.seq_len, inputs.cache_dir, inputs.folder)
