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
solve fails or gives a scale beyond ±``max_scale``. Each layer's teacher and
student run once per sample batch (see :func:`tune_masks` for the memory this takes).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import lsmr
from torch import Tensor
from tqdm.auto import tqdm

from trimlab.methods.fisher_prune.search import Masks
from trimlab.models.classifier import TransformerClassifier
from trimlab.models.encoder import Block, PackedState
from trimlab.models.placement import batch_for, model_dtype, statistics_dtype

log = logging.getLogger(__name__)


@dataclass
class TuneReport:
    """How far tuning got, and why it stopped early if it did."""

    tuned_layers: int = 0
    stopped: str = ""


def solve_scales(ata: Tensor, atb: Tensor, damping: float) -> tuple[np.ndarray, bool]:
    """Solve ``ata · x = atb`` for x near 1: damped LSMR on the change from 1, as the paper does."""
    a = ata.double().cpu().numpy()
    b = atb.double().cpu().numpy() - a.sum(axis=1)
    if a.shape[0] == 1:
        return b / a[0, 0] + 1.0, bool(a[0, 0] != 0)
    result = lsmr(a, b, damp=damping, maxiter=10 * a.shape[0])
    return result[0] + 1.0, result[1] < 3


def _kept_part(block: Block, head_mask: Tensor, neuron_mask: Tensor) -> tuple[Block, Tensor, Tensor]:
    """A copy of ``block`` holding only the units the masks keep, and the masks' values on those units.

    Running it costs what the kept units cost: masked units are not computed as zeros.
    """
    device = block.attn.proj.weight.device
    heads, neurons = head_mask.nonzero().flatten(), neuron_mask.nonzero().flatten()
    part = copy.deepcopy(block)
    part.prune_heads(heads.tolist())
    part.prune_neurons(neurons.tolist())
    return part, head_mask[heads].to(device), neuron_mask[neurons].to(device)


def _first_rows(state: PackedState) -> Tensor:
    """The row of each example's first (class) token."""
    return torch.cumsum(state.lengths, 0) - state.lengths


def _stop_reason(layer: int, part: str, ok: bool, scales: np.ndarray, max_scale: float) -> str:
    """Why tuning must stop at this solve ("" when it may go on)."""
    if not ok:
        return f"layer {layer} {part}: LSMR did not converge"
    if np.abs(scales).max() > max_scale:
        return f"layer {layer} {part}: scale beyond ±{max_scale:g}"
    return ""


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

    Each layer's teacher and student halves run once per sample batch, on the
    real tokens only, with only the units their masks keep: the student's
    per-head contexts and FFN neurons are kept across the batches, so after a
    solve the layer's output is rebuilt from them instead of being rerun.
    Memory: the teacher's and the student's states of one layer plus the
    layer's kept contexts and neurons, at most about
    ``tokens × (4 · hidden + ffn_dim) × 4`` bytes (float32, ``tokens`` = the
    sample set's real tokens), plus one batch's intermediates.
    """
    model.eval()
    tuned = student.clone()
    report = TuneReport()
    stat = statistics_dtype(model_dtype(model))  # a bfloat16 model's products are taken in float32
    teacher_states: list[PackedState] = []
    for batch in batches:
        hidden, valid = model.embeddings(batch_for(model, batch))  # on the model's device, in its dtype
        teacher_states.append(PackedState.from_padded(hidden, valid.bool()))
    student_states = list(teacher_states)
    layers = model.encoder.layers
    for i, block in enumerate(tqdm(layers, desc="mask tuning", disable=not progress, leave=False)):
        last = i == len(layers) - 1
        kept_heads = tuned.heads[i].nonzero().flatten()
        kept_neurons = tuned.neurons[i].nonzero().flatten()
        teacher_part, teacher_head_values, teacher_neuron_values = _kept_part(block, teacher.heads[i], teacher.neurons[i])
        part, head_values, neuron_values = _kept_part(block, tuned.heads[i], tuned.neurons[i])

        # attention half: x + Σ_h s_h · proj_h(context_h) ≈ the teacher's x + proj(context), without the bias
        k, head_dim = len(kept_heads), part.attn.head_dim
        tune_heads = i > 0 and k > 0
        w = part.attn.proj.weight.view(part.attn.proj.out_features, k, head_dim).permute(1, 2, 0)  # [heads, head_dim, D]
        ata = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=w.device)
        atb = torch.zeros(k + 1, dtype=torch.float64, device=w.device)
        teacher_mid, contexts = [], []
        for t_state, s_state in zip(teacher_states, student_states):
            t_ctx, _ = teacher_part.attn.context(teacher_part.attention_input(t_state.hidden), t_state, teacher_head_values)
            t_attn = F.linear(t_ctx, teacher_part.attn.proj.weight)
            teacher_mid.append(t_state.with_hidden(teacher_part.after_attention(t_state.hidden, t_attn + teacher_part.attn.proj.bias)))
            ctx, _ = part.attn.context(part.attention_input(s_state.hidden), s_state, head_values)
            contexts.append(ctx)
            if tune_heads:
                per_head = torch.bmm(ctx.view(-1, k, head_dim).transpose(0, 1), w).view(k, -1).to(stat)  # [heads, tokens · D]
                rhs = (t_state.hidden + t_attn - s_state.hidden).view(-1).to(stat)
                ata[:k, :k] += (per_head @ per_head.t()).double()  # float32 (or wider) products per batch, summed in float64
                ata[:k, k] += per_head.sum(1).double()
                ata[k, k] += rhs.numel()
                atb[:k] += (per_head @ rhs).double()
                atb[k] += rhs.double().sum()
        teacher_states = teacher_mid
        if tune_heads:
            ata[k, :k] = ata[:k, k]
            scales, ok = solve_scales(ata, atb, damping)
            scales = scales[:-1]
            report.stopped = _stop_reason(i, "attention", ok, scales, max_scale)
            if report.stopped:
                break
            tuned.heads[i, kept_heads] *= torch.as_tensor(scales, dtype=tuned.heads.dtype, device=tuned.heads.device)
            head_scale = torch.as_tensor(scales, dtype=w.dtype, device=w.device).repeat_interleave(head_dim)
            for ctx in contexts:
                ctx.mul_(head_scale)
        student_states = [s.with_hidden(part.after_attention(s.hidden, part.attn.proj(c))) for s, c in zip(student_states, contexts)]
        del contexts

        # FFN half: h + Σ_n s_n · fc2_n(act_n) ≈ the teacher's h + fc2(act), without the bias
        cls_only = cls_only_last and last  # for classification the last layer only has to rebuild the class token
        w2 = part.ffn.fc2.weight  # [D, K]
        ata = torch.zeros(len(kept_neurons), len(kept_neurons), dtype=torch.float64, device=w2.device)
        atb = torch.zeros(len(kept_neurons), dtype=torch.float64, device=w2.device)
        teacher_out, activations = [], []
        for t_state, s_state in zip(teacher_states, student_states):
            t_h, s_h = t_state.hidden, s_state.hidden
            if cls_only:
                t_h, s_h = t_h[_first_rows(t_state)], s_h[_first_rows(s_state)]
            t_ffn = F.linear(teacher_part.ffn.activations(teacher_part.ffn_input(t_h), teacher_neuron_values), teacher_part.ffn.fc2.weight)
            if not last:
                teacher_out.append(t_state.with_hidden(teacher_part.after_ffn(t_h, t_ffn + teacher_part.ffn.fc2.bias)))
            acts = part.ffn.activations(part.ffn_input(s_h), neuron_values)
            activations.append(acts)
            if len(kept_neurons) > 0:
                rhs, a = (t_h + t_ffn - s_h).to(stat), acts.to(stat)
                ata += (a.t() @ a).double()  # float32 (or wider) products per batch, summed in float64
                atb += ((rhs @ w2.to(stat)) * a).sum(0).double()
        teacher_states = teacher_out
        if len(kept_neurons) > 0:
            ata *= (w2.to(stat).t() @ w2.to(stat)).double()
            scales, ok = solve_scales(ata, atb, damping)
            report.stopped = _stop_reason(i, "FFN", ok, scales, max_scale)
            if report.stopped:
                break
            tuned.neurons[i, kept_neurons] *= torch.as_tensor(scales, dtype=tuned.neurons.dtype, device=tuned.neurons.device)
            neuron_scale = torch.as_tensor(scales, dtype=w2.dtype, device=w2.device)
            for acts in activations:
                acts.mul_(neuron_scale)
        if not last:
            student_states = [
                s.with_hidden(part.after_ffn(s.hidden, part.ffn.fc2(acts))) for s, acts in zip(student_states, activations)
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
