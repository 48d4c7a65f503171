"""Mask tuning (Kwon et al. 2022, §4.3): real-valued masks that rebuild a teacher's layer outputs.

Layer by layer, the kept heads' (then the kept neurons') mask values are
solved by linear least squares so that the pruned layer's pre-LayerNorm sum
matches a teacher's on the sample set (padding removed). The teacher is the
same network under a milder mask (the first step of a geometric pruning
schedule), which the paper found to reconstruct better than the dense model
itself. Each student layer is fed the student's own (already tuned) outputs.
As in the paper: the normal equations are solved by damped LSMR for the change
from 1 (given 10× the default iteration cap, which the small systems sometimes
need to converge); the first layer's attention is not tuned; for classification the
last FFN only rebuilds the class token; tuning stops at the first layer whose
solve fails or gives a scale beyond ±``max_scale``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import lsmr
from torch import Tensor
from tqdm.auto import tqdm

from trimlab.methods.fisher_prune.search import Masks
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.encoder import Block, TokenState
from trimlab.models.placement import batch_for, model_device, model_dtype, statistics_dtype

log = logging.getLogger(__name__)


@dataclass
class TuneReport:
    """How far tuning got, and why it stopped early if it did."""

    tuned_layers: int = 0
    stopped: str = ""


@dataclass
class _Captured:
    block_input: Tensor
    context: Tensor
    ffn_residual: Tensor
    ffn_hidden: Tensor


def solve_scales(ata: Tensor, atb: Tensor, damping: float) -> tuple[np.ndarray, bool]:
    """Solve ``ata · x = atb`` for x near 1: damped LSMR on the change from 1, as the paper does."""
    a = ata.double().cpu().numpy()
    b = atb.double().cpu().numpy() - a.sum(axis=1)
    if a.shape[0] == 1:
        return b / a[0, 0] + 1.0, bool(a[0, 0] != 0)
    result = lsmr(a, b, damp=damping, maxiter=10 * a.shape[0])
    return result[0] + 1.0, result[1] < 3


def _run_block(
    block: Block, state: TokenState, layer: int, heads: Tensor, neurons: Tensor, num_protected: int
) -> tuple[TokenState, _Captured]:
    """Run one block under masks and capture what the least-squares problems read."""
    seen: dict[str, Tensor] = {}
    ffn_residual_module = block.norm2 if block.norm_first else block.ffn
    hooks = [
        block.attn.proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("context", a[0])),
        block.ffn.fc2.register_forward_pre_hook(lambda m, a: seen.__setitem__("ffn_hidden", a[0])),
        ffn_residual_module.register_forward_pre_hook(lambda m, a: seen.__setitem__("ffn_residual", a[0])),
    ]
    try:
        out = block(state, layer, heads, neurons, None, num_protected, True)
    finally:
        for hook in hooks:
            hook.remove()
    return out, _Captured(state.hidden, seen["context"], seen["ffn_residual"], seen["ffn_hidden"])


def _ffn_output(block: Block, residual: Tensor, hidden: Tensor, neuron_mask: Tensor) -> Tensor:
    """The block's output from its captured FFN inputs under a new neuron mask, without rerunning attention.

    ``hidden`` was captured under a 0/1 mask, so scaling it by the new mask
    gives the new masked activations; the rest is :class:`Block`'s FFN half.
    """
    out = residual + torch.nn.functional.linear(hidden * neuron_mask.to(hidden.dtype), block.ffn.fc2.weight, block.ffn.fc2.bias)
    return out if block.norm_first else block.norm2(out)


def _rows(x: Tensor, valid: Tensor, cls_only: bool) -> Tensor:
    """Real tokens only (or the class token only), flattened to ``[tokens, D]``."""
    return x[:, 0] if cls_only else x[valid]


@torch.no_grad()
def tune_masks(
    model: TransformerClassifier,
    batches: Iterable[Mapping[str, Tensor]],
    student: Masks,
    teacher: Masks,
    damping: float = 1.0,
    max_scale: float = 10.0,
    cls_only_last: bool = True,
    progress: bool = True,
) -> tuple[Masks, TuneReport]:
    """Tuned copies of the ``student`` masks; the model's weights are not changed.

    The model computes in its own dtype; the least-squares products are taken in
    at least float32 (:func:`~trimlab.models.placement.statistics_dtype`) and summed in float64.
    """
    model.eval()
    device, dtype = model_device(model), statistics_dtype(model_dtype(model))
    tuned = student.clone()
    report = TuneReport()
    num_protected = model.num_protected
    teacher_states, student_states = [], []
    for batch in batches:
        hidden, valid = model.embeddings(batch_for(model, batch))
        positions = torch.arange(hidden.shape[1], device=device).expand(hidden.shape[0], -1)
        teacher_states.append(TokenState(hidden, valid.bool(), positions))
        student_states.append(TokenState(hidden, valid.bool(), positions))
    layers = model.encoder.layers
    for i, block in enumerate(tqdm(layers, desc="mask tuning", disable=not progress, leave=False)):
        attn, fc2 = block.attn, block.ffn.fc2
        cls_only = cls_only_last and i == len(layers) - 1
        kept_heads = tuned.heads[i].nonzero().flatten()
        kept_neurons = tuned.neurons[i].nonzero().flatten()
        attn_targets, ffn_targets, next_teacher = [], [], []
        for state in teacher_states:
            out, cap = _run_block(block, state, i, teacher.heads[i], teacher.neurons[i], num_protected)
            attn_targets.append(_rows(cap.block_input + torch.nn.functional.linear(cap.context, attn.proj.weight), state.valid, False))
            ffn_targets.append(_rows(cap.ffn_residual + torch.nn.functional.linear(cap.ffn_hidden, fc2.weight), state.valid, cls_only))
            next_teacher.append(out)
        teacher_states = next_teacher

        if i > 0 and len(kept_heads) > 0:
            k = len(kept_heads)
            ata = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=device)
            atb = torch.zeros(k + 1, dtype=torch.float64, device=device)
            w = attn.proj.weight.view(attn.proj.out_features, attn.num_heads, attn.head_dim)[:, kept_heads].to(dtype)
            for state, target in zip(student_states, attn_targets):
                _, cap = _run_block(block, state, i, tuned.heads[i], tuned.neurons[i], num_protected)
                ctx = _rows(cap.context, state.valid, False).view(-1, attn.num_heads, attn.head_dim)[:, kept_heads].to(dtype)
                per_head = torch.einsum("thk,dhk->thd", ctx, w)  # [tokens, heads, D]
                rhs = (target - _rows(cap.block_input, state.valid, False)).to(dtype)
                ata[:k, :k] += torch.einsum("thd,tgd->hg", per_head, per_head).double()
                ata[:k, k] += per_head.sum(dim=(0, 2)).double()
                ata[k, k] += rhs.numel()
                atb[:k] += torch.einsum("thd,td->h", per_head, rhs).double()
                atb[k] += rhs.double().sum()
            ata[k, :k] = ata[:k, k]
            scales, ok = solve_scales(ata, atb, damping)
            scales = scales[:-1]
            if not ok or np.abs(scales).max() > max_scale:
                report.stopped = f"layer {i} attention: {'LSMR did not converge' if not ok else 'scale beyond ±%g' % max_scale}"
                break
            tuned.heads[i, kept_heads] *= torch.as_tensor(scales, dtype=tuned.heads.dtype, device=tuned.heads.device)

        if len(kept_neurons) > 0:
            w2 = fc2.weight[:, kept_neurons].to(dtype)  # [D, K]
            ata = torch.zeros(len(kept_neurons), len(kept_neurons), dtype=torch.float64, device=device)
            atb = torch.zeros(len(kept_neurons), dtype=torch.float64, device=device)
            ffn_inputs = []
            for state, target in zip(student_states, ffn_targets):
                _, cap = _run_block(block, state, i, tuned.heads[i], tuned.neurons[i], num_protected)
                ffn_inputs.append((cap.ffn_residual, cap.ffn_hidden))
                acts = _rows(cap.ffn_hidden, state.valid, cls_only)[:, kept_neurons].to(dtype)
                rhs = (target - _rows(cap.ffn_residual, state.valid, cls_only)).to(dtype)
                ata += (acts.t() @ acts).double()  # float32 (or float64) products per batch, summed in float64
                atb += ((rhs @ w2) * acts).sum(0).double()
            ata *= (w2.t() @ w2).double()
            scales, ok = solve_scales(ata, atb, damping)
            if not ok or np.abs(scales).max() > max_scale:
                report.stopped = f"layer {i} FFN: {'LSMR did not converge' if not ok else 'scale beyond ±%g' % max_scale}"
                break
            tuned.neurons[i, kept_neurons] *= torch.as_tensor(scales, dtype=tuned.neurons.dtype, device=tuned.neurons.device)
            student_states = [
                TokenState(_ffn_output(block, residual, hidden, tuned.neurons[i]), state.valid, state.positions)
                for state, (residual, hidden) in zip(student_states, ffn_inputs)
            ]
        else:
            student_states = [
                block(state, i, tuned.heads[i], tuned.neurons[i], None, num_protected, True) for state in student_states
            ]
        report.tuned_layers = i + 1
    if report.stopped:
        log.warning("mask tuning stopped at %s; later layers keep binary masks", report.stopped)
    return tuned, report


@torch.no_grad()
def fold_masks(model: TransformerClassifier, masks: Masks) -> None:
    """Multiply real-valued masks into the output projections, then physically remove the zeroed units."""
    for i, block in enumerate(model.encoder.layers):
        attn = block.attn
        head_scale = masks.heads[i, : attn.num_heads].repeat_interleave(attn.head_dim)
        attn.proj.weight.mul_(head_scale.to(attn.proj.weight.dtype))
        block.ffn.fc2.weight.mul_(masks.neurons[i, : block.ffn.num_neurons].to(block.ffn.fc2.weight.dtype))
    heads, neurons = masks.heads != 0, masks.neurons != 0
    model.encoder.prune(
        [row.nonzero().flatten().tolist() for row in heads], [row.nonzero().flatten().tolist() for row in neurons]
    )
