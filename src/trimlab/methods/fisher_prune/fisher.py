"""Empirical Fisher information of the head and neuron masks (Kwon et al. 2022, §4.1).

With every mask at 1, the gradient of the task loss with respect to a mask
variable tells how much the loss moves when that head or neuron is scaled.
Summing squared per-mini-batch gradients gives the diagonal of the empirical
Fisher, the importance the search ranks by; the per-batch gradients themselves
are kept because mask rearrangement needs their within-layer correlations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from trimlab.models.classifier import TransformerClassifier
from trimlab.models.placement import batch_for, model_device, model_dtype, statistics_dtype


@dataclass
class MaskGradients:
    """Per-mini-batch gradients of the task loss w.r.t. all-ones masks."""

    heads: Tensor
    """``[batches, layers, heads]``."""
    neurons: Tensor
    """``[batches, layers, ffn]``."""

    def head_importance(self) -> Tensor:
        return fisher_importance(self.heads)

    def neuron_importance(self) -> Tensor:
        return fisher_importance(self.neurons)


class NonFiniteFisher(RuntimeError):
    """A mask gradient is NaN or infinite: a search ranking by it would prune at random, so the method stops."""


def fisher_importance(grads: Tensor) -> Tensor:
    """Diagonal empirical Fisher: the squared gradients summed over mini-batches."""
    return grads.pow(2).sum(dim=0)


def task_loss(logits: Tensor, batch: Mapping[str, Tensor], num_labels: int) -> Tensor:
    """The loss the model was trained with; unlabelled batches use the model's own predictions as labels."""
    logits = logits.to(statistics_dtype(logits.dtype))  # a 16-bit model's loss in float32
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), batch["labels"].to(logits.dtype))
    labels = batch["labels"] if "labels" in batch else logits.detach().argmax(-1)
    return F.cross_entropy(logits, labels)


def collect_mask_gradients(
    model: TransformerClassifier, batches: Iterable[Mapping[str, Tensor]], num_labels: int, progress: bool = True
) -> MaskGradients:
    """Backpropagate the task loss of every sample batch to the masks only (weights stay frozen)."""
    encoder = model.encoder
    device, dtype = model_device(model), statistics_dtype(model_dtype(model))  # the encoder casts the masks to its dtype
    head_mask = torch.ones(len(encoder.layers), max(encoder.heads_per_layer), device=device, dtype=dtype, requires_grad=True)
    neuron_mask = torch.ones(len(encoder.layers), max(encoder.neurons_per_layer), device=device, dtype=dtype, requires_grad=True)
    was_training = model.training
    needs_grad = [p for p in model.parameters() if p.requires_grad]
    model.eval().requires_grad_(False)
    head_grads, neuron_grads = [], []
    try:
        for batch in tqdm(batches, desc="Fisher", disable=not progress, leave=False):
            batch = batch_for(model, batch)
            logits = model(batch, head_mask=head_mask, neuron_mask=neuron_mask).logits
            loss = task_loss(logits, batch, num_labels)
            h, n = torch.autograd.grad(loss, (head_mask, neuron_mask))
            _check_finite(model, len(head_grads), loss, h, n)
            head_grads.append(h)
            neuron_grads.append(n)
    finally:
        model.train(was_training)
        for p in needs_grad:
            p.requires_grad_(True)
    return MaskGradients(torch.stack(head_grads), torch.stack(neuron_grads))


def _check_finite(model: TransformerClassifier, batch_index: int, loss: Tensor, heads: Tensor, neurons: Tensor) -> None:
    """Raise :class:`NonFiniteFisher` naming the first layer whose mask gradient is not finite, and why where it can tell."""
    for kind, grads in (("heads", heads), ("neurons", neurons)):
        bad_layers = (~torch.isfinite(grads)).any(dim=1).nonzero()
        if len(bad_layers) == 0:
            continue
        weight = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
        if weight is not None:
            cause = f"the weight {weight} holds NaN or inf"
        elif not torch.isfinite(loss):
            cause = f"the loss is {loss.item():g}"
        else:
            cause = "the gradients overflow"
        raise NonFiniteFisher(
            f"Fisher information of layer {int(bad_layers[0])}'s {kind} is not finite on sample batch {batch_index} ({cause}): "
            "check the model (a fine-tuning that diverged: lower its learning rate, finetune.lr) and the sample data "
            "(NaN or inf inputs or labels)"
        )
