"""Cached weights: where a dense (or a training method's) model of a config lives, and safe save/load.

The key is a hash of what shaped the weights (model, training data, recipe,
seed, and the content of local weights and data), so every method on the same
model and dataset starts from the same dense checkpoint and a rerun never
trains twice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trimlab.config import ConfigError, process_count
from trimlab.files import atomic_path
from trimlab.results.record import config_hash, input_fingerprints, locations, without_neutral

DATASET_KEYS_NOT_IN_TRAINING = ("eval_batch_size", "max_eval_examples", "sample_size", "num_workers")
"""Dataset keys that change evaluation only, not the trained weights."""
MODEL_KEYS_NOT_IN_TRAINING = ("packed",)
"""Model keys that change how the model runs, not the weights training reaches (the layouts compute the same)."""


def dense_checkpoint_path(cfg: DictConfig) -> Path:
    """Where the dense model of this model × dataset × recipe × seed is cached."""
    return _cache_path(cfg, "dense", {})


def trained_checkpoint_path(cfg: DictConfig, run_time_keys: tuple[str, ...]) -> Path:
    """Where a training method's weights are cached: the dense key plus the method's keys minus ``run_time_keys``.

    Keys that only change how the trained weights are used (a run-time density,
    what is evaluated) stay out, so runs that differ only there share one training.
    """
    method = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k not in run_time_keys}
    return _cache_path(cfg, cfg.method.name, {"method": method})


def _cache_path(cfg: DictConfig, kind: str, extra: dict[str, Any]) -> Path:
    dataset = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in DATASET_KEYS_NOT_IN_TRAINING}
    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in MODEL_KEYS_NOT_IN_TRAINING}
    if not model.get("revision", True):  # the default branch: keys as before model.revision existed
        del model["revision"]
    groups = ("model", "dataset", "method") if "method" in extra else ("model", "dataset")
    inputs = {k: v for k, v in input_fingerprints(locations(cfg)).items() if k.split(".")[0] in groups}
    processes = process_count(cfg.trainer)
    key = config_hash(
        {
            "model": model,
            "dataset": dataset,
            "finetune": without_neutral("finetune", OmegaConf.to_container(cfg.finetune, resolve=True)),  # type: ignore[arg-type]
            "seed": cfg.seed,
            "precision": cfg.trainer.precision,
            "limit_train_batches": cfg.trainer.limit_train_batches,
            **({"processes": processes} if processes > 1 else {}),  # DDP trains on larger global batches
            **({"inputs": inputs} if inputs else {}),  # local weights or data changed in place: another key
            **extra,
        }
    )
    return Path(cfg.paths.cache_dir) / kind / f"{cfg.model.name}-{cfg.dataset.name}-{key}.safetensors"


def resume_folder(cache_entry: Path) -> Path:
    """Where the training toward a cache entry keeps its state between attempts (any run that needs the entry resumes it)."""
    return cache_entry.with_suffix(".resume")


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Save the state dict as safetensors (the kept models' format), atomically: a crash never leaves a corrupt entry.

    The storage library's own error (a write that failed inside safetensors) is raised as the ``OSError``
    it stands for, so callers handle every failed write the same way."""
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    except SafetensorError as err:
        raise OSError(f"safetensors could not write {path}: {err}") from err


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a checkpoint: safetensors, or a ``torch.save`` state dict (a teacher's ``.pt``).

    A corrupt or mismatched file is a :class:`ConfigError` naming it.
    """
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 — unpickling, truncation and shape errors all need the same fix
        reason = re.sub(r"\x1b\[[0-9;]*m", "", (str(err).strip().splitlines() or [type(err).__name__])[0])[:200]  # torch colours some
        raise ConfigError(
            f"cached checkpoint {path} is corrupt or does not fit model={model.__class__.__name__} ({reason}); "
            "delete it to train again"
        ) from err
