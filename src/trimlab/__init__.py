"""trimlab: reproduce, compare and combine compression methods for Transformers and CNNs.

The Python API: :func:`trimlab.compress` compresses a model of your own
(``small, report = trimlab.compress(model, "fisher_prune", budget=0.6, data=loader)``);
:func:`trimlab.save_model` keeps its result (``trimlab.save_model(small, "small/")``), and
:func:`trimlab.load_model` rebuilds it, or the model a ``trimlab`` run kept
(``trimlab.load_model("outputs/runs/<run id>")``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Budget", "CompressionReport", "compress", "load_model", "save_model"]

_HOMES = {
    "Budget": "trimlab.api", "CompressionReport": "trimlab.api", "compress": "trimlab.api", "load_model": "trimlab.saved_model",
    "save_model": "trimlab.saved_model",
}


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use, so that ``import trimlab`` (and the CLI's start) stays light."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'trimlab' has no attribute {name!r}")
