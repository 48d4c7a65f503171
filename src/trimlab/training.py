"""The LightningModule that trains and evaluates a classifier; training methods extend it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor, nn

from trimlab.config import process_count


class TopOneAgreement(torchmetrics.MeanMetric):
    """Share of predictions equal to the targets, whatever the number of classes (unlabelled data: 1000 ImageNet classes)."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update((preds == target).float())


def task_metric(metric: str, num_labels: int) -> torchmetrics.Metric:
    """The torchmetrics object behind a dataset's ``metric`` key."""
    if metric == "agreement":
        return TopOneAgreement()
    if metric == "accuracy":
        return torchmetrics.classification.MulticlassAccuracy(num_classes=max(num_labels, 2), average="micro")
    if metric == "f1":
        return torchmetrics.classification.BinaryF1Score()
    if metric == "pearson":
        return torchmetrics.PearsonCorrCoef()
    raise ValueError(f"unknown metric {metric!r}; use accuracy, f1, pearson or agreement")


class ClassifierModule(pl.LightningModule):
    """Cross-entropy (or MSE for one label) training with AdamW, linear warm-up, then linear or cosine decay.

    With a ``mixer`` (timm's ``Mixup``) each training batch of images is mixed
    and the loss is the cross-entropy against its soft targets (DeiT's recipe).

    For ``metric="agreement"`` (unlabelled data) the targets are the top-1
    predictions of ``reference``, the full-precision model, or, when a run has
    them already, ``reference_preds`` (its test predictions in loader order,
    so the reference is not run a second time). Testing keeps each
    example's target and prediction (:meth:`test_predictions`), so a run can
    store them and tables can tell a real difference from test-set noise.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        metric: str,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        freeze_embeddings: bool = False,
        reference: nn.Module | None = None,
        reference_preds: Tensor | None = None,
        schedule: str = "linear",
        mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_labels = num_labels
        self.metric_name = metric
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.label_smoothing = label_smoothing
        self.reference = reference
        self.reference_preds = reference_preds
        self.schedule = schedule
        self.mixer = mixer
        self.soft_target_loss = SoftTargetCrossEntropy()
        self.val_metric = task_metric(metric, num_labels)
        self.test_metric = task_metric(metric, num_labels)
        self.test_outputs: list[tuple[Tensor, Tensor]] = []
        if freeze_embeddings and hasattr(model, "embeddings"):
            for p in model.embeddings.parameters():
                p.requires_grad_(False)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.model(batch).logits

    def targets(self, batch: Mapping[str, Tensor], logits: Tensor, seen: int | None = None) -> Tensor:
        """The batch's labels; for agreement, the reference's top-1 (``logits``: the model's own, reused when it is the reference).

        ``seen``: in a test, the examples before this batch, where its slice of ``reference_preds`` starts.
        """
        if self.metric_name != "agreement":
            return batch["labels"]
        if self.reference_preds is not None and seen is not None:
            return self.reference_preds[seen : seen + len(logits)].to(logits.device)
        if self.reference is None or self.reference is self.model:
            return logits.argmax(-1)
        with torch.no_grad():
            return self.reference(batch).logits.argmax(-1)

    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        if self.mixer is not None:
            loss = self.mixed_loss(batch)
        else:
            loss = self.task_loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def mixed_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Soft-target cross-entropy on the mixed batch (its last example left out when odd: timm mixes pairs)."""
        even = len(batch["labels"]) // 2 * 2
        pixels, soft = self.mixer(batch["pixel_values"][:even], batch["labels"][:even])  # type: ignore[misc]
        return self.soft_target_loss(self({**batch, "pixel_values": pixels, "labels": batch["labels"][:even]}), soft)

    def _eval_step(self, batch: Mapping[str, Tensor], metric: torchmetrics.Metric, prefix: str, seen: int | None = None) -> tuple[Tensor, Tensor]:
        logits = self(batch)
        targets = self.targets(batch, logits, seen)
        preds = logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1)
        metric.update(preds, targets)
        self.log(f"{prefix}/{self.metric_name}", metric, prog_bar=True, batch_size=len(targets))
        return targets, preds

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric, "val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        targets, preds = self._eval_step(batch, self.test_metric, "test", sum(len(t) for t, _ in self.test_outputs))
        self.test_outputs.append((targets.detach().cpu(), preds.detach().float().cpu() if self.num_labels == 1 else preds.detach().cpu()))

    def test_predictions(self) -> tuple[Tensor, Tensor]:
        """Targets and predictions (class ids; values for one label) of every example the last test saw, in loader order."""
        if not self.test_outputs:
            raise RuntimeError("test_predictions() before a test: run trainer.test(module, ...) first")
        targets, preds = zip(*self.test_outputs)
        return torch.cat(targets), torch.cat(preds)

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: matrices with weight decay; biases, norms and token/position embeddings without."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name or "token" in name or "pos_embed" in name else decay).append(p)
        return [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, self.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate's share at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then linear or cosine decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    remaining = max(0.0, (total - step) / max(1, total - warmup))
    return 0.5 * (1 - math.cos(math.pi * remaining)) if schedule == "cosine" else remaining


def steps_for(epochs: float, batches_per_epoch: int, trainer: Any) -> int:
    """Optimizer steps (per process) for a (possibly fractional) number of epochs.

    ``trainer`` is the run's ``trainer`` config: its ``limit_train_batches`` (a
    fraction ≤ 1.0 or a count > 1 of batches per epoch) and, under DDP, its
    process count, since each process sees its share of every epoch; with
    ``accumulate_grad_batches`` one step takes that many batches.
    """
    batches = math.ceil(batches_per_epoch / process_count(trainer))
    limit = trainer.limit_train_batches
    batches = max(1, int(batches * limit)) if limit <= 1.0 else min(batches, int(limit))
    return max(1, math.ceil(epochs * batches / trainer.accumulate_grad_batches))
