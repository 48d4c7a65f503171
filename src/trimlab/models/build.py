"""One entry point from a model config to a ready model plus what the data pipeline needs to feed it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from torch import nn

from trimlab.config import ConfigError, model_kind
from trimlab.models.cnn import build_cnn
from trimlab.models.text import load_text_classifier
from trimlab.models.vision import build_vit


@dataclass
class BuiltModel:
    """The model and its input contract: a tokenizer for text, image size and normalisation for images."""

    model: nn.Module
    kind: str
    """``text``, ``vit`` or ``cnn``."""
    tokenizer: Any | None
    max_length: int | None
    image_size: int | None
    in_chans: int | None
    mean: list[float] | None
    std: list[float] | None


def build_model(model_cfg: DictConfig, num_labels: int) -> BuiltModel:
    """Build the configured model with a classifier for ``num_labels`` classes.

    ``num_labels=0`` (unlabelled images) keeps a pretrained image model's own
    classes. Missing folders, packages or weights raise :class:`ConfigError`
    naming the fix.
    """
    kind = model_kind(model_cfg)
    if num_labels < 0 or (num_labels == 0 and (kind == "text" or model_cfg.weights == "scratch")):
        raise ConfigError(f"model={model_cfg.name} needs a labelled dataset; got num_labels={num_labels}")
    if kind == "text":
        model, tokenizer = load_text_classifier(
            model_cfg.path,
            model_cfg.family,
            num_labels,
            weights=model_cfg.weights,
            revision=model_cfg.get("revision", ""),  # configs and saved models from before the key: the default
            hidden_dropout=model_cfg.hidden_dropout,
            attention_dropout=model_cfg.attention_dropout,
        )
        model.encoder.packed = model_cfg.get("packed", True)  # configs written before the key existed: the default
        return BuiltModel(model, kind, tokenizer, model_cfg.max_length, None, None, None, None)
    if kind == "vit":
        model, in_chans = build_vit(model_cfg, num_labels), model_cfg.in_chans
        model.encoder.packed = model_cfg.get("packed", True)  # configs written before the key existed: the default
    else:
        model, in_chans = build_cnn(model_cfg, num_labels), model_cfg.in_chans
    mean, std = list(model_cfg.mean), list(model_cfg.std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ConfigError(f"model.mean/std have {len(mean)}/{len(std)} values but the model takes {in_chans} channels")
    return BuiltModel(model, kind, None, None, model_cfg.image_size, in_chans, mean, std)
