"""FLOPs (counted vs analytic), latency and size measurements on small random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trimlab.measure.flops import (
    analytic_flops,
    attention_flops,
    count_flops,
    ffn_flops,
    head_cost,
    mean_flops_per_example,
    neuron_cost,
)
from trimlab.measure.latency import compare_latency, measure_latency
from trimlab.measure.size import count_params, model_size_bytes
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import PatchEmbeddings, TextEmbeddings
from trimlab.models.encoder import PROBABILITIES, Encoder, EncoderSpec

HIDDEN, HEADS, FFN, LAYERS = 32, 4, 64, 3

# A layer pruned to zero heads holds zero-element Linear weights; torch warns when creating them.
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


def bert_like() -> TransformerClassifier:
    torch.manual_seed(0)
    spec = EncoderSpec(num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, ffn_dim=FFN, norm_first=False)
    embeddings = TextEmbeddings(100, HIDDEN, 64, type_vocab_size=2, layer_norm_eps=1e-12, dropout=0.0)
    return TransformerClassifier(embeddings, Encoder(spec), ClassifierHead(HIDDEN, 3, "tanh_dense", 0.0))


def vit_like() -> TransformerClassifier:
    torch.manual_seed(0)
    spec = EncoderSpec(
        num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, ffn_dim=FFN, norm_first=True, layer_norm_eps=1e-6
    )
    embeddings = PatchEmbeddings(image_size=32, patch_size=8, in_chans=3, hidden_size=HIDDEN)
    return TransformerClassifier(embeddings, Encoder(spec), ClassifierHead(HIDDEN, 10, "layernorm", 0.0))


def text_batch(lengths: list[int], padded: int) -> dict[str, Tensor]:
    ids = torch.randint(1, 100, (len(lengths), padded))
    mask = (torch.arange(padded)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def image_batch(size: int) -> dict[str, Tensor]:
    return {"pixel_values": torch.randn(size, 3, 32, 32)}


def model_and_batch(kind: str, size: int = 2) -> tuple[TransformerClassifier, dict[str, Tensor], int]:
    """A model in the padded layout, a batch and the encoder length every example of it runs at (padding included)."""
    if kind == "bert":
        model, batch, padded = bert_like(), text_batch([12, 7, 3][:size], padded=12), 12
    else:
        model, batch, padded = vit_like(), image_batch(size), 17
    model.encoder.packed = False
    return model, batch, padded


def prune(model: TransformerClassifier) -> None:
    """Uneven structural pruning, with one layer left without heads."""
    model.encoder.prune(heads_to_keep=[[0, 2], [], [1, 2, 3]], neurons_to_keep=[range(10), range(33), [5]])


class DropHalf:
    """Keeps, at one layer, the tokens receiving at least the median attention."""

    reads = PROBABILITIES

    def __init__(self, layer: int) -> None:
        self.layer = layer

    def selects_at(self, layer: int) -> bool:
        return layer == self.layer

    def __call__(self, layer: int, attn_probs: Tensor, valid: Tensor) -> Tensor:
        received = attn_probs.mean(dim=(1, 2))
        return received >= received.median(dim=1, keepdim=True).values


class KeepAll(DropHalf):
    """Selects at every layer (forcing explicit attention probabilities) but keeps every token."""

    def selects_at(self, layer: int) -> bool:
        return True

    def __call__(self, layer: int, attn_probs: Tensor, valid: Tensor) -> None:
        return None


def test_counter_counts_cpu_sdpa_like_explicit_matmuls() -> None:
    b, h, nq, nk, dh = 2, 3, 5, 7, 8
    q, k, v = torch.randn(b, h, nq, dh), torch.randn(b, h, nk, dh), torch.randn(b, h, nk, dh)

    class Sdpa(nn.Module):
        def forward(self, batch: dict[str, Tensor]) -> Tensor:
            return F.scaled_dot_product_attention(batch["q"], batch["k"], batch["v"])

    class Explicit(nn.Module):
        def forward(self, batch: dict[str, Tensor]) -> Tensor:
            return (batch["q"] @ batch["k"].transpose(-2, -1)).softmax(-1) @ batch["v"]

    qkv = {"q": q, "k": k, "v": v}
    assert count_flops(Sdpa(), qkv) == count_flops(Explicit(), qkv) == 4 * b * h * nq * nk * dh


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_encoder_sdpa_and_probability_paths_count_the_same(kind: str) -> None:
    model, batch, _ = model_and_batch(kind)
    sdpa = count_flops(model, batch)
    model.encoder.token_selector = KeepAll(0)
    assert count_flops(model, batch) == sdpa


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_analytic_matches_counter(kind: str, pruned: bool) -> None:
    model, batch, padded = model_and_batch(kind, size=3)
    if pruned:
        prune(model)
        assert model.encoder.heads_per_layer == [2, 0, 3]
    counted = count_flops(model, batch)
    assert analytic_flops(model, [padded] * 3) == pytest.approx(counted, rel=0.01)
    assert all(p.requires_grad for p in model.parameters())


def test_packed_layout_charges_real_tokens_except_in_the_attention_product() -> None:
    """Packed, every position-wise layer runs on the 12 + 7 + 3 real tokens; scores and weighted sums on the batch view."""
    model, batch, padded = model_and_batch("bert", size=3)
    padded_count = count_flops(model, batch)
    model.encoder.packed = True
    lengths, inner = [12, 7, 3], HEADS * (HIDDEN // HEADS)
    attention_padding = LAYERS * sum(2 * 2 * (padded**2 - n**2) * inner for n in lengths)
    assert count_flops(model, batch) == pytest.approx(analytic_flops(model, lengths) + attention_padding, rel=1e-6)
    assert count_flops(model, batch) < padded_count


def test_pruning_lowers_flops_by_the_removed_units() -> None:
    model, batch, padded = model_and_batch("bert")
    dense = count_flops(model, batch)
    prune(model)
    removed_heads, removed_neurons = 3 * HEADS - 5, 3 * FFN - 44
    saved = removed_heads * head_cost(padded, HIDDEN, HIDDEN // HEADS) + removed_neurons * neuron_cost(padded, HIDDEN)
    assert dense - count_flops(model, batch) == pytest.approx(len(batch["input_ids"]) * saved, rel=0.01)


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_analytic_follows_dropped_tokens(kind: str) -> None:
    model, batch, padded = model_and_batch(kind, size=1)
    dense = analytic_flops(model, [padded])
    model.encoder.token_selector = DropHalf(layer=1)
    with torch.no_grad():
        model.eval()
        kept = [k.tolist() for k in model(batch).encoder.kept_tokens]
    assert kept[0][0] == padded and kept[1][0] == kept[2][0] < padded
    dropped = analytic_flops(model, [padded], kept)
    assert dropped < dense
    assert dropped == pytest.approx(count_flops(model, batch), rel=0.01)


def test_analytic_with_padded_kept_counts_matches_a_padded_batch() -> None:
    """Dropping pads each sequence to the batch's longest survivor; that is what the counter sees."""
    model, batch, padded = model_and_batch("vit", size=3)
    model.encoder.token_selector = DropHalf(layer=0)
    with torch.no_grad():
        model.eval()
        kept = model(batch).encoder.kept_tokens
    as_run = [[int(k.max())] * 3 for k in kept]
    assert analytic_flops(model, [padded] * 3, as_run) == pytest.approx(count_flops(model, batch), rel=0.01)


def test_mean_flops_per_example_uses_real_lengths_and_kept_tokens() -> None:
    model = bert_like()
    batches = [text_batch([12, 7, 3], padded=12), text_batch([5, 9], padded=9), text_batch([4], padded=4)]
    expected = analytic_flops(model, [12, 7, 3, 5, 9]) / 5
    assert mean_flops_per_example(model, batches, max_batches=2) == pytest.approx(expected)
    assert expected < count_flops(model, batches[0]) / 3

    model.encoder.token_selector = DropHalf(layer=1)
    with torch.no_grad():
        kept = [k.tolist() for k in model.eval()(batches[0]).encoder.kept_tokens]
    expected = analytic_flops(model, [12, 7, 3], kept) / 3
    assert mean_flops_per_example(model, batches, max_batches=1) == pytest.approx(expected)


def test_mean_flops_per_example_counts_models_without_an_encoder() -> None:
    class TinyCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, batch: dict[str, Tensor]) -> Tensor:
            return self.fc(self.conv(batch["pixel_values"]).mean(dim=(2, 3)))

    per_example = 2 * (8 * 8 * 4 * 3 * 9) + 2 * 4 * 2
    batches = [{"pixel_values": torch.randn(3, 3, 8, 8)}, {"pixel_values": torch.randn(1, 3, 8, 8)}]
    assert mean_flops_per_example(TinyCnn(), batches, max_batches=5) == per_example


@pytest.mark.parametrize("seq_len", [1, 17, 128])
def test_unit_costs_sum_to_layer_formulas(seq_len: int) -> None:
    dh = HIDDEN // HEADS
    assert HEADS * head_cost(seq_len, HIDDEN, dh) == attention_flops(seq_len, HIDDEN, HEADS, dh)
    assert FFN * neuron_cost(seq_len, HIDDEN) == ffn_flops(seq_len, HIDDEN, FFN)


def test_latency_fields_and_threads_restored() -> None:
    model, batch, _ = model_and_batch("bert", size=3)
    model.train()
    threads_before = torch.get_num_threads()
    result = measure_latency(model, batch, warmup=1, repeats=5, threads=1)
    assert torch.get_num_threads() == threads_before
    assert model.training
    assert result.threads == 1 and result.batch_size == 3
    assert 0 < result.median_s <= result.p90_s
    assert result.throughput == pytest.approx(3 / result.median_s)

    pruned, _, _ = model_and_batch("bert")
    prune(pruned)
    dense_result, pruned_result = compare_latency(model, pruned, batch, warmup=1, repeats=3)
    assert dense_result.threads == pruned_result.threads == threads_before
    assert dense_result.batch_size == pruned_result.batch_size == 3


def test_params_and_size_of_a_known_model() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Conv2d(2, 5, kernel_size=3))
    quantizable, other = 4 * 3 + 2 * 5 * 9, 3 + 2 * 3 + 5
    assert count_params(model) == quantizable + other == 116
    assert model_size_bytes(model) == 116 * 4
    assert model_size_bytes(model, weight_bits=4) == (102 * 4 + 14 * 32) // 8 == 107
    assert model_size_bytes(model, weight_bits=3) == 95  # 306 + 448 bits, rounded up to whole bytes


def test_bisection_meets_a_budget_from_below() -> None:
    from trimlab.methods.bisection import bisect

    def ratio(knob: float) -> float:  # a staircase: falls as the knob rises
        return 1.0 - round(knob * 10) / 10

    chosen = bisect(ratio, 0.55, 0.0, 1.0)
    assert ratio(chosen) == pytest.approx(0.5)  # 0.6 is as close, but over the budget
    assert bisect(lambda knob: 2.0, 0.5, 0.0, 1.0) > 0.99  # nothing reaches it: the closest above (the top of the range)
