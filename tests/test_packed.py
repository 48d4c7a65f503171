"""The packed layout (no padding rows, removed tokens are removed rows) computes what the padded layout computes.

Each test runs one model twice on the same batch, ``encoder.packed`` on and
off, and compares the logits and the final states of the real tokens
(≤ 1e-5): dense post-norm and pre-norm stacks, every kind of token selector
(hard: LTP thresholds and top-k; package: SaiT; soft: LTP's training stage),
per-head attention biases (MaiT) and MPNet's relative-position bias.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from trimlab.methods.ltp.selectors import LearnedThresholds, TopKTokens
from trimlab.methods.mait.masks import install_masks, locality_mask
from trimlab.methods.sait.selector import SaiTSelector
from trimlab.models.classifier import ClassifierHead, TransformerClassifier
from trimlab.models.embeddings import TextEmbeddings
from trimlab.models import encoder as encoder_module
from trimlab.models.encoder import Encoder, EncoderSpec, PackedState
from trimlab.models.vision import vit_classifier

ATOL = 1e-5


def text_model(norm_first: bool = False, relative_buckets: int = 0) -> TransformerClassifier:
    torch.manual_seed(0)
    spec = EncoderSpec(num_layers=3, hidden_size=32, num_heads=4, ffn_dim=64, norm_first=norm_first, relative_buckets=relative_buckets)
    embeddings = TextEmbeddings(50, 32, 32, 2, 1e-12, 0.0)
    return TransformerClassifier(embeddings, Encoder(spec), ClassifierHead(32, 3, "tanh_dense", 0.0)).eval()


def text_batch(lengths: list[int] = [12, 5, 9, 2]) -> dict[str, Tensor]:  # noqa: B006 — read only
    generator = torch.Generator().manual_seed(1)
    width = max(lengths)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, 50, (len(lengths), width), generator=generator)
    return {"input_ids": ids * mask, "attention_mask": mask}


def vit_model() -> TransformerClassifier:
    torch.manual_seed(0)
    return vit_classifier(16, 4, 1, 24, 3, 3, 48, num_labels=5).eval()


def images(n: int = 4) -> dict[str, Tensor]:
    return {"pixel_values": torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(2))}


def both_layouts(model: nn.Module, batch: dict[str, Tensor]) -> tuple:
    """The model's output packed and padded (each on its own copy, so selectors keep no state between them)."""
    outputs = []
    for packed in (True, False):
        copy_ = copy.deepcopy(model)
        copy_.encoder.packed = packed
        with torch.no_grad():
            outputs.append(copy_(batch))
    return tuple(outputs)


def assert_same(packed, padded) -> None:
    torch.testing.assert_close(packed.logits, padded.logits, atol=ATOL, rtol=0)
    a, b = packed.encoder, padded.encoder
    assert [k.tolist() for k in a.kept_tokens] == [k.tolist() for k in b.kept_tokens]
    for example in range(a.hidden.shape[0]):
        rows_a, rows_b = a.hidden[example][a.valid[example]], b.hidden[example][b.valid[example]]
        torch.testing.assert_close(rows_a, rows_b, atol=ATOL, rtol=0)
        assert a.positions[example][a.valid[example]].tolist() == b.positions[example][b.valid[example]].tolist()


@pytest.mark.parametrize("norm_first", [False, True])
def test_dense_stack(norm_first: bool) -> None:
    assert_same(*both_layouts(text_model(norm_first), text_batch()))


def test_pack_and_unpack_round_trip() -> None:
    hidden = torch.arange(3 * 4, dtype=torch.float32).view(3, 4, 1)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    state = PackedState.from_padded(hidden, valid)
    assert state.hidden[:, 0].tolist() == [0.0, 1.0, 2.0, 4.0, 8.0, 9.0]
    assert state.width == 3 and state.lengths.tolist() == [3, 1, 2] and state.aligned
    back = state.to_token_state()
    assert back.hidden.shape == (3, 3, 1)
    assert torch.equal(back.hidden[back.valid], hidden[valid])
    kept = state.keep(torch.tensor([[1, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.bool))
    assert kept.hidden[:, 0].tolist() == [0.0, 2.0, 4.0, 9.0] and kept.positions.tolist() == [0, 2, 0, 1]
    assert kept.width == 2 and not kept.aligned and kept.batch_positions.tolist() == [[0, 2], [0, 0], [1, 0]]


def test_package_appends_each_examples_weighted_mean() -> None:
    hidden = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])[..., None]
    state = PackedState.from_padded(hidden, torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool))
    keep = torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    out = state.package(keep, torch.tensor([[0.0, 1.0, 3.0], [1.0, 1.0, 0.0]]))
    assert out.lengths.tolist() == [2, 2]  # example 1 left nothing out: no package row
    assert out.hidden[:, 0].tolist() == [1.0, 2.75, 4.0, 5.0]  # (2·1 + 3·3) / 4
    assert out.positions.tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("selector", ["thresholds", "topk"])
def test_hard_selectors(selector: str) -> None:
    model = text_model()
    if selector == "thresholds":
        model.encoder.token_selector = LearnedThresholds(3, final_threshold=2.0, score_length=1)  # about the mean attention a token receives
    else:
        model.encoder.token_selector = TopKTokens([1.0, 0.6, 0.3])
    packed, padded = both_layouts(model.eval(), text_batch())  # eval: LTP's thresholds are hard
    assert_same(packed, padded)
    assert packed.encoder.kept_tokens[-1].sum() < packed.encoder.kept_tokens[0].sum()  # tokens really left


@pytest.mark.parametrize("package", [True, False])
@pytest.mark.parametrize("mode,density", [("adaptive", 0.5), ("fixed", 0.4)])
def test_sait_selector(package: bool, mode: str, density: float) -> None:
    model = vit_model()
    selector = SaiTSelector([1], mode=mode, package=package)
    selector.density = density
    model.encoder.token_selector = selector
    packed, padded = both_layouts(model, images())
    assert_same(packed, padded)
    assert int(packed.encoder.kept_tokens[1].max()) < 17


def test_soft_selection_and_its_gradients() -> None:
    """LTP's soft stage trains through the packed layout: same loss, same gradients."""
    model = text_model()
    model.encoder.token_selector = LearnedThresholds(3, final_threshold=0.05, temperature=0.01, score_length=1)
    grads, losses = [], []
    for packed in (True, False):
        copy_ = copy.deepcopy(model).train()
        copy_.encoder.packed = packed
        selector = copy_.encoder.token_selector
        selector.reset()
        loss = copy_(text_batch()).logits.square().sum() + selector.mask_penalty()
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in copy_.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_locality_masks_follow_dropped_tokens() -> None:
    model = vit_model()
    install_masks(model.encoder, locality_mask(4, 4, (3, 3)), [2, 1, 0])
    selector = SaiTSelector([0], mode="fixed", package=True)
    selector.density = 0.5
    model.encoder.token_selector = selector
    assert_same(*both_layouts(model, images()))


def test_relative_position_bias_follows_dropped_tokens() -> None:
    model = text_model(relative_buckets=32)
    model.encoder.token_selector = TopKTokens([0.7, 0.5, 0.5])
    assert_same(*both_layouts(model, text_batch([20, 11, 3])))


def test_pruned_heads_and_neurons() -> None:
    model = text_model(relative_buckets=32)
    model.encoder.prune([[0, 2], [], [1, 2, 3]], [range(10), range(33), [5]])
    assert_same(*both_layouts(model, text_batch()))


def test_a_forward_that_masks_tokens_runs_padded() -> None:
    """``drop_tokens=False`` keeps masked tokens as rows: the padded layout, whatever ``packed`` says."""
    model = text_model()
    model.encoder.token_selector = TopKTokens([1.0, 0.5, 0.5])
    with torch.no_grad():
        masked = model(text_batch(), drop_tokens=False)
        dropped = model(text_batch())
    assert masked.encoder.hidden.shape[1] == 12 and dropped.encoder.hidden.shape[1] < 12
    torch.testing.assert_close(masked.logits, dropped.logits, atol=ATOL, rtol=0)


def test_received_attention_in_chunks_equals_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked computation (examples a few at a time, to stay in cache) gives the same context and scores."""
    model = text_model(relative_buckets=32)
    model.encoder.token_selector = TopKTokens([1.0, 0.6, 0.3])
    with torch.no_grad():
        monkeypatch.setattr(encoder_module, "RECEIVED_CHUNK", 2**30)
        whole = model.eval()(text_batch())
        monkeypatch.setattr(encoder_module, "RECEIVED_CHUNK", 1)  # one example per chunk
        chunked = model(text_batch())
    assert_same(chunked, whole)


def test_model_packed_option_sets_the_layout(compose_cfg) -> None:
    from trimlab.models.build import build_model

    assert build_model(compose_cfg().model, 3).model.encoder.packed
    assert not build_model(compose_cfg("model.packed=false").model, 3).model.encoder.packed


def test_a_layer_without_heads_keeps_every_token() -> None:
    """Fisher may remove all of a layer's heads; a token selector there has no attention to go by and drops nothing."""
    model = text_model()
    model.encoder.prune([[0, 1, 2, 3], [], [0, 1]], [range(64)] * 3)
    model.encoder.token_selector = TopKTokens([1.0, 0.5, 0.5])
    packed, padded = both_layouts(model, text_batch())
    assert_same(packed, padded)
    assert packed.encoder.kept_tokens[1].tolist() == [12, 5, 9, 2]  # layer 1: no heads, nothing dropped
    assert packed.encoder.kept_tokens[2].sum() < 28
