"""SaiT: class-attention scores, the adaptive rule, token packaging, the run-time density switch, and the method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trimlab.config import ConfigError
from trimlab.methods.sait.module import attention_kl
from trimlab.methods.sait.selector import SaiTSelector, adaptive_keep, class_attention, fixed_keep
from trimlab.models.encoder import PROBABILITIES, TokenState
from trimlab.models.vision import vit_classifier


def small_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return vit_classifier(16, 4, 1, 24, 3, 3, 48, num_labels=5).eval()


def images(n: int = 3) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))}


def test_class_attention_is_the_class_rows_head_mean_over_patches() -> None:
    probs = torch.zeros(1, 2, 4, 4)
    probs[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    probs[0, 1, 0] = torch.tensor([0.5, 0.3, 0.1, 0.1])
    valid = torch.tensor([[True, True, True, False]])
    # head mean to patches 1, 2: 0.25, 0.2; padding (3) and the class token (0) excluded, renormalised.
    torch.testing.assert_close(class_attention(probs, valid), torch.tensor([[0.0, 0.25 / 0.45, 0.2 / 0.45, 0.0]]))


def test_adaptive_rule_keeps_fewer_tokens_when_attention_is_concentrated() -> None:
    uniform = torch.full((1, 17), 1 / 16).index_fill(1, torch.tensor([0]), 0.0)
    concentrated = torch.cat([torch.zeros(1, 1), torch.tensor([[0.7, 0.2]]), torch.full((1, 14), 0.1 / 14)], dim=1)
    assert int(adaptive_keep(uniform, 0.85).sum()) == 14  # 13 tokens hold 0.8125 < 0.85, the 14th crosses it
    kept = adaptive_keep(concentrated, 0.85)
    assert kept[0, 1:3].all() and int(kept.sum()) == 2  # 0.7 + 0.2 crosses 0.85 at the 2nd token


def test_fixed_rule_keeps_a_share_of_each_inputs_patches() -> None:
    score = torch.tensor([[0.0, 0.1, 0.4, 0.2, 0.3], [0.0, 0.5, 0.5, 0.0, 0.0]])
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    keep = fixed_keep(score, valid, 0.5)
    assert keep[0].tolist() == [False, False, True, False, True]  # 2 of 4 patches: the two highest
    assert keep[1].sum() == 1 and not keep[1, 3:].any()  # 1 of 2 real patches, never padding


def test_dense_density_is_the_plain_encoder_and_full_density_keeps_every_token() -> None:
    model, batch = small_vit(), images()
    with torch.no_grad():
        plain = model(batch).logits
        selector = SaiTSelector([1], package=False)
        model.encoder.token_selector = selector
        torch.testing.assert_close(model(batch).logits, plain, atol=0, rtol=0)  # density None: not a single op differs
        selector.density = 1.0
        out = model(batch)
    torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=0)
    assert out.encoder.kept_tokens[-1].tolist() == [17, 17, 17]


@pytest.mark.parametrize("package", [False, True])
def test_dropped_tokens_equal_masked_tokens(package: bool) -> None:
    model, batch = small_vit(), images()
    selector = SaiTSelector([1], package=package)
    selector.density = 0.5
    model.encoder.token_selector = selector
    with torch.no_grad():
        dropped = model(batch)
        masked = model(batch, drop_tokens=False)
    assert int(dropped.encoder.kept_tokens[-1].max()) < 17 + package  # tokens really left the sequence
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-5, rtol=0)


def test_package_token_is_the_score_weighted_mean_of_dropped_tokens() -> None:
    model, batch = small_vit(), images(1)
    selector = SaiTSelector([0], package=True)
    selector.density = 0.3
    model.encoder.token_selector = selector
    block = model.encoder.layers[0]
    captured = {}
    block.ffn.register_forward_pre_hook(lambda module, args: captured.setdefault("ffn_in", args[0]))
    with torch.no_grad():
        hidden, valid = model.embeddings(batch)
        attn_in = block.norm1(hidden)
        state = TokenState(hidden, valid, torch.arange(17)[None])
        attn_out, probs = block.attn(attn_in, state, reads=PROBABILITIES)
        h = hidden + attn_out
        score = class_attention(probs, valid)
        keep = adaptive_keep(score, 0.3)
        keep[:, 0] = True
        weights = score * ~keep
        expected = (weights[..., None] * h).sum(1) / weights.sum()
        model(batch)
        expected_ffn_in = block.norm2(expected)[0]  # pre-norm: the FFN reads norm2 of the hidden states
    rows = captured["ffn_in"].reshape(-1, expected_ffn_in.shape[-1])  # one example: its rows, packed or padded
    torch.testing.assert_close(rows[-1], expected_ffn_in, atol=1e-5, rtol=0)
    assert rows.shape[0] == int(keep.sum()) + 1


def test_attention_kl_is_zero_for_equal_distributions_and_positive_otherwise() -> None:
    p = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.9, 0.1]])
    assert float(attention_kl(p, p)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_kl(p, p.flip(0))) > 0.1


SMOKE = ("experiment=smoke", "model=vit_digits", "dataset=digits", "method=sait", "method.epochs=1", "method.calibration_examples=64")


def test_one_checkpoint_serves_every_density_without_retraining(compose_cfg) -> None:
    from trimlab.checkpoints import trained_checkpoint_path
    from trimlab.methods.sait.method import RUN_TIME_KEYS
    from trimlab.run import run

    cfg = compose_cfg(*SMOKE, "budget=flops_60", "method.eval_densities=[dense,'0.7']")
    record = run(cfg)
    assert record.status == "completed"
    assert abs(record.ratios["flops"] - 0.6) < 0.1  # the density the budget chose, on the test set
    curve = {point["density"]: point for point in record.compressed["densities"]}
    assert curve["dense"]["flops_ratio"] == 1.0 and curve["0.7"]["flops_ratio"] < 0.9
    run_dir = Path(cfg.paths.output_dir) / "runs" / record.run_id
    assert json.loads((run_dir / "densities.json").read_text())["densities"] == record.compressed["densities"]
    assert (run_dir / "density_curve.png").stat().st_size > 0

    weights = trained_checkpoint_path(cfg, RUN_TIME_KEYS)
    trained_at = weights.stat().st_mtime_ns
    dense = run(compose_cfg(*SMOKE, "budget=none", "method.density=dense", "method.eval_densities=[dense]"))
    assert weights.stat().st_mtime_ns == trained_at  # same weights, loaded, not trained again
    assert dense.compressed["metric"] == pytest.approx(curve["dense"]["metric"])  # the dense path of the same checkpoint
    assert dense.ratios["flops"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("budget=flops_60", "method.density=0.9"), "add budget=none"),
        (("budget=none",), "method.density=budget needs a FLOPs budget"),
        (("budget=flops_40", "method.prune_layers=[4]"), "below what SaiT can reach"),
        (("budget=none", "method.density=1.5"), r"must be 'dense' or a density in \(0, 1\]"),
        (("budget=flops_60", "method.teacher=/no/such/teacher.pt"), "no such checkpoint file"),
        (("budget=flops_60", "method.prune_layers=[6]"), "must be layers in 0..5"),
        (("budget=flops_60", "method.train_densities=[0.9,0.5]"), "low ≤ high"),
        (("budget=flops_60", "model=cait_digits"), "has no class token in its self-attention layers"),
    ],
)
def test_bad_settings_fail_before_training(overrides: tuple[str, ...], message: str, compose_cfg) -> None:
    from trimlab.run import run

    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(*SMOKE, *overrides))


def test_a_separate_teacher_checkpoint_guides_training(compose_cfg, tmp_path: Path) -> None:
    from trimlab.run import run

    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(vit_classifier(32, 4, 1, 96, 6, 4, 192, num_labels=10).state_dict(), teacher)
    record = run(compose_cfg(*SMOKE, "budget=none", "method.density=0.8", f"method.teacher={teacher}", "method.epochs=0.2", "method.eval_densities=[]"))
    assert record.status == "completed" and record.ratios["flops"] < 1.0
