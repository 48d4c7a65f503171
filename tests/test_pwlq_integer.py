"""PWLQ as two integer GEMMs (centre and tail): the same outputs as the simulated (fake-quantized) layer and model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trimlab.api import compress
from trimlab.methods.pwlq.calibrate import InputQuantizer, fake_quantize
from trimlab.methods.pwlq.integer import TwoBranchLinear, branch_matrices, two_branch_model
from trimlab.methods.pwlq.quantizer import bias_correction, pwlq_codes

from test_api import logits, small_bert, text_batches

EPS = torch.finfo(torch.float32).eps
KERNELS = ["int_mm"] + (["onednn"] if hasattr(torch.ops.onednn, "qlinear_pointwise") else [])


def quantized_linear(bits: int, corrected: bool, rows: int = 40, k: int = 96) -> nn.Linear:
    torch.manual_seed(bits + 10 * corrected)
    linear = nn.Linear(k, rows)
    linear.weight.data[:, :3] *= 6  # long tails: every row has tail weights
    w = linear.weight.detach().clone()
    quantized = pwlq_codes(w, bits)
    linear.quantized_weight = bias_correction(w, quantized) if corrected else quantized
    linear.weight.data = linear.quantized_weight.dequantize()
    return linear


@pytest.mark.parametrize("bits", [8, 4])
def test_the_two_branches_rebuild_the_pwlq_values(bits: int) -> None:
    """centre · s_c + tail · s_t is each weight's PWLQ value (a tail's breakpoint p = L · s_c is in the centre)."""
    linear = quantized_linear(bits, corrected=False)
    centre, tail, centre_scale, tail_scale = branch_matrices(linear.quantized_weight)
    levels = 2 ** (bits - 1) - 1
    assert centre.dtype == tail.dtype == torch.int8 and centre.abs().max() <= levels and tail.abs().max() <= levels
    assert ((tail != 0) & (centre.abs() != levels)).sum() == 0  # a tail weight sits at ±L in the centre branch
    assert (tail != 0).any()
    rebuilt = centre.double() * centre_scale[:, None].double() + tail.double() * tail_scale[:, None].double()
    assert torch.allclose(rebuilt, linear.weight.double(), rtol=4 * EPS, atol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("low, high", [(-3.0, 2.0), (0.0, 4.0)])  # the signed and the unsigned input grid
@pytest.mark.parametrize("bits", [8, 4])
def test_two_branch_linear_equals_the_simulated_layer(
    bits: int, low: float, high: float, corrected: bool, kernel: str
) -> None:
    """Integer accumulation is exact, so the only differences are float rounding.

    Against the simulated layer computed in float64 (same input codes, same
    dequantized weights): within 4 eps of Σ|x̂·w| (the int32 sums are exact; what
    rounds is each weight's float32 value, the float scaling and the sum of the
    branches, each a few eps). Against the simulated float32 layer: plus its own
    accumulation rounding, at most K eps of Σ|x̂·w|. A wrong code, scale or offset
    term would be off by a weight step (≥ 1/127 of a weight), far above either.
    """
    linear = quantized_linear(bits, corrected)
    quantizer = InputQuantizer(low, high, 8)
    x = torch.randn(37, 5, linear.in_features) * 2
    simulated_input = fake_quantize(x, low, high, 8)
    with torch.no_grad():
        simulated = F.linear(simulated_input, linear.weight, linear.bias)
        reference = F.linear(simulated_input.double(), linear.weight.double(), linear.bias.double())
        integer = TwoBranchLinear(linear, linear.quantized_weight, quantizer, kernel)(x)
    magnitude = simulated_input.abs().double() @ linear.weight.abs().double().t()
    assert integer.shape == simulated.shape and integer.dtype == torch.float32
    assert ((integer - reference).abs() <= 4 * EPS * magnitude).all()
    assert ((integer - simulated).abs() <= (linear.in_features + 4) * EPS * magnitude).all()


def test_a_whole_pwlq_model_predicts_as_the_simulated_one() -> None:
    hf = small_bert()
    simulated, _ = compress(hf, "pwlq", 8, text_batches(2), options={"act_bits": 8})
    integer = two_branch_model(simulated)
    converted = [m for m in integer.modules() if isinstance(m, TwoBranchLinear)]
    assert len(converted) == sum(isinstance(m, nn.Linear) for m in simulated.modules()) > 0
    batches = text_batches(40, first_id=1)  # 320 sequences
    same = torch.cat([logits(simulated, b).argmax(-1) == logits(integer, b).argmax(-1) for b in batches])
    assert same.float().mean() >= 0.995
    assert max((logits(simulated, b) - logits(integer, b)).abs().max() for b in batches[:4]) < 1e-3


def test_a_model_without_input_quantizers_names_act_bits() -> None:
    simulated, _ = compress(small_bert(), "pwlq", 8, text_batches(1))  # act_bits 0: float inputs
    with pytest.raises(ValueError, match="act_bits"):
        two_branch_model(simulated)
