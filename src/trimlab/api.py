"""``compress(model, method, budget, data)``: trimlab's post-training methods on a model of your own, no Hydra.

The model is converted into trimlab's unified encoder
(:func:`trimlab.models.convert.to_trimlab`); the method's config is composed from
its packaged YAML on its schema, the same defaults ``trimlab method=<name>`` runs
with (``options`` overrides its keys); then each step is built and checked as a
run builds and checks it (:class:`~trimlab.methods.post_training.PostTrainingMethod`)
and its callback — the very one the CLI runs in a validate run — compresses the
model directly, on the given batches, under the budget as a value: no Lightning
trainer, no run folder. FLOPs are counted on those batches before and after, as a
run counts them on its test set.

The training methods (LTP, SaiT, MaiT) run their own ``check`` and ``apply`` as a
run does, on ``train_data``/``eval_data`` behind a datamodule's interface and a
plain Lightning trainer, with a :class:`~trimlab.methods.context.RunContext` of
default settings where a run would give its own.

>>> from trimlab.api import compress
>>> small, report = compress(model, "fisher_prune", budget=0.6, data=loader)
>>> report.flops_ratio, report.params

A quantizing method also checks the model it returns as deployed, on an integer engine
(:mod:`trimlab.measure.deployed`), as a run's ``measure.deployed`` does.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from trimlab.config import RATIO_KINDS, Budget, ConfigError, check_keys
from trimlab.config_store import register_configs
from trimlab.measure.deployed import check_disagreement, measure_deployed, quantized_layers
from trimlab.measure.flops import mean_flops_per_example, sequence_length
from trimlab.measure.size import count_params
from trimlab.methods import build_method, builtin_method_options, kind_of, method_label, plugin_methods
from trimlab.methods.post_training import PostTrainingMethod, StepInputs
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.convert import to_trimlab
from trimlab.models.embeddings import TextEmbeddings
from trimlab.models.placement import batch_for, model_device

__all__ = ["Budget", "CompressionReport", "compress"]

TRAINED = ("ltp", "ltp_topk", "sait", "mait")
"""The training methods compress() runs."""
TRAINED_DEFAULTS = {"mait": {"init": "dense"}}
"""Options compress() sets apart from a run's defaults: a user's model is trained, so MaiT fine-tunes it with the masks."""
BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels")
"""What a batch may carry into the model and its loss (others are dropped)."""


@dataclass
class CompressionReport:
    """What :func:`compress` did: the budget, FLOPs and parameters before and after, and the method's own numbers."""

    method: str
    budget: Budget
    dense_flops: float
    """Mean FLOPs per example of ``data`` (unpadded lengths, as a run counts them)."""
    flops: float
    dense_params: int
    params: int
    stats: dict[str, Any] = field(default_factory=dict)
    """The method's record (kept heads and neurons per layer, weight bits…); ``<step>/<key>`` in a pipeline."""
    stages: dict[str, float] = field(default_factory=dict)
    """Wall seconds per step of the method."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Name → file under ``output_dir`` (masks, quantization tables); empty without one."""
    deployed_engine: str | None = None
    """The integer engine the quantized model was checked on (``none``: no engine takes it, see ``deployed_reason``); None when unchecked."""
    deployed_metric: float | None = None
    """The deployed model's accuracy (Pearson for one label) on the checked batches' labels; None without labels."""
    deployed_disagreement: float | None = None
    """Share of the checked examples whose predicted class differs between the deployed and the simulated model."""
    deployed_reason: str = ""
    """Why no engine takes the model (engine ``none``)."""

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.dense_flops

    @property
    def params_ratio(self) -> float:
        return self.params / self.dense_params


def compress(
    model: nn.Module,
    method: str | Sequence[str] = "fisher_prune",
    budget: float | Budget | None = None,
    data: Iterable[Any] | Mapping[str, Tensor] | None = None,
    *,
    bits: int | None = None,
    options: Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    train_data: Iterable[Any] | None = None,
    eval_data: Iterable[Any] | None = None,
    epochs: float | None = None,
    seed: int | None = None,
    check_deployed: bool = True,
) -> tuple[nn.Module, CompressionReport]:
    """Compress ``model`` post-training and return trimlab's compressed model with a :class:`CompressionReport`.

    ``model``: a ``transformers`` BERT / MiniLM / RoBERTa / DistilBERT / ELECTRA / MPNet sequence
    classifier, a timm ViT/DeiT (any timm model for quantization) or a trimlab
    model; it is left as it was. ``method``: ``fisher_prune``, ``pwlq``,
    ``uniform_ptq``, a pipeline option of them (``fisher_prune_pwlq``) or a list of
    them in order (``["fisher_prune", "pwlq"]``). ``budget``: a number is a target of
    the method's first budget kind (a FLOPs ratio for Fisher, bits for a quantizer);
    ``Budget("latency", 0.7)`` names another. ``bits``: the weight bits of the
    quantizing steps. ``data``: a DataLoader or list of batches: mappings such as a
    tokenizer's or a ``datasets`` collator's (``input_ids``/``attention_mask``/``token_type_ids``
    or ``pixel_values``, and ``labels`` or ``label``; other keys are dropped), or
    ``(inputs, labels)`` pairs whose inputs are such a mapping, a tensor of token ids
    (attention mask: 0 where an id is the model's ``config.pad_token_id``, all ones if it
    has none) or a tensor of images: the sample set, each batch as it is (one Fisher
    gradient, one calibration batch). ``options``: keys of
    the method's config (``{"tune": False}``), per step name for a pipeline
    (``{"quantize": {"act_bits": 8}}``). ``output_dir``: where the method's files
    go (and the latency table is cached); none are kept without it.

    A training method trains instead, on ``train_data`` (labelled batches, as
    ``data``; calibration takes its first ``calibration_examples``), validating on
    ``eval_data``, on which FLOPs are counted; training runs in a plain Lightning
    trainer on the model's device, without logger or checkpoints.
    ``method="ltp"`` (or ``"ltp_topk"``): LTP's soft stage, budget calibration and hard
    stage; ``epochs`` sets each stage's (``soft_epochs``, ``hard_epochs``; ``options``
    sets them apart); ``budget`` is its tokens budget (a FLOPs ratio). ``method="sait"``
    (a ViT): dense/sparse training for ``epochs``, then the density meeting
    ``budget`` (a FLOPs ratio; or ``options={"density": 0.8}`` with
    ``budget=Budget("none")``), the density curve in ``report.stats["densities"]``.
    ``method="mait"`` (a ViT): fine-tunes the model with locality masks on its
    heads for ``epochs`` (default 1) with trimlab's fine-tuning recipe
    (:class:`~trimlab.config.FinetuneConfig`); it takes no budget. ``seed``: seeds
    Python, NumPy and torch (Lightning's ``seed_everything``) before training, as a
    run's ``seed`` does, so the same call trains the same model; left out, training
    draws from the generators as they are. Post-training methods draw nothing and refuse it.

    ``check_deployed`` (a run's ``measure.deployed``): a quantized model is run on its integer
    engine (:mod:`trimlab.measure.deployed`) on the CPU over ``eval_data`` (default: ``data``);
    the report gets ``deployed_engine``, ``deployed_metric`` and ``deployed_disagreement`` (or engine
    ``none`` and ``deployed_reason``), and over 1% disagreement :class:`~trimlab.measure.deployed.DeployedDisagreement`
    is raised. ``check_deployed=False`` skips it.

    The returned model takes the same batches and returns ``.logits``. A bad
    argument raises :class:`~trimlab.config.ConfigError` (a ValueError) naming it
    and what would work, before any expensive work.
    """
    _check_bits(bits)
    if isinstance(method, str) and method in TRAINED:
        return _train(model, method, budget, data, options or {}, output_dir, train_data, eval_data, epochs, bits, seed)
    for arg, value in (("train_data", train_data), ("epochs", epochs), ("seed", seed)):
        if value is not None:
            raise ConfigError(f"{arg}: method={method} compresses without training; give data=, or a training method ({', '.join(TRAINED)})")
    name, steps, accepted = _method_steps(method, options or {})
    budget = _resolve_budget(name, steps, accepted, budget, bits)
    step_bits = _step_bits(name, steps, budget, bits)
    if eval_data is not None and not (step_bits and check_deployed):
        why = "check_deployed=False skips the check that reads it" if step_bits else f"method={name} neither trains nor quantizes"
        raise ConfigError(f"eval_data: {why}; it is what a training method validates on or a quantizer's deployed check predicts. Leave it out")
    batches = _batches(data, _pad_token_id(model))
    compressed = to_trimlab(model)  # on the model's device, in its dtype: so are the batches, and every step computes there
    batches = [batch_for(compressed, batch) for batch in batches]
    _check_batches(compressed, batches)
    check_batches = batches
    if eval_data is not None:
        check_batches = [batch_for(compressed, batch) for batch in _batches(eval_data, _pad_token_id(model), "eval_data")]
        _check_batches(compressed, check_batches, "eval_data")
    for step, bits_of_step in step_bits.items():
        steps[step].bits = bits_of_step
    methods = {step: _post_training_method(cfg) for step, cfg in steps.items()}
    # as dataset.num_labels: 0 is the weights' own head (a timm CNN's classes); the deployed check reads its width (_num_labels)
    num_labels = compressed.head.classifier.out_features if isinstance(compressed, TransformerClassifier) else 0
    seq_len = _sequence_length(compressed, batches) if isinstance(compressed, TransformerClassifier) else 0.0
    with _work_dir(output_dir) as work:

        def inputs(step: str) -> StepInputs:
            folder = work / step if len(steps) > 1 else work
            return StepInputs(batches, num_labels, seq_len, work / "cache", folder)

        for step, method in methods.items():
            method.check_model(compressed, budget, inputs(step), f"model ({type(model).__name__})")
        dense_flops = mean_flops_per_example(compressed, batches, max_batches=len(batches))
        dense_params = count_params(compressed)
        tags = "".join(method_label(cfg).removeprefix(str(cfg.name)) for cfg in steps.values())  # additions on: pwlq+obc
        report = CompressionReport(name + tags, budget, dense_flops, dense_flops, dense_params, dense_params)
        for step, method in methods.items():
            prefix = f"{step}/" if len(steps) > 1 else ""
            step_inputs = inputs(step)
            callback = method.callback(budget, step_inputs)
            callback.compress(compressed)
            report.stats.update({prefix + k: v for k, v in callback.stats.items()})
            report.stages.update({prefix + k: v for k, v in callback.stages.items()})
            if output_dir is not None:
                report.artifacts.update({prefix + k: str(step_inputs.folder / v) for k, v in callback.artifacts.items()})
    compressed.eval()
    report.flops = mean_flops_per_example(compressed, batches, max_batches=len(batches))
    report.params = count_params(compressed)
    if check_deployed and quantized_layers(compressed):
        _deployed_check(compressed, check_batches, "eval_data" if eval_data is not None else "data", report)
    return compressed, report


def _deployed_check(model: nn.Module, batches: Sequence[Mapping[str, Tensor]], arg: str, report: CompressionReport) -> None:
    """The quantized model on its integer engine over ``batches`` (:mod:`trimlab.measure.deployed`), into ``report``;
    raises :class:`~trimlab.measure.deployed.DeployedDisagreement` over the limit, as a run fails."""
    start = time.perf_counter()
    cpu = [{k: v.cpu() for k, v in batch.items()} for batch in batches]
    num_labels = _num_labels(model, cpu[0])
    labelled = all("labels" in batch for batch in cpu)
    targets = torch.cat([batch["labels"] for batch in cpu]).numpy() if labelled else None
    entries = measure_deployed(model, cpu, _metric(num_labels), num_labels, targets)
    report.stages["measure_deployed"] = time.perf_counter() - start
    report.deployed_engine = entries.get("deployed_engine")  # type: ignore[assignment]
    report.deployed_metric = entries.get("deployed_metric")  # type: ignore[assignment]
    report.deployed_disagreement = entries.get("deployed_disagreement")  # type: ignore[assignment]
    report.deployed_reason = str(entries.get("deployed_reason", ""))
    examples = sum(len(next(iter(batch.values()))) for batch in cpu)
    check_disagreement(entries, examples, skip="compress(..., check_deployed=False)", data=arg)


def _num_labels(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """The width of the model's logits (1: a regression head), read off one example where the model does not say."""
    if isinstance(model, TransformerClassifier):
        return model.head.classifier.out_features
    with torch.no_grad():
        return int(model({k: v[:1].to(model_device(model)) for k, v in batch.items() if k != "labels"}).logits.shape[-1])


def _metric(num_labels: int) -> str:
    """The metric compress() scores a model with: accuracy for a classifier, Pearson for one label."""
    return "accuracy" if num_labels > 1 else "pearson"


# ---------------------------------------------------------------- training methods
@dataclass
class _UserBatches:
    """The user's batches behind the datamodule interface a training method reads (each split read once, in order)."""

    train: list[dict[str, Tensor]]
    eval: list[dict[str, Tensor]]
    num_labels: int
    seq_len: float
    """Tokens per training example (text: the mean unpadded length)."""

    @property
    def metric(self) -> str:
        return _metric(self.num_labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)  # each item is a batch already

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.eval, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def sample_dataloader(self, num_samples: int | None = None, batch_size: int | None = None) -> list[dict[str, Tensor]]:
        """The first training batches holding ``num_samples`` examples (all of them without a number)."""
        taken, count = [], 0
        for batch in self.train:
            if num_samples is not None and count >= num_samples:
                break
            taken.append(batch)
            count += len(next(iter(batch.values())))
        return taken

    def avg_train_length(self) -> float:
        return self.seq_len


def _train(
    model: nn.Module,
    name: str,
    budget: Any,
    data: Any,
    options: Mapping[str, Any],
    output_dir: str | Path | None,
    train_data: Any,
    eval_data: Any,
    epochs: float | None,
    bits: int | None,
    seed: int | None,
) -> tuple[nn.Module, CompressionReport]:
    """:func:`compress` for a training method: the method's own ``check`` and ``apply``, on the user's batches."""
    import lightning.pytorch as pl

    from trimlab.config import FinetuneConfig
    from trimlab.methods import MethodContext
    from trimlab.methods.context import RunContext

    if data is not None:
        raise ConfigError(f"data: method={name} trains; give train_data= (labelled batches) and eval_data= instead")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    if bits is not None:
        raise ConfigError(f"bits={bits}: method={name} does not quantize; quantize its result with compress(small, 'pwlq', bits=...)")
    cfg = method_config(name)
    recipe = FinetuneConfig()
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0:
            raise ConfigError(f"epochs={epochs!r} must be a positive number of epochs (fractions allowed)")
        stages = [k for k in cfg if str(k).endswith("epochs")]
        if set(stages) & set(options):
            raise ConfigError(f"epochs={epochs} and options {', '.join(sorted(set(stages) & set(options)))} both set them; give one")
        options = {**options, **{k: float(epochs) for k in stages}}
        if not stages:  # the method trains with the fine-tuning recipe (MaiT)
            recipe = FinetuneConfig(epochs=float(epochs))
    cfg = _with_options(cfg, {**TRAINED_DEFAULTS.get(name, {}), **options}, "options")
    budget = _resolve_budget(name, {name: cfg}, list(cfg.budgets), budget, None)
    for arg, value in (("train_data", train_data), ("eval_data", eval_data)):
        if value is None:
            raise ConfigError(f"{arg}: method={name} trains and is evaluated on labelled batches; give {arg}=")
    trained = to_trimlab(model)
    pad = _pad_token_id(model)
    splits = {}
    for arg, value in (("train_data", train_data), ("eval_data", eval_data)):
        batches = [batch_for(trained, b) for b in _batches(value, pad, arg)]
        _check_batches(trained, batches, arg)
        unlabelled = next((i for i, b in enumerate(batches) if "labels" not in b), None)
        if unlabelled is not None:
            raise ConfigError(f"{arg}: batch {unlabelled} has no labels (or label); method={name} trains on labels")
        splits[arg] = batches
    if not isinstance(trained, TransformerClassifier):
        raise ConfigError(f"model: method={name} trains a Transformer (its tokens or attention); a {type(model).__name__} is not one")
    num_labels = trained.head.classifier.out_features
    user = _UserBatches(splits["train_data"], splits["eval_data"], num_labels, _sequence_length(trained, splits["train_data"]))
    method = build_method(cfg)
    accelerator = "gpu" if model_device(trained).type == "cuda" else "cpu"

    def make_trainer(**overrides: Any) -> pl.Trainer:
        settings = dict(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(work))  # fmt: skip
        return pl.Trainer(**{**settings, **overrides})

    if seed is not None:
        pl.seed_everything(seed, workers=True, verbose=False)
    with _work_dir(output_dir) as work:
        run = RunContext(work / "cache", seed=seed or 0, model_name=type(model).__name__, dataset_name="train_data", recipe=recipe)
        method.check(run, budget, trained, user)
        dense_flops = mean_flops_per_example(trained, user.eval, max_batches=len(user.eval))
        dense_params = count_params(trained)
        result = method.apply(trained, MethodContext(run, budget, user, work, make_trainer))
    compressed = result.model.eval()
    report = CompressionReport(method_label(cfg), budget, dense_flops, dense_flops, dense_params, dense_params, result.stats, result.stages)
    if output_dir is not None:
        report.artifacts = {k: str(Path(output_dir) / v) for k, v in result.artifacts.items()}
    report.flops = mean_flops_per_example(compressed, user.eval, max_batches=len(user.eval))
    report.params = count_params(compressed)
    return compressed, report


# ---------------------------------------------------------------- the method's config
def method_options() -> list[str]:
    """Every ``method=`` option: trimlab's (``conf/method/*.yaml``) and those of plugins."""
    return sorted([*builtin_method_options(), *plugin_methods()[1]])


def method_config(name: str) -> DictConfig:
    """``conf/method/<name>.yaml`` on its schema, exactly as ``trimlab method=<name>`` composes it."""
    from hydra import compose

    if name not in method_options():
        raise ConfigError(f"method={name!r} is not a trimlab method; compress() takes {_takes()}")
    with _composing():
        return compose("config", overrides=[f"method={name}"]).method


def _method_steps(method: str | Sequence[str], options: Mapping[str, Any]) -> tuple[str, dict[str, DictConfig], list[str]]:
    """The method's name, its steps (step name → that method's config, ``options`` applied) and the budget kinds it takes."""
    if isinstance(method, str):
        cfg = method_config(method)
        steps = dict(cfg.steps) if "steps" in cfg else {method: cfg}
        name, accepted = method, list(cfg.budgets)
    else:
        names = list(method)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"method={names}: list each method once, in the order they run, e.g. ['fisher_prune', 'pwlq']")
        steps = {n: method_config(n) for n in names}
        name = "+".join(names)
        ratio = [list(c.budgets) for c in steps.values() if set(c.budgets) & set(RATIO_KINDS)]
        accepted = ratio[0] if ratio else ["bits"]
    for cfg in steps.values():
        if not _is_post_training(cfg):
            raise ConfigError(
                f"method={name}: {cfg.name} is not a post-training method (it trains the model; run it with the trimlab CLI); "
                f"compress() takes {_takes()}"
            )
    if len([c for c in steps.values() if _prunes(c)]) > 1:
        raise ConfigError(f"method={name} prunes twice; one pruning step takes the whole budget")
    if len(steps) > 1 and set(options) - set(steps):
        unknown = ", ".join(sorted(set(options) - set(steps)))
        raise ConfigError(f"options: {unknown} is not a step of method={name}; key the options by step: {', '.join(steps)}")
    for step, cfg in steps.items():
        given, where = (options, "options") if len(steps) == 1 else (options.get(step, {}), f"options.{step}")
        steps[step] = _with_options(cfg, given, where)
    return name, steps, accepted


def _with_options(cfg: DictConfig, given: Mapping[str, Any], where: str) -> DictConfig:
    """The method's config with the user's keys set, checked on its schema."""
    try:
        merged = OmegaConf.merge(cfg, given)
    except OmegaConfBaseException as exc:
        keys = ", ".join(k for k in cfg if k not in ("name", "budgets"))
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}; the keys of {cfg.name} are: {keys}") from exc
    check_keys(merged, f"{where}.")
    return merged


def _is_post_training(cfg: DictConfig) -> bool:
    """The method compresses a trained model without training it (its implementation is a PostTrainingMethod)."""
    return issubclass(kind_of(cfg).implementation_class(), PostTrainingMethod)


def _prunes(cfg: DictConfig) -> bool:
    """The method takes a ratio budget (FLOPs, latency, tokens): it prunes rather than quantizes."""
    return bool(set(cfg.budgets) & set(RATIO_KINDS))


def _post_training_method(cfg: DictConfig) -> PostTrainingMethod:
    method = build_method(cfg)
    assert isinstance(method, PostTrainingMethod)  # _method_steps refused the others
    return method


def _takes() -> str:
    """The methods compress() runs, for error messages."""
    singles, pipelines = _post_training_options()
    return f"{', '.join(singles)}, a pipeline of them ({', '.join(pipelines)}) or a list such as ['fisher_prune', 'pwlq']"


@functools.cache
def _post_training_options() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The packaged method options compress() runs: single post-training methods, and pipelines of them only."""
    from hydra import compose

    singles, pipelines = [], []
    with _composing():
        for option in method_options():
            cfg = compose("config", overrides=[f"method={option}"]).method
            if "steps" in cfg:
                if all(_is_post_training(step) for step in cfg.steps.values()):
                    pipelines.append(option)
            elif _is_post_training(cfg):
                singles.append(option)
    return tuple(singles), tuple(pipelines)


@contextmanager
def _composing() -> Iterator[None]:
    """Hydra on trimlab's packaged configs for the block, whatever Hydra state the caller has (restored after)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    register_configs()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("trimlab.conf", version_base="1.3"):
            yield
    finally:
        restore_gh_from_backup(backup)


# ---------------------------------------------------------------- budget and bits
def _check_bits(bits: Any) -> None:
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16):
        raise ConfigError(f"bits={bits!r} must be a whole number of bits in [2, 16]")


def _resolve_budget(name: str, steps: Mapping[str, DictConfig], accepted: list[str], budget: Any, bits: int | None) -> Budget:
    """The budget as a value: a number is a target of the method's first kind; a quantizer's is its ``bits``."""
    if accepted == ["none"]:  # the method changes accuracy, not a cost (MaiT)
        if budget is not None and budget != Budget("none"):
            raise ConfigError(f"budget={budget!r}: method={name} takes no budget; leave it out")
        return Budget("none")
    prunes = any(_prunes(c) for c in steps.values())
    examples = "budget=0.6 (60% of the FLOPs) or budget=Budget('latency', 0.7)" if prunes else "bits=4 (or budget=4)"
    if budget is None and not prunes:
        budget = bits
    if budget is None:
        raise ConfigError(f"budget: method={name} needs one, e.g. {examples}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float, Budget)):
        raise ConfigError(f"budget={budget!r} is neither a number nor a Budget; e.g. {examples}")
    if not isinstance(budget, Budget):
        budget = Budget(accepted[0], float(budget))
    if budget.kind not in accepted:
        raise ConfigError(
            f"budget: method={name} cannot take a {budget.kind!r} budget; it accepts {', '.join(accepted)}, e.g. {examples}"
        )
    return budget


def _step_bits(name: str, steps: Mapping[str, DictConfig], budget: Budget, bits: int | None) -> dict[str, int]:
    """Weight bits of each quantizing step: ``bits``, else a bits budget's target, else the step's own ``bits`` key."""
    quantizers = [step for step, cfg in steps.items() if "bits" in cfg.budgets]
    if not quantizers and bits is not None:
        raise ConfigError(
            f"bits={bits}: method={name} does not quantize; use method=['{name}', 'pwlq'] or method=fisher_prune_pwlq"
        )
    from_budget = int(budget.target) if budget.kind == "bits" else None
    if bits is not None and from_budget is not None and bits != from_budget:
        raise ConfigError(f"bits={bits} and budget={from_budget} (bits) disagree; give one of them")
    chosen = {step: bits or from_budget or int(steps[step].bits) for step in quantizers}
    if not all(chosen.values()):
        raise ConfigError(f"bits: method={name} quantizes, so it needs weight bits, e.g. bits=4")
    return chosen


# ---------------------------------------------------------------- data and checks
def _batches(data: Any, pad_token_id: int | None, arg: str = "data") -> list[dict[str, Tensor]]:
    """The batches as trimlab's datamodules yield them, read once (every step sees the same examples).

    A mapping keeps the keys the model or its loss reads (``label`` is read as ``labels``; others, such as
    ``idx`` or ``sentence``, are dropped). A pair ``(inputs, labels)``: inputs a mapping, a ``[batch, tokens]``
    tensor of token ids (its attention mask is 0 where an id is ``pad_token_id``, all ones without one) or a
    ``[batch, channels, height, width]`` tensor of images.
    """
    hint = (
        "give a DataLoader or a list of batches: dicts with input_ids[/attention_mask]/labels or pixel_values/labels "
        "(extra keys are dropped), or (inputs, labels) pairs"
    )
    if data is None or isinstance(data, (Tensor, str)):
        raise ConfigError(f"{arg}: {hint}")
    batches = []
    for i, batch in enumerate([data] if isinstance(data, Mapping) else data):
        if isinstance(batch, (tuple, list)):
            batch = _pair_batch(batch, pad_token_id, f"{arg}: batch {i}")
        if not isinstance(batch, Mapping) or not {"input_ids", "pixel_values"} & set(batch):
            keys = f" (keys: {', '.join(map(str, batch))})" if isinstance(batch, Mapping) else ""
            raise ConfigError(f"{arg}: batch {i}, a {type(batch).__name__}{keys}, has neither input_ids nor pixel_values; {hint}")
        if "label" in batch and "labels" in batch:
            raise ConfigError(f"{arg}: batch {i} has both label and labels; keep one")
        batch = {("labels" if k == "label" else k): v for k, v in batch.items()}
        batches.append({k: batch[k] for k in BATCH_KEYS if k in batch})
    if not batches:
        raise ConfigError(f"{arg} is empty; {hint}")
    return batches


def _pair_batch(pair: Sequence[Any], pad_token_id: int | None, where: str) -> Any:
    """``(inputs, labels)`` as a batch mapping (a pair whose inputs are neither a mapping nor a tensor is returned as is)."""
    if len(pair) != 2:
        raise ConfigError(f"{where} is a {type(pair).__name__} of {len(pair)} items; a pair batch is (inputs, labels)")
    inputs, labels = pair
    if isinstance(inputs, Mapping):
        return {**inputs, "labels": labels}
    if not isinstance(inputs, Tensor):
        return pair
    if inputs.ndim == 4:
        return {"pixel_values": inputs, "labels": labels}
    if inputs.ndim == 2 and not inputs.dtype.is_floating_point:
        mask = torch.ones_like(inputs) if pad_token_id is None else (inputs != pad_token_id).long()
        return {"input_ids": inputs, "attention_mask": mask, "labels": labels}
    raise ConfigError(
        f"{where}: its inputs have shape {list(inputs.shape)} ({inputs.dtype}); "
        "a pair's inputs are token ids [batch, tokens] (integers) or images [batch, channels, height, width]"
    )


def _pad_token_id(model: nn.Module) -> int | None:
    """The padding id the user's model declares (``config.pad_token_id``; a trimlab text model's own), or None."""
    config = getattr(model, "config", None)
    if config is not None:
        return getattr(config, "pad_token_id", None)
    embeddings = getattr(model, "embeddings", None)
    return embeddings.pad_token_id if isinstance(embeddings, TextEmbeddings) else None


def _check_batches(model: nn.Module, batches: Sequence[Mapping[str, Tensor]], arg: str = "data") -> None:
    """Each batch holds what the model reads, as tensors of the right kind and shape, and labels it can score:
    say which batch and key is wrong before a traceback deep in a forward or a loss."""
    text = isinstance(model, TransformerClassifier) and isinstance(model.embeddings, TextEmbeddings)
    key = "input_ids" if text else "pixel_values"
    num_labels = model.head.classifier.out_features if isinstance(model, TransformerClassifier) else None
    read: set[tuple] = set()
    for i, batch in enumerate(batches):
        if key not in batch:
            kind = "text" if text else "vision"
            raise ConfigError(f"{arg}: the model is a {kind} model and reads {key}, but the batches have {', '.join(batch)}")
        where = f"{arg}: batch {i}:"
        for name, value in batch.items():
            if not isinstance(value, Tensor):
                raise ConfigError(f"{where} {name} is a {type(value).__name__}, not a tensor")
        layout = "[batch, tokens]" if text else "[batch, channels, height, width]"
        if batch[key].ndim != len(layout.split(",")):
            raise ConfigError(f"{where} {key} has shape {list(batch[key].shape)}; it must be {layout}")
        if batch[key].numel() == 0:
            raise ConfigError(f"{where} {key} has shape {list(batch[key].shape)}: it holds no values")
        if text:
            _check_tokens(model.embeddings, batch, where)
        else:
            _check_images(batch[key], where)
        _check_labels(batch.get("labels"), len(batch[key]), num_labels, where)
        shapes = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in batch.items() if k != "labels")
        if shapes not in read:  # one example of each new shape through the model: what the checks above cannot know
            _check_forward(model, batch, i, arg)
            read.add(shapes)


def _check_tokens(embeddings: TextEmbeddings, batch: Mapping[str, Tensor], where: str) -> None:
    ids = batch["input_ids"]
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ConfigError(f"{where} input_ids is {ids.dtype}; token ids are integers (torch.long)")
    vocab = embeddings.word.num_embeddings
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ConfigError(f"{where} input_ids holds ids {int(ids.min())}..{int(ids.max())}; the model's vocabulary has {vocab} (ids 0..{vocab - 1})")
    longest = embeddings.position.num_embeddings - (embeddings.pad_token_id + 1 if embeddings.padding_positions else 0)
    if ids.shape[1] > longest:
        raise ConfigError(f"{where} input_ids has {ids.shape[1]} tokens; the model takes at most {longest}: truncate the examples")
    for name in ("attention_mask", "token_type_ids"):
        if name in batch and batch[name].shape != ids.shape:
            raise ConfigError(f"{where} {name} has shape {list(batch[name].shape)}; it must match input_ids {list(ids.shape)}")
    types = batch.get("token_type_ids")
    count = 0 if embeddings.token_type is None else embeddings.token_type.num_embeddings
    if types is not None and types.numel() and (types.dtype.is_floating_point or int(types.min()) < 0 or int(types.max()) >= max(count, 1)):
        raise ConfigError(f"{where} token_type_ids must be integers in 0..{max(count, 1) - 1}")


def _check_images(pixels: Tensor, where: str) -> None:
    if not pixels.dtype.is_floating_point:
        raise ConfigError(f"{where} pixel_values is {pixels.dtype}; images are floating point (normalised, as the model was trained on)")


def _check_labels(labels: Tensor | None, examples: int, num_labels: int | None, where: str) -> None:
    """One label per example; a classifier's are class ids it has (a regression model's, with one output, any number)."""
    if labels is None:
        return
    if labels.shape != (examples,):
        raise ConfigError(f"{where} labels has shape {list(labels.shape)}; it must be [{examples}], one per example")
    if num_labels is None or num_labels == 1:
        return
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigError(f"{where} labels are {labels.dtype}; class labels are integers (torch.long)")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_labels:
        raise ConfigError(f"{where} labels hold {low}..{high}; the model has {num_labels} classes (labels 0..{num_labels - 1})")


def _check_forward(model: nn.Module, batch: Mapping[str, Tensor], index: int, arg: str) -> None:
    """Run the batch's first example through the model; an error is the data not fitting the model (size, channels)."""
    example = {k: v[:1] for k, v in batch.items() if k != "labels"}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except (RuntimeError, IndexError, ValueError, TypeError) as err:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in batch.items() if k != "labels")
        raise ConfigError(f"{arg}: the model cannot read batch {index} ({shapes}): {(str(err).splitlines() or [type(err).__name__])[0]}") from err
    finally:
        model.train(was_training)


def _sequence_length(model: TransformerClassifier, batches: Sequence[Mapping[str, Tensor]]) -> float:
    """Tokens per example Fisher prices heads and neurons at: the mean unpadded text length, or patches + class token."""
    if "input_ids" not in batches[0]:
        return sequence_length(model, None)
    return _sequence_length_of(batches)


def _sequence_length_of(batches: Sequence[Mapping[str, Tensor]]) -> float:
    """The mean unpadded length of text batches."""
    tokens = examples = 0
    for b in batches:
        tokens += int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
        examples += len(b["input_ids"])
    return tokens / examples


@contextmanager
def _work_dir(output_dir: str | Path | None) -> Iterator[Path]:
    """``output_dir``, or a temporary folder removed afterwards."""
    if output_dir is not None:
        yield Path(output_dir)
        return
    with tempfile.TemporaryDirectory(prefix="trimlab-") as tmp:
        yield Path(tmp)
