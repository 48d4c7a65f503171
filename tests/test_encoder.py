"""The unified encoder's knobs on small random models, with answers known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import TextEmbeddings
from trimlab.models.encoder import PROBABILITIES, Encoder, EncoderSpec, TokenState
from trimlab.models.vision import vit_classifier

LAYERS, HEADS, FFN = 3, 4, 32


def text_model(norm_first: bool = False) -> TransformerClassifier:
    torch.manual_seed(0)
    spec = EncoderSpec(num_layers=LAYERS, hidden_size=16, num_heads=HEADS, ffn_dim=FFN, norm_first=norm_first)
    embeddings = TextEmbeddings(50, 16, 32, 2, 1e-12, 0.0)
    return TransformerClassifier(embeddings, Encoder(spec), ClassifierHead(16, 3, "tanh_dense", 0.0)).eval()


def padded_batch() -> dict[str, Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


class KeepFixed:
    """A selector that keeps a fixed set of input positions at one layer."""

    reads = PROBABILITIES

    def __init__(self, layer: int, keep_positions: Tensor) -> None:
        self.layer = layer
        self.keep_positions = keep_positions

    def selects_at(self, layer: int) -> bool:
        return layer == self.layer

    def __call__(self, layer: int, probs: Tensor, valid: Tensor) -> Tensor:
        assert probs.shape[-2:] == (valid.shape[1], valid.shape[1])
        return self.keep_positions[:, : valid.shape[1]].clone()


class SoftHalf:
    reads = PROBABILITIES

    def selects_at(self, layer: int) -> bool:
        return True

    def __call__(self, layer: int, probs: Tensor, valid: Tensor) -> Tensor:
        return torch.full(valid.shape, 0.5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_structural_removal_equals_mask(norm_first: bool) -> None:
    model = text_model(norm_first)
    batch = padded_batch()
    heads = [[0, 2], [1, 2, 3], []]
    neurons = [list(range(0, FFN, 2)), list(range(5)), list(range(FFN))]
    head_mask = torch.zeros(LAYERS, HEADS)
    neuron_mask = torch.zeros(LAYERS, FFN)
    for layer in range(LAYERS):
        head_mask[layer, heads[layer]] = 1
        neuron_mask[layer, neurons[layer]] = 1
    with torch.no_grad():
        masked = model(batch, head_mask=head_mask, neuron_mask=neuron_mask)
        model.encoder.prune(heads, neurons)
        pruned = model(batch)
    assert model.encoder.heads_per_layer == [2, 3, 0]
    assert model.encoder.neurons_per_layer == [FFN // 2, 5, FFN]
    torch.testing.assert_close(pruned.logits, masked.logits, atol=1e-5, rtol=0)


def test_padding_does_not_change_real_tokens() -> None:
    model = text_model()
    batch = padded_batch()
    with torch.no_grad():
        full = model(batch).encoder.hidden
        alone = model({k: v[2:3, :3] for k, v in batch.items()}).encoder.hidden
    torch.testing.assert_close(full[2:3, :3], alone, atol=1e-5, rtol=0)


def test_dropping_tokens_equals_masking_them() -> None:
    model = text_model()
    batch = padded_batch()
    keep = torch.ones(3, 10, dtype=torch.bool)
    keep[0, [2, 5, 7]] = False
    keep[1, [1, 4]] = False
    keep[:, 0] = False  # the class token is protected: it stays anyway
    model.encoder.token_selector = KeepFixed(1, keep)
    with torch.no_grad():
        dropped = model(batch, drop_tokens=True)
        masked = model(batch, drop_tokens=False)
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-5, rtol=0)
    kept_after = dropped.encoder.kept_tokens[1].tolist()
    assert kept_after == [7, 4, 3]
    assert dropped.encoder.hidden.shape[1] == 7  # the sequence really shrank
    positions = dropped.encoder.positions[0, :7].tolist()
    assert positions == [0, 1, 3, 4, 6, 8, 9]


def test_soft_selection_scales_layer_outputs_but_not_class_token() -> None:
    model = text_model()
    model.encoder.layers = model.encoder.layers[:1]
    batch = padded_batch()
    with torch.no_grad():
        plain = model.encoder(model.embeddings(batch)[0], batch["attention_mask"].bool()).hidden
        model.encoder.token_selector = SoftHalf()
        soft = model.encoder(model.embeddings(batch)[0], batch["attention_mask"].bool()).hidden
    torch.testing.assert_close(soft[:, 0], plain[:, 0])
    torch.testing.assert_close(soft[:, 1:], plain[:, 1:] * 0.5)


def test_keep_packs_tokens_to_the_front() -> None:
    hidden = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    state = TokenState(hidden, valid, torch.arange(5).expand(2, 5))
    keep = torch.tensor([[True, False, True, False, True], [True, True, False, True, True]])
    out = state.keep(keep)
    assert out.hidden.shape == (2, 3, 1)
    assert out.hidden[0, :, 0].tolist() == [0.0, 2.0, 4.0]
    assert out.valid.tolist() == [[True, True, True], [True, True, False]]
    assert out.positions[1, :2].tolist() == [0, 1]


def test_head_bias_blocks_attention() -> None:
    """A -inf bias off the diagonal makes every token attend only to itself: the output ignores the others."""
    model = text_model()
    batch = {"input_ids": torch.randint(1, 50, (1, 6))}
    eye = torch.full((6, 6), float("-inf")).fill_diagonal_(0.0)
    for block in model.encoder.layers:
        block.attn.set_head_bias(eye.expand(HEADS, 6, 6).clone())
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, 3] = (changed["input_ids"][0, 3] % 49) + 1
    with torch.no_grad():
        a = model(batch).encoder.hidden
        b = model(changed).encoder.hidden
    untouched = [0, 1, 2, 4, 5]
    torch.testing.assert_close(a[:, untouched], b[:, untouched])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_head_bias_follows_dropped_tokens() -> None:
    model = text_model()
    batch = {"input_ids": torch.randint(1, 50, (2, 8))}
    torch.manual_seed(3)
    for block in model.encoder.layers:
        block.attn.set_head_bias(torch.randn(HEADS, 8, 8))
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[0, [1, 6]] = False
    keep[1, 3] = False
    model.encoder.token_selector = KeepFixed(0, keep)
    with torch.no_grad():
        dropped = model(batch, drop_tokens=True).logits
        masked = model(batch, drop_tokens=False).logits
    torch.testing.assert_close(dropped, masked, atol=1e-5, rtol=0)


def test_masks_are_differentiable() -> None:
    model = text_model()
    head_mask = torch.ones(LAYERS, HEADS, requires_grad=True)
    neuron_mask = torch.ones(LAYERS, FFN, requires_grad=True)
    model(padded_batch(), head_mask=head_mask, neuron_mask=neuron_mask).logits.sum().backward()
    assert head_mask.grad is not None and head_mask.grad.abs().sum() > 0
    assert neuron_mask.grad is not None and neuron_mask.grad.abs().sum() > 0


def test_hidden_states_are_exposed_per_layer() -> None:
    model = text_model()
    with torch.no_grad():
        out = model(padded_batch(), output_hidden_states=True).encoder
    assert len(out.hidden_states) == LAYERS
    torch.testing.assert_close(out.hidden_states[-1], out.hidden)


def test_vit_drops_patches_and_keeps_class_token() -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
    keep = torch.zeros(2, 17, dtype=torch.bool)
    keep[:, 1:5] = True
    model.encoder.token_selector = KeepFixed(0, keep)
    with torch.no_grad():
        out = model({"pixel_values": torch.randn(2, 1, 16, 16)})
    assert out.logits.shape == (2, 5)
    assert out.encoder.kept_tokens[0].tolist() == [5, 5]
    assert out.encoder.positions[:, 0].tolist() == [0, 0]
