"""MaiT: mask construction, both mask forms against hand-computed softmax rows, the unmasked equivalence,
CaiT-style models, the method and its name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trimlab.config import ConfigError
from trimlab.methods import method_label
from trimlab.methods.mait.masks import head_bias, head_logit_mask, install_masks, locality_mask, masked_heads_of, thirds_schedule
from trimlab.models.encoder import PROBABILITIES, Attention, TokenState
from trimlab.models.vision import vit_classifier

FORMS = ("multiplicative", "additive")


def test_window_on_a_non_square_grid() -> None:
    allowed = locality_mask(2, 3, (3, 3), num_protected=1)  # patches 1..6 laid out as rows (1 2 3), (4 5 6)
    assert allowed.shape == (7, 7)
    assert allowed[0].all()  # the class token attends to every token
    assert not allowed[1:, 0].any()  # a patch's window holds patches only (paper: 9 of 197 weights for 3x3)
    assert allowed[1, 1:].tolist() == [True, True, False, True, True, False]  # top-left corner: itself, right, below
    assert allowed[2, 1:].tolist() == [True, True, True, True, True, True]  # top-middle reaches all 6 (2 rows)
    wide = locality_mask(2, 3, (1, 3), num_protected=0)  # one row, three columns
    assert wide[4].tolist() == [False, False, False, True, True, True] and wide[0].tolist() == [True, True, False, False, False, False]


# A hand-made attention: a class token and a 3x3 patch grid (10 tokens), head_dim 1 (so 1/sqrt(d) = 1),
# two heads that read the same q, k, v: head 0 masked, head 1 global. The hidden state of a token is
# (q, k, v); the output projection hands back head 0's context in channel 0 and head 1's in channel 1.
Q1 = 2.0  # the query of patch 1 (the top-left corner; its 3x3 window is tokens 1, 2, 4, 5)
K = [0.5, 1.0, -1.0, 2.0, 0.8, 1.5, -0.5, 0.3, 0.7, -2.0]
V = [10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def hand_attention(form: str | None) -> Attention:
    attn = Attention(hidden_size=3, num_heads=2, head_dim=1, dropout=0.0).eval()
    with torch.no_grad():
        # qkv rows: q of heads 0, 1; k of heads 0, 1; v of heads 0, 1 — each copies one input channel
        attn.qkv.weight.copy_(torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]))
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0]]))
        attn.proj.bias.zero_()
    allowed = locality_mask(3, 3, (3, 3), num_protected=1)
    if form == "multiplicative":
        attn.set_head_logit_mask(head_logit_mask(allowed, 1, 2))
    elif form == "additive":
        attn.set_head_bias(head_bias(allowed, 1, 2))
    return attn


def hand_tokens(valid: list[bool] | None = None) -> tuple[torch.Tensor, TokenState]:
    q = [1.0, Q1] + [0.5] * 8
    hidden = torch.tensor([q, K, V]).T[None]  # [1, 10, 3]
    valid_t = torch.tensor([valid or [True] * 10])
    return hidden, TokenState(hidden, valid_t, torch.arange(10)[None])


def softmax_row(logits: list[float], values: list[float]) -> tuple[list[float], float]:
    """Probabilities and the weighted sum of ``values``, written out: exp(l_j) / sum_i exp(l_i)."""
    exps = [math.exp(x) for x in logits]
    total = sum(exps)
    probs = [e / total for e in exps]
    return probs, sum(p * v for p, v in zip(probs, values))


def test_multiplicative_mask_sets_logits_outside_the_window_to_zero() -> None:
    """The paper's Eq. 2: softmax((M ⊙ QKᵀ)/√d)·V — keys outside the window keep logit 0, so weight e^0 / Σ."""
    attn = hand_attention("multiplicative")
    hidden, state = hand_tokens()
    # query patch 1: q·k_j for j in its window (1, 2, 4, 5), 0 for the others, the class token included
    probs, context = softmax_row([0.0, 2.0, -2.0, 0.0, 1.6, 3.0, 0.0, 0.0, 0.0, 0.0], V)
    with torch.no_grad():
        out, scores = attn(hidden, state, reads=PROBABILITIES)
        plain_out, _ = attn(hidden, state)  # the path a forward without a selector takes
    assert scores[0, 0, 1].tolist() == pytest.approx(probs, abs=1e-6)
    assert float(scores[0, 0, 1, 7]) == pytest.approx(1 / sum(math.exp(x) for x in [0, 2, -2, 0, 1.6, 3, 0, 0, 0, 0]), abs=1e-6)
    assert float(out[0, 1, 0]) == pytest.approx(context, abs=1e-5)
    assert float(plain_out[0, 1, 0]) == pytest.approx(context, abs=1e-5)


def test_additive_mask_gives_zero_weight_outside_the_window() -> None:
    """The non-paper form: -inf outside the window, so the softmax runs over the window's 4 keys only."""
    attn = hand_attention("additive")
    hidden, state = hand_tokens()
    window_probs, context = softmax_row([2.0, -2.0, 1.6, 3.0], [V[1], V[2], V[4], V[5]])
    expected = [0.0, window_probs[0], window_probs[1], 0.0, window_probs[2], window_probs[3], 0.0, 0.0, 0.0, 0.0]
    with torch.no_grad():
        out, scores = attn(hidden, state, reads=PROBABILITIES)
        plain_out, _ = attn(hidden, state)
    assert scores[0, 0, 1].tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out[0, 1, 0]) == pytest.approx(context, abs=1e-5)
    assert float(plain_out[0, 1, 0]) == pytest.approx(context, abs=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_global_heads_and_the_class_token_row_are_unchanged(form: str) -> None:
    hidden, state = hand_tokens()
    probs, context = softmax_row([Q1 * k for k in K], V)  # plain softmax over all 10 keys
    with torch.no_grad():
        out, scores = hand_attention(form)(hidden, state, reads=PROBABILITIES)
        plain_out, plain = hand_attention(None)(hidden, state, reads=PROBABILITIES)
    assert scores[0, 1, 1].tolist() == pytest.approx(probs, abs=1e-6)  # head 1 is global
    assert float(out[0, 1, 1]) == pytest.approx(context, abs=1e-5)
    torch.testing.assert_close(scores[0, 1], plain[0, 1], atol=0, rtol=0)
    torch.testing.assert_close(scores[0, 0, 0], plain[0, 0, 0], atol=1e-7, rtol=0)  # the class token sees everything


def test_padding_keys_get_zero_weight_under_the_multiplicative_mask() -> None:
    """A padding key outside the window would get logit 0 (weight e^0 / Σ) from the mask; the key mask must still remove it."""
    attn = hand_attention("multiplicative")
    hidden, state = hand_tokens([True] * 8 + [False] * 2)
    probs, context = softmax_row([0.0, 2.0, -2.0, 0.0, 1.6, 3.0, 0.0, 0.0], V[:8])  # the 8 real keys only
    with torch.no_grad():
        out, scores = attn(hidden, state, reads=PROBABILITIES)
        plain_out, _ = attn(hidden, state)
    assert float(scores[..., 8:].abs().max()) == 0.0  # every head, every row
    assert scores[0, 0, 1, :8].tolist() == pytest.approx(probs, abs=1e-6)
    assert float(out[0, 1, 0]) == pytest.approx(context, abs=1e-5)
    assert float(plain_out[0, 1, 0]) == pytest.approx(context, abs=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_masks_on_a_vit_in_either_form(form: str) -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
    allowed = locality_mask(4, 4, (3, 3))
    install_masks(model.encoder, allowed, [2, 1], form)
    hidden, valid = model.embeddings({"pixel_values": torch.randn(2, 1, 16, 16)})
    state = TokenState(hidden, valid, torch.arange(17).expand(2, 17))
    with torch.no_grad():
        _, probs = model.encoder.layers[0].attn(hidden, state, reads=PROBABILITIES)
    outside = probs[:, :2][..., ~allowed]
    if form == "additive":
        assert float(outside.abs().max()) == 0.0  # masked heads 0, 1: nothing outside
    else:  # logit 0 outside: one equal, nonzero weight for every key outside a row's window
        per_row = probs[:, :2].masked_fill(allowed, float("nan"))
        assert float(outside.min()) > 0.0
        assert float((per_row.nan_to_num(-1).amax(-1) - per_row.nan_to_num(2).amin(-1))[..., 1:].abs().max()) < 1e-7
    assert float(probs[:, 2][..., ~allowed].min()) > 0.0  # the global head still looks everywhere
    assert masked_heads_of(model.encoder) == [2, 1]


@pytest.mark.parametrize("form", FORMS)
def test_an_all_ones_mask_equals_the_unmasked_model(form: str) -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
    batch = {"pixel_values": torch.randn(2, 1, 16, 16)}
    with torch.no_grad():
        plain = model(batch).logits
        install_masks(model.encoder, torch.ones(17, 17, dtype=torch.bool), [3, 3], form)
        masked = model(batch).logits
    torch.testing.assert_close(masked, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_masks_take_the_models_dtype(form: str) -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).double().eval()
    install_masks(model.encoder, locality_mask(4, 4, (3, 3)), [2, 1], form)
    with torch.no_grad():
        logits = model({"pixel_values": torch.randn(2, 1, 16, 16, dtype=torch.float64)}).logits
    assert logits.dtype == torch.float64 and torch.isfinite(logits).all()
    if form == "additive":
        assert model.encoder.layers[0].attn.head_bias.dtype == torch.float64


@pytest.mark.parametrize("form", FORMS)
def test_pruning_heads_keeps_the_masks_of_the_heads_left(form: str) -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
    install_masks(model.encoder, locality_mask(4, 4, (3, 3)), [2, 1], form)
    model.encoder.prune([[1, 2], [0, 2]], [range(48), range(48)])
    assert masked_heads_of(model.encoder) == [1, 1]  # layer 0 keeps masked head 1 and global head 2; layer 1 masked head 0
    with torch.no_grad():
        assert torch.isfinite(model({"pixel_values": torch.randn(2, 1, 16, 16)}).logits).all()


def test_bias_and_logit_mask_leave_global_heads_alone() -> None:
    allowed = locality_mask(3, 3, (3, 3))
    bias = head_bias(allowed, 1, 3)
    assert (bias[1:] == 0).all() and (bias[0][allowed] == 0).all() and (bias[0][~allowed] < -1e30).all()
    mask = head_logit_mask(allowed, 1, 3)
    assert mask.dtype == torch.bool and mask[1:].all() and torch.equal(mask[0], allowed)


def test_paper_schedule_masks_early_layers_most() -> None:
    assert thirds_schedule(6, 4) == [4, 4, 1, 1, 0, 0]
    assert thirds_schedule(24, 6) == [6] * 8 + [1] * 8 + [0] * 8  # the paper's Fig. 3b


def test_cait_style_model_runs_class_attention_over_masked_self_attention() -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5, class_attention_layers=2).eval()
    assert model.num_protected == 0 and len(model.class_layers) == 2
    batch = {"pixel_values": torch.randn(2, 1, 16, 16)}
    allowed = locality_mask(4, 4, (3, 3), num_protected=0)
    install_masks(model.encoder, allowed, [3, 1], "additive")
    with torch.no_grad():
        out = model(batch)
        hidden, valid = model.embeddings(batch)
        _, probs = model.encoder.layers[0].attn(hidden, TokenState(hidden, valid, torch.arange(16).expand(2, 16)), reads=PROBABILITIES)
    assert out.logits.shape == (2, 5) and out.encoder.hidden.shape == (2, 16, 24)  # the class token is not in self-attention
    assert float(probs[..., ~allowed].abs().max()) == 0.0
    far = dict(batch)  # the class-attention layers read every patch: a change far away reaches the logits
    far["pixel_values"] = batch["pixel_values"].clone()
    far["pixel_values"][:, :, 12:, 12:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(far).logits, out.logits)


def test_the_default_form_is_the_papers_and_the_other_is_named(compose_cfg) -> None:
    cfg = compose_cfg("method=mait")
    assert cfg.method.mask_form == "multiplicative" and method_label(cfg.method) == "mait"
    assert method_label(compose_cfg("method=mait", "method.mask_form=additive").method) == "mait+additive"
    assert method_label(compose_cfg("method=dense").method) == "dense"


SMOKE = ("experiment=smoke", "model=vit_digits", "dataset=digits", "method=mait", "budget=none", "finetune.epochs=1")


@pytest.mark.parametrize(("model", "form"), [("vit_digits", "multiplicative"), ("cait_digits", "additive")])
def test_mait_run_records_masks_and_measures_the_masked_model(model: str, form: str, compose_cfg) -> None:
    from trimlab.run import run

    cfg = compose_cfg(*SMOKE, f"model={model}", f"method.mask_form={form}")
    record = run(cfg)
    assert record.status == "completed"
    assert record.method == ("mait" if form == "multiplicative" else "mait+additive")
    assert record.compressed["masked_heads"] == [4, 4, 1, 1, 0, 0] and record.compressed["mask_form"] == form
    assert record.ratios["flops"] == pytest.approx(1.0) and record.ratios["params"] == 1.0  # masks cost nothing on paper
    run_dir = Path(cfg.paths.output_dir) / "runs" / record.run_id
    assert (run_dir / "masks.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method.window=[2,3]",), "two odd sizes"),
        (("method.masked_heads=[1,1]",), "for each of the 6 layers"),
        (("method.masked_heads=[5,0,0,0,0,0]",), "0 to 4 masked heads"),
        (("method.mask_form=soft",), "not one of multiplicative, additive"),
        (("method.init=pretrained",), "not one of scratch, dense"),
        (("model=minilm_l6", "dataset=tweets"), "is not a ViT"),
        (("budget=flops_60",), "cannot take a 'flops' budget"),
    ],
)
def test_bad_settings_fail_before_training(overrides: tuple[str, ...], message: str, compose_cfg) -> None:
    from trimlab.run import run

    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*SMOKE, *overrides))
