"""PWLQ and uniform weight quantizers against answers known by construction or brute force."""

from __future__ import annotations

import pytest
import torch

from trimlab.methods.pwlq.quantizer import (
    bias_correction,
    closed_form_breakpoint,
    pwlq_encode,
    pwlq_error,
    pwlq_quantize,
    pwlq_quantize_rows,
    pwlq_values,
    search_breakpoint,
    uniform_codes,
    uniform_quantize,
)


def laplacian(channels: int = 8, size: int = 4096, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(channels, size, generator=gen) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.05  # Laplace(0, 0.05) by inverse CDF


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def test_pwlq_beats_uniform_at_4_bits_on_a_laplacian() -> None:
    w = laplacian()
    q_pwlq, _ = pwlq_quantize(w, 4)
    assert mse(q_pwlq, w) < 0.5 * mse(uniform_quantize(w, 4), w)


def test_both_schemes_are_near_lossless_at_8_bits() -> None:
    w = laplacian()
    power = float(w.pow(2).mean())
    assert mse(pwlq_quantize(w, 8)[0], w) < 1e-4 * power
    assert mse(uniform_quantize(w, 8), w) < 1e-3 * power


def test_breakpoint_search_finds_the_minimum_of_a_fine_scan() -> None:
    w = laplacian(channels=3, size=2048, seed=1)
    found = search_breakpoint(w, 4)
    max_abs = w.abs().amax(dim=1, keepdim=True)
    scan = torch.linspace(0.001, 0.999, 999)
    errors = torch.stack([pwlq_error(w, 4, f * max_abs, max_abs) for f in scan], dim=1)
    best = errors.min(dim=1).values
    assert (pwlq_error(w, 4, found, max_abs) <= best * 1.02).all()


def test_search_agrees_with_the_papers_laplace_closed_form() -> None:
    w = laplacian(channels=4, size=8192, seed=2)
    max_abs = w.abs().amax(dim=1, keepdim=True)
    searched = pwlq_error(w, 4, search_breakpoint(w, 4), max_abs)
    closed = pwlq_error(w, 4, closed_form_breakpoint(w, "laplace"), max_abs)
    assert (closed <= searched * 1.15).all()  # the approximation is near-optimal


def test_pwlq_with_a_fixed_breakpoint_and_range_is_idempotent() -> None:
    w = laplacian(channels=2, size=512)
    max_abs = w.abs().amax(dim=1, keepdim=True)
    p = closed_form_breakpoint(w)
    once = pwlq_quantize_rows(w, 4, p, max_abs)
    torch.testing.assert_close(pwlq_quantize_rows(once, 4, p, max_abs), once)


def test_uniform_grid_is_the_papers_eq_1() -> None:
    # Eq. 1, symmetric, b = 4: s = (r_u − r_l) / (2^b − 1) = 2m / 15, integers clamped to [−8, 7], z = 0.
    # Row 0: m = 7.5, s = 1: 7.5 → ⌊7.5⌉ = 8 → saturated to 7; −7.5 → −8 (a level uniform's restricted grid lacks).
    # Row 1: m = 3, s = 0.4: 3 → 7.5 → 7 · 0.4 = 2.8; −1.1 → −2.75 → −3 → −1.2; 0.5 → 1.25 → 0.4; 1.3 → 3.25 → 1.2.
    w = torch.tensor([[7.5, -7.5, 0.3, -0.6], [3.0, -1.1, 0.5, 1.3]])
    expected = torch.tensor([[7.0, -8.0, 0.0, -1.0], [2.8, -1.2, 0.4, 1.2]])
    torch.testing.assert_close(uniform_quantize(w, 4), expected)
    codes = uniform_codes(w, 4)
    assert codes.codes.tolist()[0] == [15, 0, 8, 7]  # k + 2^(b−1): 16 levels, zero is the code 8


def test_per_tensor_uniform_takes_one_step_for_the_whole_tensor() -> None:
    w = torch.tensor([[7.5, 0.3], [-1.6, 2.2]])  # m = 7.5, s = 1 for every row
    torch.testing.assert_close(uniform_quantize(w, 4, per_channel=False), torch.tensor([[7.0, 0.0], [-2.0, 2.0]]))


def test_gaussian_closed_form_breakpoint_of_a_tiny_row() -> None:
    # w = [1, −1, 2, −2]: σ = √(10/3) = 1.825742, m̃ = 2/σ = 1.095445,
    # p̃ = ln(0.86143114 · 1.095445 + 0.607901097) = ln(1.551550) = 0.439255, p = p̃ · σ = 0.801967.
    w = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    torch.testing.assert_close(closed_form_breakpoint(w, "gaussian"), torch.tensor([[0.801967]]), rtol=0, atol=1e-5)
    # Laplace: p̃ = 0.80304483 · √1.095445 − 0.31667855 = 0.523815, p = 0.956354.
    torch.testing.assert_close(closed_form_breakpoint(w, "laplace"), torch.tensor([[0.956354]]), rtol=0, atol=1e-5)


def test_pwlq_uses_the_gaussian_closed_form_unless_asked_to_search() -> None:
    w = laplacian(channels=3, size=1000)
    torch.testing.assert_close(pwlq_quantize(w, 4)[1], closed_form_breakpoint(w).flatten())
    torch.testing.assert_close(pwlq_quantize(w, 4, breakpoint="search")[1], search_breakpoint(w, 4).flatten())


@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_uses_at_most_2_to_the_bits_levels_per_channel(symmetric: bool) -> None:
    w = torch.randn(3, 1000)
    q = uniform_quantize(w, 3, symmetric=symmetric)
    assert all(len(torch.unique(row)) <= 8 for row in q)


def test_pwlq_levels_per_region() -> None:
    w = laplacian(channels=1, size=20000)
    q, p = pwlq_quantize(w, 4)
    centre = q[w.abs() <= p[0]]
    tails = q[w.abs() > p[0]]
    assert len(torch.unique(centre)) <= 15 and len(torch.unique(tails.abs())) <= 8


def test_bias_correction_restores_spread_and_offset() -> None:
    w = laplacian(channels=4, size=1000) + torch.tensor([0.01, -0.02, 0.0, 0.03])[:, None]
    q = uniform_quantize(w, 3)
    corrected = bias_correction(w, uniform_codes(w, 3)).dequantize()
    torch.testing.assert_close(corrected.std(dim=1), w.std(dim=1), rtol=1e-4, atol=1e-7)
    expected = (q + w.mean(1, keepdim=True) - q.mean(1, keepdim=True)) * (w.std(1, keepdim=True) / q.std(1, keepdim=True))
    torch.testing.assert_close(corrected, expected)
    assert mse(corrected.mean(1), w.mean(1)) < mse(q.mean(1), w.mean(1))


def test_pwlq_codes_take_one_more_bit_and_decode_to_the_quantized_values() -> None:
    w = laplacian(channels=3, size=1000)
    max_abs = w.abs().amax(dim=1, keepdim=True)
    p = search_breakpoint(w, 4)
    codes = pwlq_encode(w, 4, p, max_abs)
    assert 0 <= int(codes.min()) and int(codes.max()) < 2**5 and int(codes.max()) >= 2**4  # centre codes, then tail codes
    assert torch.equal(pwlq_values(codes, 4, p, max_abs), pwlq_quantize_rows(w, 4, p, max_abs))
