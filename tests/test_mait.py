"""MaiT: mask construction, zero attention outside the window, the unmasked equivalence, CaiT-style models, the method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trimlab.config import ConfigError
from trimlab.methods.mait.masks import head_bias, install_masks, locality_mask, masked_heads_of, thirds_schedule
from trimlab.models.encoder import PROBABILITIES, TokenState
from trimlab.models.vision import vit_classifier


def test_window_on_a_non_square_grid() -> None:
    allowed = locality_mask(2, 3, (3, 3), num_protected=1)  # patches 1..6 laid out as rows (1 2 3), (4 5 6)
    assert allowed.shape == (7, 7)
    assert allowed[0].all() and allowed[:, 0].all()  # the class token is global both ways
    assert allowed[1, 1:].tolist() == [True, True, False, True, True, False]  # top-left corner: itself, right, below
    assert allowed[2, 1:].tolist() == [True, True, True, True, True, True]  # top-middle reaches all 6 (2 rows)
    wide = locality_mask(2, 3, (1, 3), num_protected=0)  # one row, three columns
    assert wide[4].tolist() == [False, False, False, True, True, True] and wide[0].tolist() == [True, True, False, False, False, False]


def test_a_masked_head_gives_zero_attention_outside_its_window() -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
    allowed = locality_mask(4, 4, (3, 3))
    install_masks(model.encoder, allowed, [2, 1])
    hidden, valid = model.embeddings({"pixel_values": torch.randn(2, 1, 16, 16)})
    state = TokenState(hidden, valid, torch.arange(17).expand(2, 17))
    with torch.no_grad():
        _, probs = model.encoder.layers[0].attn(hidden, state, reads=PROBABILITIES)
    assert float(probs[:, :2][..., ~allowed].abs().max()) == 0.0  # masked heads 0, 1: nothing outside
    assert float(probs[:, 2][..., ~allowed].min()) > 0.0  # the global head still looks everywhere
    assert masked_heads_of(model.encoder) == [2, 1]


def test_an_all_ones_mask_equals_the_unmasked_model() -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5).eval()
    batch = {"pixel_values": torch.randn(2, 1, 16, 16)}
    with torch.no_grad():
        plain = model(batch).logits
        install_masks(model.encoder, torch.ones(17, 17, dtype=torch.bool), [3, 3])
        masked = model(batch).logits
    torch.testing.assert_close(masked, plain, atol=1e-6, rtol=0)


def test_bias_is_zero_for_global_heads_and_blocks_only_outside() -> None:
    allowed = locality_mask(3, 3, (3, 3))
    bias = head_bias(allowed, 1, 3)
    assert (bias[1:] == 0).all() and (bias[0][allowed] == 0).all() and (bias[0][~allowed] < -1e30).all()


def test_paper_schedule_masks_early_layers_most() -> None:
    assert thirds_schedule(6, 4) == [4, 4, 1, 1, 0, 0]
    assert thirds_schedule(24, 6) == [6] * 8 + [1] * 8 + [0] * 8


def test_cait_style_model_runs_class_attention_over_masked_self_attention() -> None:
    torch.manual_seed(0)
    model = vit_classifier(16, 4, 1, 24, 2, 3, 48, num_labels=5, class_attention_layers=2).eval()
    assert model.num_protected == 0 and len(model.class_layers) == 2
    batch = {"pixel_values": torch.randn(2, 1, 16, 16)}
    allowed = locality_mask(4, 4, (3, 3), num_protected=0)
    install_masks(model.encoder, allowed, [3, 1])
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


SMOKE = ("experiment=smoke", "model=vit_digits", "dataset=digits", "method=mait", "budget=none", "finetune.epochs=1")


@pytest.mark.parametrize("model", ["vit_digits", "cait_digits"])
def test_mait_run_records_masks_and_measures_the_masked_model(model: str, compose_cfg) -> None:
    from trimlab.run import run

    cfg = compose_cfg(*SMOKE, f"model={model}")
    record = run(cfg)
    assert record.status == "completed"
    assert record.compressed["masked_heads"] == [4, 4, 1, 1, 0, 0]
    assert record.ratios["flops"] == pytest.approx(1.0) and record.ratios["params"] == 1.0  # masks cost nothing on paper
    run_dir = Path(cfg.paths.output_dir) / "runs" / record.run_id
    assert (run_dir / "masks.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method.window=[2,3]",), "two odd sizes"),
        (("method.masked_heads=[1,1]",), "for each of the 6 layers"),
        (("method.masked_heads=[5,0,0,0,0,0]",), "0 to 4 masked heads"),
        (("method.init=pretrained",), "not one of scratch, dense"),
        (("model=minilm_l6", "dataset=tweets"), "is not a ViT"),
        (("budget=flops_60",), "cannot take a 'flops' budget"),
    ],
)
def test_bad_settings_fail_before_training(overrides: tuple[str, ...], message: str, compose_cfg) -> None:
    from trimlab.run import run

    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*SMOKE, *overrides))
