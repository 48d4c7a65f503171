"""Where a model computes: its device and floating-point dtype, which every tensor a method creates takes.

A method given a CUDA or bfloat16 model computes there and in that dtype,
and returns the model as it found it; what it accumulates (Fisher
information, least-squares systems, activation statistics) is kept in at
least float32, so a 16-bit model's statistics do not round away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 for a model without any)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """What statistics of a ``dtype`` model are accumulated in: float32 for 16-bit models, float64 for float64 ones."""
    return torch.promote_types(dtype, torch.float32)


def batch_for(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` on the model's device, its floating-point inputs (images) in the model's dtype; ids, labels and non-tensors as they are."""
    device, dtype = model_device(model), model_dtype(model)

    def placed(key: str, value: Any) -> Any:
        if not isinstance(value, Tensor):
            return value
        return value.to(device=device, dtype=dtype if value.is_floating_point() and key != "labels" else value.dtype)

    return {k: placed(k, v) for k, v in batch.items()}
