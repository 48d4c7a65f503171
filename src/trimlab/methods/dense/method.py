"""The dense method: the model as it came in, measured like every compressed one."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from trimlab.config import Budget
from trimlab.methods import MethodContext, MethodResult
from trimlab.methods.context import RunContext


class DenseMethod:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def check(self, run: RunContext, budget: Budget, model: nn.Module, datamodule: Any) -> None:
        """Nothing can be infeasible without compression."""

    def apply(self, model: nn.Module, ctx: MethodContext) -> MethodResult:
        return MethodResult(model, unchanged=True)
