"""LTP's training as a LightningModule: the task loss plus the soft-mask penalty, thresholds in their own optimizer group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from trimlab.methods.ltp.selectors import LearnedThresholds
from trimlab.training import ClassifierModule


class TokenPruningModule(ClassifierModule):
    """Trains ``model`` with the token selector installed in ``model.encoder``.

    With a :class:`LearnedThresholds` selector in soft mode (stage 1) the loss
    adds λ × the mask penalty and the thresholds learn at ``threshold_lr``;
    in hard mode (stage 2, and the top-k baseline) it is the task loss alone,
    with tokens dropped as at inference. Weight decay is 0, as in the reference.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        metric: str,
        lr: float,
        lam: float = 0.0,
        threshold_lr: float = 0.0,
    ) -> None:
        super().__init__(model, num_labels, metric, lr=lr, weight_decay=0.0, warmup_ratio=0.0)
        self.lam = lam
        self.threshold_lr = threshold_lr

    @property
    def selector(self) -> Any:
        return self.model.encoder.token_selector

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        selector = self.selector
        soft = isinstance(selector, LearnedThresholds) and not selector.hard
        if soft:
            selector.reset()
        out = self.model(batch)
        loss = self.task_loss(out.logits, batch["labels"])
        size = len(batch["labels"])
        if soft and self.lam > 0:
            penalty = selector.mask_penalty()
            loss = loss + self.lam * penalty
            self.log("train/mask_penalty", penalty, batch_size=size)
        if soft:  # the masks (and their graph) end with the step: the trained model copies and saves as a leaf
            selector.reset()
        kept = torch.stack(out.encoder.kept_tokens).float().mean() / out.encoder.kept_tokens[0].float().mean()
        self.log("train/kept_fraction", kept, prog_bar=True, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        """The weights' groups, plus the thresholds' own group while they learn (soft stage)."""
        thresholds = [p for n, p in self.model.named_parameters() if n.startswith("encoder.token_selector.")]
        ids = {id(p) for p in thresholds}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in super().param_groups()]
        selector = self.selector
        if thresholds and isinstance(selector, LearnedThresholds) and not selector.hard and self.threshold_lr > 0:
            groups.append({"params": thresholds, "lr": self.threshold_lr, "weight_decay": 0.0})
        return groups
