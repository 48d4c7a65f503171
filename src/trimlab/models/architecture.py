"""A model's architecture as data, read off the model itself: what rebuilds a model that has no trimlab config.

A model that ``trimlab.compress`` converted (a ``transformers`` or timm model)
was never built from a model config, so its saved form cannot name one. It
stores instead the sizes of its parts: the text or patch embeddings, the
encoder's :class:`~trimlab.models.encoder.EncoderSpec`, the head; or, for a
CNN, timm's architecture name (or the small CNN's channels). Rebuilding reads
no external file or weights: the skeleton is filled by the saved state dict.
The stored dict is data, so it is read back on these schemas only, which
reject unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from trimlab.config import ConfigError
from trimlab.models.class_attention import CaiTClassifier
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.cnn import CnnClassifier, small_cnn
from trimlab.models.embeddings import PatchEmbeddings, TextEmbeddings
from trimlab.models.encoder import Encoder, EncoderSpec
from trimlab.models.vision import vit_classifier

KINDS = ("text", "vit", "timm_cnn", "small_cnn")
HEAD_KINDS = ("tanh_dense", "relu_dense", "gelu_dense", "layernorm", "none")
ACTIVATIONS = ("gelu", "gelu_tanh")


@dataclass
class EncoderShape:
    """:class:`EncoderSpec`'s fields, typed for reading back (the spec before any pruning)."""

    num_layers: int = 1
    hidden_size: int = 1
    num_heads: int = 1
    ffn_dim: int = 1
    norm_first: bool = False
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    head_dim: Optional[int] = None  # noqa: UP045 — OmegaConf reads Optional, not `int | None`
    relative_buckets: int = 0
    packed: bool = True
    """The encoder's layout (``encoder.packed``)."""


@dataclass
class Architecture:
    """What rebuilds the model: ``kind`` picks which of the fields below are read."""

    kind: str = "text"
    """``text`` / ``vit``: embeddings + encoder + head; ``timm_cnn``: timm's ``timm_name``; ``small_cnn``: ``channels``."""
    num_labels: int = 1
    encoder: EncoderShape = field(default_factory=EncoderShape)
    head: str = "tanh_dense"
    """The layer before the classifier (:class:`ClassifierHead`'s ``pre``)."""
    head_eps: float = 1e-6
    # text embeddings
    vocab_size: int = 1
    max_positions: int = 1
    type_vocab_size: int = 0
    pad_token_id: int = 0
    padding_positions: bool = False
    embedding_size: int = 0
    """ELECTRA's narrower embedding width (0: the hidden size)."""
    embedding_eps: float = 1e-12
    # images
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    class_token: bool = True
    class_attention_layers: int = 0
    """CaiT-style class-attention layers after the encoder (their sizes are the encoder's)."""
    timm_name: str = ""
    batchnorm_eps: float = 1e-5
    channels: list[int] = field(default_factory=list)


def describe(model: nn.Module) -> dict[str, Any]:
    """The :class:`Architecture` of a trimlab model, as a plain dict; a model of no known shape is a ValueError."""
    if isinstance(model, CnnClassifier):
        return dataclasses.asdict(_describe_cnn(model.net))
    if not isinstance(model, TransformerClassifier):
        raise ValueError(f"a {type(model).__name__} is not a trimlab model; convert it with trimlab.models.convert.to_trimlab")
    spec = dataclasses.asdict(model.encoder.spec)
    arch = Architecture(
        num_labels=model.head.classifier.out_features,
        encoder=EncoderShape(**spec, packed=model.encoder.packed),
        head=model.head.pre_kind,
        head_eps=model.head.pre.eps if isinstance(model.head.pre, nn.LayerNorm) else 1e-6,
    )
    emb = model.embeddings
    if isinstance(emb, TextEmbeddings):
        return dataclasses.asdict(
            dataclasses.replace(
                arch,
                kind="text",
                vocab_size=emb.word.num_embeddings,
                max_positions=emb.position.num_embeddings,
                type_vocab_size=0 if emb.token_type is None else emb.token_type.num_embeddings,
                pad_token_id=emb.pad_token_id,
                padding_positions=emb.padding_positions,
                embedding_size=emb.word.embedding_dim if emb.project is not None else 0,
                embedding_eps=emb.norm.eps,
            )
        )
    if not isinstance(emb, PatchEmbeddings):
        raise ValueError(f"a model with {type(emb).__name__} embeddings has no stored form (trimlab.models.architecture)")
    arch = dataclasses.replace(
        arch,
        kind="vit",
        image_size=emb.grid * emb.proj.kernel_size[0],
        patch_size=emb.proj.kernel_size[0],
        in_chans=emb.proj.in_channels,
        class_token=emb.cls_token is not None,
    )
    if isinstance(model, CaiTClassifier):
        arch = dataclasses.replace(arch, class_attention_layers=len(model.class_layers))
    return dataclasses.asdict(arch)


def _describe_cnn(net: nn.Module) -> Architecture:
    norms = {m.eps for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if len(norms) > 1:
        raise ValueError(f"the CNN's BatchNorms have {len(norms)} different eps values; its architecture has no stored form")
    eps = norms.pop() if norms else 1e-5
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    config = getattr(net, "pretrained_cfg", None)
    if isinstance(config, dict) and config.get("architecture"):
        chans, side = config.get("input_size", (3, 224, 224))[0], config.get("input_size", (3, 224, 224))[-1]
        return Architecture(kind="timm_cnn", timm_name=config["architecture"], num_labels=net.num_classes,
                            in_chans=convs[0].in_channels if convs else chans, image_size=side, batchnorm_eps=eps)  # fmt: skip
    if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear):  # trimlab's small_cnn
        # it pools adaptively, so takes any image size: 32 (the digits') is only the export's example
        return Architecture(kind="small_cnn", channels=[c.out_channels for c in convs], in_chans=convs[0].in_channels,
                            num_labels=net[-1].out_features, batchnorm_eps=eps, image_size=32)  # fmt: skip
    raise ValueError(f"the CNN {type(net).__name__} is neither a timm model nor trimlab's small CNN; it has no stored form")


def read_architecture(data: Any) -> Architecture:
    """The stored dict on :class:`Architecture`'s schema; an unknown key, a wrong type or kind is a :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"architecture is a {type(data).__name__}, not a mapping")
    try:
        arch = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Architecture), data))
    except OmegaConfBaseException as err:
        raise ConfigError(f"architecture.{getattr(err, 'full_key', '') or ''} does not fit: {str(err).splitlines()[0]}") from err
    assert isinstance(arch, Architecture)
    named = (("kind", arch.kind, KINDS), ("head", arch.head, HEAD_KINDS), ("encoder.activation", arch.encoder.activation, ACTIVATIONS))
    for key, value, known in named:
        if value not in known:
            raise ConfigError(f"architecture.{key}={value!r} is not one of {', '.join(known)}")
    return arch


def build_architecture(arch: Architecture) -> nn.Module:
    """A freshly initialised model of ``arch`` (its weights are the caller's to load)."""
    if arch.kind == "timm_cnn":
        import timm

        net = timm.create_model(arch.timm_name, pretrained=False, num_classes=arch.num_labels, in_chans=arch.in_chans)
        return CnnClassifier(_with_batchnorm_eps(net, arch.batchnorm_eps))
    if arch.kind == "small_cnn":
        return CnnClassifier(_with_batchnorm_eps(small_cnn(arch.in_chans, arch.channels, arch.num_labels), arch.batchnorm_eps))
    shape = dataclasses.asdict(arch.encoder)
    packed = shape.pop("packed")
    spec = EncoderSpec(**shape)
    if arch.kind == "vit":
        model = vit_classifier(
            arch.image_size, arch.patch_size, arch.in_chans, spec.hidden_size, spec.num_layers, spec.num_heads, spec.ffn_dim,
            arch.num_labels, dropout=spec.hidden_dropout, layer_norm_eps=spec.layer_norm_eps, head_dim=spec.head_dim,
            class_attention_layers=arch.class_attention_layers,
        )  # fmt: skip
        model.encoder = Encoder(spec)  # the spec's dropouts and activation, as saved
        model.head.pre.eps = arch.head_eps
    else:
        embeddings = TextEmbeddings(
            arch.vocab_size, spec.hidden_size, arch.max_positions, arch.type_vocab_size, arch.embedding_eps, spec.hidden_dropout,
            pad_token_id=arch.pad_token_id, padding_positions=arch.padding_positions, embedding_size=arch.embedding_size or None,
        )  # fmt: skip
        head = ClassifierHead(spec.hidden_size, arch.num_labels, arch.head, spec.hidden_dropout, layer_norm_eps=arch.head_eps)
        model = TransformerClassifier(embeddings, Encoder(spec), head)
    model.encoder.packed = packed
    return model


def _with_batchnorm_eps(net: nn.Module, eps: float) -> nn.Module:
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
    return net
