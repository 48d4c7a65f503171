"""The no-compression method: the dense model is the result, so every table has its baseline row."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from trimlab.methods import MethodContext, MethodResult


class DenseMethod:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def check(self, cfg: DictConfig, model: nn.Module, datamodule: Any) -> None:
        """Nothing can be infeasible without compression."""

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        return MethodResult(model, unchanged=True)
