"""MaiT's training as a LightningModule: the task recipe of the dense model, with the masks installed in the encoder."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from trimlab.methods.mait.masks import install_masks
from trimlab.training import ClassifierModule


class MaskedAttentionModule(ClassifierModule):
    """Trains ``model`` with locality masks on its attention heads (``masked_heads[l]`` heads of layer l, in ``mask_form``).

    The masks are part of the architecture, not a loss: the module installs
    them before training, so every forward (train, validation, test) sees them.
    """

    def __init__(
        self, model: nn.Module, allowed: Tensor, masked_heads: list[int], mask_form: str, num_labels: int, metric: str, **recipe: Any
    ) -> None:
        super().__init__(model, num_labels, metric, **recipe)
        install_masks(model.encoder, allowed, masked_heads, mask_form)
