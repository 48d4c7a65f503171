"""FLOPs: counted on the real model, and the analytic formula searches use.

Both count 2 FLOPs per multiply-add of the matrix products (Linear, the
patch convolution, attention scores and weighted sums) and nothing else, as
:class:`torch.utils.flop_counter.FlopCounterMode` does, so they can be checked
against each other. The analytic side prices each head and FFN neuron
separately (Kwon et al. 2022) and lets tokens leave after a layer's attention
(LTP), which is what pruning searches and token budgets need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import PatchEmbeddings, TextEmbeddings
from trimlab.models.placement import batch_for

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Scores (q·kᵀ) plus weighted sum (p·v), exactly what the explicit matmul path counts."""
    b, h, n_q, d_qk = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * n_q * n_k * (d_qk + d_v)


# torch counts SDPA only for its CUDA kernels; on CPU attention would cost nothing.
if _CPU_SDPA not in flop_registry:
    register_flop_formula(_CPU_SDPA)(_cpu_sdpa_flop)


def count_flops(model: nn.Module, batch: Mapping[str, Tensor]) -> int:
    """FLOPs of one inference forward on ``batch``, padding and all, as the hardware runs it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batch)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def attention_flops(tokens: int, hidden: int, heads: int, head_dim: int) -> int:
    """One layer's attention sublayer over ``tokens`` tokens: QKV, scores, weighted sum, output projection."""
    inner = heads * head_dim
    return 2 * (4 * tokens * hidden * inner + 2 * tokens * tokens * inner)


def ffn_flops(tokens: int, hidden: int, neurons: int) -> int:
    """One layer's FFN over ``tokens`` tokens: both projections."""
    return 2 * 2 * tokens * hidden * neurons


def head_cost(seq_len: float, hidden: int, head_dim: int) -> float:
    """FLOPs one attention head adds to a layer at sequence length ``seq_len`` (Kwon et al.)."""
    s = seq_len
    return 2 * (3 * s * hidden * head_dim + 2 * s * s * head_dim + s * head_dim * hidden)


def neuron_cost(seq_len: float, hidden: int) -> float:
    """FLOPs one FFN neuron adds to a layer at sequence length ``seq_len`` (Kwon et al.)."""
    return 2 * 2 * seq_len * hidden


def analytic_flops(
    model: TransformerClassifier,
    seq_lens: Sequence[int],
    tokens_per_layer: Sequence[Sequence[int]] | None = None,
) -> float:
    """Total FLOPs for examples of the given encoder lengths, with the model's current heads and neurons.

    ``seq_lens[b]`` is the number of tokens example ``b`` enters the encoder
    with (class token included). ``tokens_per_layer[i][b]`` is how many of
    them remain after layer ``i``'s token selection, the layout of
    ``EncoderOutput.kept_tokens``: that layer's FFN and every later layer see
    only those. Without it every layer sees ``seq_lens[b]`` tokens.
    """
    hidden = model.encoder.spec.hidden_size
    layers = model.encoder.layers
    if tokens_per_layer is not None and len(tokens_per_layer) != len(layers):
        raise ValueError(f"tokens_per_layer has {len(tokens_per_layer)} layers, the encoder has {len(layers)}")
    total = 0.0
    for b, seq_len in enumerate(seq_lens):
        tokens = int(seq_len)
        total += fixed_flops(model, tokens)
        for i, block in enumerate(layers):
            total += attention_flops(tokens, hidden, block.attn.num_heads, block.attn.head_dim)
            if tokens_per_layer is not None:
                tokens = int(tokens_per_layer[i][b])
            total += ffn_flops(tokens, hidden, block.ffn.num_neurons)
        total += sum(layer.flops(tokens) for layer in getattr(model, "class_layers", ()))  # CaiT-style models
    return total


def mean_flops_per_example(model: nn.Module, batches: Iterable[Mapping[str, Tensor]], max_batches: int) -> float:
    """Analytic FLOPs per example over real data: unpadded lengths, tokens the model actually kept.

    This is the number a FLOPs budget is judged on, so padding (an artefact of
    batching) is not charged while token pruning is credited. Models that are
    not a :class:`TransformerClassifier` (CNNs) are counted with
    :func:`count_flops` instead.
    """
    was_training = model.training
    model.eval()
    total, examples = 0.0, 0
    try:
        for batch in islice(batches, max_batches):
            batch = batch_for(model, {k: v for k, v in batch.items() if isinstance(v, Tensor)})
            if isinstance(model, TransformerClassifier):
                with torch.no_grad():
                    _, valid = model.embeddings(batch)
                    kept = model(batch).encoder.kept_tokens
                lengths = valid.sum(dim=1).tolist()
                total += analytic_flops(model, lengths, [k.tolist() for k in kept])
                examples += len(lengths)
            else:
                total += count_flops(model, batch)
                examples += next(v for v in batch.values() if isinstance(v, Tensor)).shape[0]
    finally:
        model.train(was_training)
    if examples == 0:
        raise ValueError("no examples to measure")
    return total / examples


def fixed_flops(model: TransformerClassifier, tokens: float) -> float:
    """Per-example FLOPs outside the encoder (embeddings, head) at ``tokens`` tokens: no head or neuron pruning removes them."""
    return _embedding_flops(model.embeddings, tokens) + _head_flops(model.head)


def _embedding_flops(embeddings: nn.Module, tokens: float) -> float:
    """Per-example FLOPs of the patch projection, or of ELECTRA's projection up to the hidden width; lookups cost none."""
    if isinstance(embeddings, TextEmbeddings):
        project = embeddings.project
        return 2 * tokens * project.in_features * project.out_features if project is not None else 0
    if not isinstance(embeddings, PatchEmbeddings):
        return 0
    conv = embeddings.proj
    kernel = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    return 2 * embeddings.num_patches * conv.out_channels * kernel


def _head_flops(head: ClassifierHead) -> int:
    """Per-example FLOPs of the head, which only reads the class token."""
    flops = 2 * head.classifier.in_features * head.classifier.out_features
    if isinstance(head.pre, nn.Linear):
        flops += 2 * head.pre.in_features * head.pre.out_features
    return flops


def sequence_length(model: TransformerClassifier, datamodule: Any) -> float:
    """Tokens per example that per-token costs are priced at: the mean training length (text) or the patch count + class tokens."""
    if hasattr(datamodule, "avg_train_length"):
        return datamodule.avg_train_length()
    return float(model.embeddings.num_patches + model.num_protected)
