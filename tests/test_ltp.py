"""LTP's token selectors: the importance score, soft vs hard masks, real dropping, and the top-k baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from test_encoder import padded_batch, text_model
from trimlab.methods.ltp.selectors import LearnedThresholds, TopKTokens, importance, topk_keep_rates
from trimlab.models.encoder import received_attention


def test_importance_is_attention_received_averaged_over_heads_and_queries() -> None:
    # 2 heads, 3 tokens, the last one padding: query row 2 must not count, key 2 scores 0.
    probs = torch.tensor(
        [
            [[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]],
            [[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.9, 0.1, 0.0]],
        ]
    )[None]
    valid = torch.tensor([[True, True, False]])
    by_hand = torch.tensor([[(0.5 + 0.2 + 1.0 + 0.6) / (2 * 4), (0.5 + 0.8 + 0.0 + 0.4) / (2 * 4), 0.0]])
    torch.testing.assert_close(importance(received_attention(probs, valid), valid, score_length=4), by_hand)


def random_attention(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 5:] = False
    scores = torch.randn(2, 4, 8, 8, generator=gen) * 3
    return scores.masked_fill(~valid[:, None, None, :], -torch.inf).softmax(-1), valid


def test_soft_mask_tends_to_the_hard_mask_as_temperature_falls() -> None:
    probs, valid = random_attention()
    selector = LearnedThresholds(num_layers=4, final_threshold=0.4, score_length=8)
    selector.hard = True
    received = received_attention(probs, valid)
    hard = selector(2, received, valid).float()
    assert 0 < hard[valid].sum() < valid.sum()  # the threshold keeps some tokens and drops others
    selector.hard = False
    gaps = []
    for temperature in (1e-1, 1e-2, 1e-3, 1e-6):
        selector.temperature = temperature
        with torch.no_grad():
            gaps.append(float((selector(2, received, valid) - hard)[valid].abs().max()))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6


def test_zero_threshold_reproduces_the_dense_model() -> None:
    model, batch = text_model(), padded_batch()
    with torch.no_grad():
        dense = model(batch).logits
        selector = LearnedThresholds(len(model.encoder.layers), final_threshold=0.0)
        selector.hard = True
        model.encoder.token_selector = selector
        out = model(batch)
    torch.testing.assert_close(out.logits, dense, atol=1e-6, rtol=0)
    assert [k.tolist() for k in out.encoder.kept_tokens] == [[10, 6, 3]] * len(model.encoder.layers)


@pytest.mark.parametrize("kind", ["thresholds", "topk"])
def test_dropping_equals_masking_with_the_same_selector(kind: str) -> None:
    model, batch = text_model(), padded_batch()
    if kind == "thresholds":
        selector = LearnedThresholds(len(model.encoder.layers), final_threshold=0.3, score_length=10)
        selector.hard = True
    else:
        selector = TopKTokens([1.0, 0.6, 0.3])
    model.encoder.token_selector = selector
    with torch.no_grad():
        dropped = model(batch, drop_tokens=True)
        masked = model(batch, drop_tokens=False)
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-5, rtol=0)
    kept = [k.tolist() for k in dropped.encoder.kept_tokens]
    assert kept == [k.tolist() for k in masked.encoder.kept_tokens]
    assert sum(kept[-1]) < 19 and dropped.encoder.hidden.shape[1] < 10  # tokens really left the sequence


def test_topk_keeps_the_scheduled_share_of_each_input() -> None:
    assert topk_keep_rates(12, 0.2)[:3] == [1.0, 1.0, 1.0]
    assert topk_keep_rates(12, 0.2)[-1] == pytest.approx(0.2)
    rates = topk_keep_rates(6, 0.5)
    assert rates == pytest.approx([1.0, 1.0, 1.0, 1 - 0.5 / 3, 1 - 1.0 / 3, 0.5])
    model, batch = text_model(), padded_batch()
    model.encoder.token_selector = TopKTokens([1.0, 0.5, 0.5])
    with torch.no_grad():
        out = model(batch)
    assert out.encoder.kept_tokens[1].tolist() == [5, 3, 2]  # round(0.5 · [10, 6, 3]) (2 rounds half to even: 1.5 → 2)


def test_mask_penalty_sums_layers_and_normalises_by_score_length() -> None:
    selector = LearnedThresholds(num_layers=3, score_length=4)
    selector.soft_masks = [torch.tensor([[1.0, 0.5, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.5]])]
    assert float(selector.mask_penalty()) == pytest.approx(1.5 / 4 + 3.5 / 4)


@pytest.mark.parametrize(("method", "target"), [("ltp", 0.7), ("ltp_topk", 0.85)])  # top-k on 6 layers cannot go below 0.76
def test_ltp_run_meets_its_flops_budget_and_drops_tokens(method: str, target: float, compose_cfg) -> None:
    from trimlab.run import run

    cfg = compose_cfg(
        "experiment=smoke", "model=vit_digits", "dataset=digits", f"method={method}", "budget.kind=tokens", f"budget.target={target}",
        "method.soft_epochs=1", "method.hard_epochs=1", "method.calibration_examples=64",
    )
    record = run(cfg)
    assert record.status == "completed"
    assert target - 0.05 < record.compressed["calibration_flops_ratio_before_hard"] <= target  # a budget is a ceiling
    assert abs(record.compressed["calibration_flops_ratio"] - target) < 0.05  # after the hard stage: may drift, here little
    assert abs(record.ratios["flops"] - target) < 0.1  # on the test set, which the budget never saw
    kept = record.compressed["kept_fraction_per_layer"]
    assert kept[-1] < 0.8 and kept == sorted(kept, reverse=True)  # pruned tokens never come back
    run_dir = Path(record.config["paths"]["output_dir"]) / "runs" / record.run_id
    assert (run_dir / "kept_tokens.png").stat().st_size > 0


def test_unreachable_token_budget_is_rejected_before_training(compose_cfg) -> None:
    from trimlab.config import ConfigError
    from trimlab.run import run

    with pytest.raises(ConfigError, match="below what token pruning can reach"):
        run(compose_cfg("experiment=smoke", "model=vit_digits", "dataset=digits", "method=ltp_topk", "budget.kind=tokens", "budget.target=0.7"))
