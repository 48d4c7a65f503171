"""SaiT's dense/sparse training as a LightningModule: both paths every step, distillation into the sparse one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimlab.methods.sait.selector import SaiTSelector
from trimlab.training import ClassifierModule


class DenseSparseModule(ClassifierModule):
    """Each step: the dense path (task loss), then the sparse path at a random density (distilled task loss).

    The teacher is the dense path itself (``teacher=None``, detached: in-place
    distillation) or a frozen model of the same architecture. Besides the
    logits, the teacher's last-layer class attention is distilled into the
    class attention of the first pruning layer, the one that selects tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        num_labels: int,
        metric: str,
        cfg: Any,
        teacher: nn.Module | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            num_labels,
            metric,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio,
            label_smoothing=cfg.label_smoothing,
        )
        self.cfg = cfg
        self.teacher = teacher
        self.densities = torch.Generator().manual_seed(seed)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sait_densities"] = self.densities.get_state()  # a resumed training draws the densities an unstopped one would

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.densities.set_state(checkpoint["sait_densities"])

    @property
    def selector(self) -> SaiTSelector:
        return self.model.encoder.token_selector

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        cfg, selector, labels = self.cfg, self.selector, batch["labels"]
        last, first = len(self.model.encoder.layers) - 1, selector.prune_layers[0]
        size = len(labels)

        selector.density, selector.record_layers = None, {last}
        dense_logits = self.model(batch).logits
        dense_loss = self.task_loss(dense_logits, labels)
        if self.teacher is None:
            teacher_logits, teacher_attention = dense_logits.detach(), selector.scores[last].detach()
        else:
            teacher_logits, teacher_attention = self._teacher(batch, last)

        low, high = cfg.train_densities
        selector.density = low + (high - low) * float(torch.rand((), generator=self.densities))
        selector.record_layers = set()
        out = self.model(batch)
        sparse_loss = self.task_loss(out.logits, labels)
        if cfg.distill_weight > 0:
            t = cfg.distill_temperature
            kd = F.kl_div(F.log_softmax(out.logits / t, -1), F.log_softmax(teacher_logits / t, -1), reduction="batchmean", log_target=True)
            sparse_loss = (1 - cfg.distill_weight) * sparse_loss + cfg.distill_weight * t * t * kd
        loss = dense_loss + sparse_loss
        if cfg.selection_distill_weight > 0:
            selection = attention_kl(teacher_attention, selector.scores[first])
            loss = loss + cfg.selection_distill_weight * selection
            self.log("train/selection_kl", selection, batch_size=size)
        kept = out.encoder.kept_tokens[-1].float().mean() / out.encoder.kept_tokens[0].float().mean()
        self.log("train/kept_fraction", kept, prog_bar=True, batch_size=size)
        self.log("train/dense_loss", dense_loss, batch_size=size)
        self.log("train/sparse_loss", sparse_loss, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    @torch.no_grad()
    def _teacher(self, batch: Mapping[str, Tensor], last: int) -> tuple[Tensor, Tensor]:
        self.teacher.eval()
        recorder = self.teacher.encoder.token_selector
        recorder.density, recorder.record_layers = None, {last}
        logits = self.teacher(batch).logits
        return logits, recorder.scores[last]

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.selector.density, self.selector.record_layers = None, set()  # validate the dense path
        super().validation_step(batch, batch_idx)


def attention_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """KL(teacher ‖ student) between two ``[B, N]`` token distributions (rows summing to 1), batch mean."""
    eps = torch.finfo(student.dtype).tiny
    t = teacher.clamp_min(eps)
    return (teacher * (t.log() - student.clamp_min(eps).log())).sum(dim=1).mean()

