"""A model of the user's own, as trimlab's: ``transformers`` encoder sequence classifiers and timm ViT/DeiT.

Conversion reads only the module's own config and state dict (no hub access),
through the same loaders a configured run uses (:mod:`trimlab.models.text`,
:mod:`trimlab.models.vision`), so every method sees the unified encoder it was
written for; the parity tests hold the converted logits to the source library's.
Other timm models (CNNs) are wrapped, not converted: quantization needs no encoder.
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import PreTrainedModel

from trimlab.models.classifier import TransformerClassifier
from trimlab.models.cnn import CnnClassifier
from trimlab.models.placement import model_device, model_dtype
from trimlab.models.text import MODEL_TYPES, text_classifier_from_hf
from trimlab.models.vision import vit_from_timm

CONVERTIBLE = (
    "a transformers *ForSequenceClassification of BERT (also MiniLM), RoBERTa (also XLM-RoBERTa), DistilBERT, "
    "ELECTRA or MPNet, a timm VisionTransformer (ViT, DeiT), another timm model (quantization only), "
    "or a trimlab model"
)


def to_trimlab(model: nn.Module) -> nn.Module:
    """trimlab's model of ``model``, in eval mode on ``model``'s device and in its dtype; it shares no parameter with ``model``.

    The result takes a batch mapping (``input_ids``/``attention_mask``/``token_type_ids``
    or ``pixel_values``) and returns an object with ``.logits``. Raises
    :class:`ValueError` naming what can be converted.
    """
    if isinstance(model, (TransformerClassifier, CnnClassifier)):
        return copy.deepcopy(model).eval()
    if isinstance(model, PreTrainedModel):
        converted: nn.Module = from_transformers(model)
    elif _is_timm(model):
        converted = from_timm(model)
    else:
        raise ValueError(f"model: a {type(model).__module__}.{type(model).__name__} cannot be converted; give {CONVERTIBLE}")
    return converted.to(device=model_device(model), dtype=model_dtype(model)).eval()


def from_transformers(model: PreTrainedModel) -> TransformerClassifier:
    """The unified-encoder classifier of a ``transformers`` sequence classifier of one of the text loader's families."""
    kind, model_type = type(model).__name__, getattr(model.config, "model_type", "")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model: a transformers {kind} (model_type={model_type!r}) cannot be converted; give {CONVERTIBLE}")
    if not kind.endswith("ForSequenceClassification"):
        raise ValueError(
            f"model: {kind} has no classification head; load it with "
            "transformers.AutoModelForSequenceClassification.from_pretrained(..., num_labels=N)"
        )
    try:
        return text_classifier_from_hf(model, MODEL_TYPES[model_type], model.config.num_labels)
    except ValueError as exc:
        raise ValueError(f"model: {kind} cannot be converted: {exc}") from exc


def from_timm(model: nn.Module) -> nn.Module:
    """A timm class-token ViT/DeiT in the unified encoder; any other timm model behind the batch interface."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return CnnClassifier(copy.deepcopy(model))
    try:
        return vit_from_timm(model)
    except ValueError as exc:
        raise ValueError(f"model: timm {type(model).__name__} cannot be converted: {exc}") from exc


def _is_timm(model: nn.Module) -> bool:
    """Built by timm: its modules carry ``pretrained_cfg``."""
    return type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg")
