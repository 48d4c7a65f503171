"""timm ViT/DeiT (class-token, non-distilled) weights, or a from-scratch ViT, in the unified encoder.

timm's blocks are pre-norm with a fused ``qkv`` already laid out as
``[q-heads; k-heads; v-heads]``, so conversion is a renaming; the final ``norm``
becomes the head's LayerNorm (applied to the class token only, which is the
same since LayerNorm is per token).
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
from omegaconf import DictConfig
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from trimlab.config import ConfigError
from trimlab.models.class_attention import CaiTClassifier, ClassAttentionBlock
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import PatchEmbeddings
from trimlab.models.encoder import Encoder, EncoderSpec
from trimlab.models.weight_sources import load_timm_file


def vit_classifier(
    image_size: int,
    patch_size: int,
    in_chans: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    ffn_dim: int,
    num_labels: int,
    dropout: float = 0.0,
    layer_norm_eps: float = 1e-6,
    head_dim: int | None = None,
    class_attention_layers: int = 0,
) -> TransformerClassifier:
    """A randomly initialised ViT (timm-style init: truncated normal 0.02 Linear weights, zero biases).

    ``class_attention_layers > 0`` makes it CaiT-style: the class token skips the
    ``num_layers`` self-attention layers and joins in that many class-attention layers.
    """
    spec = EncoderSpec(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        ffn_dim=ffn_dim,
        norm_first=True,
        layer_norm_eps=layer_norm_eps,
        activation="gelu",
        attention_dropout=dropout,
        hidden_dropout=dropout,
        head_dim=head_dim,
    )
    embeddings = PatchEmbeddings(image_size, patch_size, in_chans, hidden_size, dropout, class_token=not class_attention_layers)
    head = ClassifierHead(hidden_size, num_labels, "layernorm", dropout, layer_norm_eps=layer_norm_eps)
    if class_attention_layers:
        blocks = [ClassAttentionBlock(hidden_size, num_heads, ffn_dim, layer_norm_eps) for _ in range(class_attention_layers)]
        model: TransformerClassifier = CaiTClassifier(embeddings, Encoder(spec), blocks, head)
    else:
        model = TransformerClassifier(embeddings, Encoder(spec), head)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _init_linear(module)
    return model


def load_timm_vit_state_dict(model: TransformerClassifier, state_dict: Mapping[str, Tensor]) -> None:
    """Copy a timm VisionTransformer state dict into ``model`` (all keys must map, all shapes match)."""
    renames = [
        ("patch_embed.proj.", "embeddings.proj."),
        ("cls_token", "embeddings.cls_token"),
        ("pos_embed", "embeddings.pos_embed"),
        ("blocks.", "encoder.layers."),
        ("norm.", "head.pre."),
        ("head.", "head.classifier."),
    ]
    inner = [(".mlp.fc1.", ".ffn.fc1."), (".mlp.fc2.", ".ffn.fc2.")]
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key
        for theirs, ours in renames:
            if key.startswith(theirs):
                new = ours + key[len(theirs) :]
                break
        for theirs, ours in inner:
            new = new.replace(theirs, ours)
        mapped[new] = value
    model.load_state_dict(mapped, strict=True)


def vit_from_timm(net: nn.Module, num_labels: int | None = None, dropout: float = 0.0) -> TransformerClassifier:
    """Convert a timm class-token ViT/DeiT module.

    A ``num_labels`` other than the module's gets a fresh classifier; None or 0 keeps its own.
    """
    _check_supported(net)
    attn, mlp = net.blocks[0].attn, net.blocks[0].mlp
    model = vit_classifier(
        image_size=net.patch_embed.img_size[0],
        patch_size=net.patch_embed.patch_size[0],
        in_chans=net.patch_embed.proj.in_channels,
        hidden_size=net.embed_dim,
        num_layers=len(net.blocks),
        num_heads=attn.num_heads,
        ffn_dim=mlp.fc1.out_features,
        num_labels=net.num_classes,
        dropout=dropout,
        layer_norm_eps=net.blocks[0].norm1.eps,
        head_dim=attn.head_dim,
    )
    model.head.pre.eps = net.norm.eps
    load_timm_vit_state_dict(model, net.state_dict())
    if num_labels and num_labels != net.num_classes:
        model.head.classifier = _init_linear(nn.Linear(net.embed_dim, num_labels))
    return model


def build_vit(cfg: DictConfig, num_labels: int) -> TransformerClassifier:
    """The ViT of a ``VitModelConfig``: timm pretrained (``hub``), a timm state-dict ``file``, or ``scratch``."""
    if cfg.weights == "scratch":
        return vit_classifier(
            cfg.image_size,
            cfg.patch_size,
            cfg.in_chans,
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.ffn_dim,
            num_labels,
            dropout=cfg.dropout,
            class_attention_layers=cfg.class_attention_layers,
        )
    if cfg.class_attention_layers:
        raise ConfigError(f"model.class_attention_layers={cfg.class_attention_layers} (CaiT-style) is trained from scratch; set model.weights=scratch")
    if not cfg.timm_name:
        raise ConfigError(f"model.timm_name is empty; weights={cfg.weights} needs a timm model name")
    if cfg.weights == "hub":
        try:
            net = timm.create_model(cfg.timm_name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 — unknown name, no network and bad cache all need the same fix
            raise ConfigError(
                f"could not load timm {cfg.timm_name!r} with pretrained weights: {exc}. "
                "Check model.timm_name and network access, or use model.weights=file model.path=<state dict>."
            ) from exc
    elif cfg.weights == "file":
        net = timm.create_model(cfg.timm_name, pretrained=False)
        load_timm_file(net, cfg.path, cfg.timm_name)
    else:
        raise ConfigError(f"model.weights={cfg.weights!r} is not one of hub, file, scratch for a ViT")
    if net.patch_embed.img_size[0] != cfg.image_size:
        raise ConfigError(f"model.image_size={cfg.image_size} but {cfg.timm_name} takes {net.patch_embed.img_size[0]}")
    try:
        return vit_from_timm(net, num_labels, dropout=cfg.dropout)
    except ValueError as exc:
        raise ConfigError(f"timm model {cfg.timm_name!r} cannot be converted: {exc}") from exc


def _check_supported(net: nn.Module) -> None:
    """Reject timm ViT variants whose forward differs from ours (distilled, register tokens, GAP, layer scale…)."""
    if not isinstance(net, VisionTransformer):
        raise ValueError(f"{type(net).__name__} is not a timm VisionTransformer")
    problems = []
    if not net.has_class_token or net.num_prefix_tokens != 1:
        problems.append(f"{net.num_prefix_tokens} prefix tokens (distilled or register tokens)")
    if net.global_pool != "token":
        problems.append(f"global_pool={net.global_pool!r}")
    if net.no_embed_class or net.dynamic_img_size:
        problems.append("position embedding without class slot or dynamic image size")
    extra = [net.norm_pre, net.fc_norm, net.patch_embed.norm]
    for block in net.blocks:
        extra += [block.ls1, block.ls2, block.attn.q_norm, block.attn.k_norm, block.attn.norm, block.mlp.norm]
        if not isinstance(block.mlp.act, nn.GELU) or block.mlp.act.approximate != "none":
            problems.append(f"MLP activation {block.mlp.act}")
    if any(not isinstance(m, nn.Identity) for m in extra) or getattr(net, "attn_pool", None) is not None:
        problems.append("extra norms, layer scale or attention pooling")
    if problems:
        raise ValueError("unsupported ViT variant: " + "; ".join(dict.fromkeys(problems)))


def _init_linear(linear: nn.Linear) -> nn.Linear:
    nn.init.trunc_normal_(linear.weight, std=0.02)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear
