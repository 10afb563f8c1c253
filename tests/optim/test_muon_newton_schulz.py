"""newton_schulz: singular values pulled into a band around 1, singular vectors kept (close to the exact polar factor
U Vᵀ from an SVD), the polynomial applied exactly as written, tall/wide/batched shapes and dtypes."""

from __future__ import annotations

import pytest
import torch

from archscale.optim.newton_schulz import (
    HEAD_COEFFICIENTS,
    QUINTIC_COEFFICIENTS,
    coefficient_schedule,
    newton_schulz,
)

# Rectangular Gaussian matrices are well conditioned (aspect ratio >= 1.5), so every singular value is lifted.
SHAPES = [(96, 32), (32, 96), (4, 48, 80), (2, 3, 40, 24), (256, 64)]


def polar(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Frobenius cosine similarity of each matrix pair."""
    a, b = a.double(), b.double()
    return (a * b).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1)))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_quintic_singular_values_in_band_and_direction_of_polar_factor(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    O = newton_schulz(G, steps=5, coefficients="quintic", dtype=dtype)
    assert O.shape == G.shape and O.dtype == G.dtype
    s = torch.linalg.svdvals(O.double())
    assert s.min() > 0.5 and s.max() < 1.5, (s.min(), s.max())
    assert cosine(O, polar(G)).min() > 0.97
    # The input's singular values were far from 1: the band is the iteration's doing.
    s_in = torch.linalg.svdvals(G.double())
    assert s_in.max() > 3


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_head_schedule_is_tighter(shape: tuple[int, ...]) -> None:
    G = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    O = newton_schulz(G, steps=5, coefficients="head", dtype=torch.float32)
    s = torch.linalg.svdvals(O.double())
    assert s.min() > 0.9 and s.max() < 1.1, (s.min(), s.max())
    assert cosine(O, polar(G)).min() > 0.999


def test_square_matrices_with_spread_spectrum() -> None:
    """Square inputs with singular values spread over [0.02, 1] × scale: all end in the band."""
    gen = torch.Generator().manual_seed(2)
    n = 64
    U, _ = torch.linalg.qr(torch.randn(3, n, n, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(3, n, n, generator=gen))
    s = torch.logspace(-1.7, 0, n).expand(3, n) * 7.0
    G = U @ torch.diag_embed(s) @ V.mT
    O = newton_schulz(G, coefficients="quintic", dtype=torch.float32)
    out = torch.linalg.svdvals(O.double())
    assert out.min() > 0.5 and out.max() < 1.5
    assert cosine(O, U @ V.mT).min() > 0.97


def test_each_step_applies_the_polynomial_to_the_singular_values() -> None:
    """In float64, one step with (a, b, c) maps each singular value σ of G/‖G‖_F to aσ + bσ³ + cσ⁵ and keeps U, V."""
    gen = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(12, 5, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    s = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    G = U @ torch.diag(s) @ V.T  # tall: exercises the transpose
    a, b, c = 1.7, -0.9, 0.3
    O = newton_schulz(G, steps=1, coefficients=[(a, b, c)], dtype=None, eps=0.0)
    x = s / s.norm()
    want = U @ torch.diag(a * x + b * x**3 + c * x**5) @ V.T
    torch.testing.assert_close(O, want, rtol=1e-12, atol=1e-12)
    # Two steps with different triples compose in order.
    O2 = newton_schulz(G, steps=2, coefficients=[(a, b, c), (1.1, 0.2, -0.05)], dtype=None, eps=0.0)
    y = a * x + b * x**3 + c * x**5
    want2 = U @ torch.diag(1.1 * y + 0.2 * y**3 - 0.05 * y**5) @ V.T
    torch.testing.assert_close(O2, want2, rtol=1e-12, atol=1e-12)


def test_transpose_and_batch_consistency() -> None:
    G = torch.randn(3, 20, 36, generator=torch.Generator().manual_seed(4))
    O = newton_schulz(G, dtype=torch.float32)
    torch.testing.assert_close(newton_schulz(G.mT, dtype=torch.float32), O.mT)
    for i in range(3):
        torch.testing.assert_close(newton_schulz(G[i], dtype=torch.float32), O[i], rtol=1e-5, atol=1e-6)


def test_scale_invariant_zero_safe_and_rejects_vectors() -> None:
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(newton_schulz(1e3 * G, dtype=torch.float32), newton_schulz(G, dtype=torch.float32))
    Z = newton_schulz(torch.zeros(8, 4))
    assert torch.equal(Z, torch.zeros(8, 4))
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(7))


def test_bf16_iteration_close_to_fp32_and_keeps_input_dtype() -> None:
    G = torch.randn(64, 160, generator=torch.Generator().manual_seed(6))
    lo = newton_schulz(G, dtype=torch.bfloat16)
    hi = newton_schulz(G, dtype=torch.float32)
    assert lo.dtype == torch.float32
    assert (lo - hi).norm() / hi.norm() < 0.03
    assert newton_schulz(G.bfloat16()).dtype == torch.bfloat16
    assert newton_schulz(G.double(), dtype=None).dtype == torch.float64


def test_coefficient_schedules() -> None:
    assert coefficient_schedule("quintic", 3) == [QUINTIC_COEFFICIENTS] * 3
    assert coefficient_schedule("head", 5) == list(HEAD_COEFFICIENTS)
    assert coefficient_schedule("head", 7)[5:] == [HEAD_COEFFICIENTS[-1]] * 2  # the last triple repeats
    assert coefficient_schedule([(1, 2, 3)], 2) == [(1.0, 2.0, 3.0)] * 2
    with pytest.raises(ValueError, match="Unknown"):
        coefficient_schedule("cubic", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="triples"):
        coefficient_schedule([(1.0, 2.0)], 5)
    with pytest.raises(ValueError, match="at least one"):
        coefficient_schedule("quintic", 0)


def test_bf16_step_rounds_each_product_once_as_a_gpu_gemm_does() -> None:
    """One step's three products are exact products summed in float32 with one rounding of the output to bf16 (a
    GPU's bf16 GEMM; off CUDA they run in float32 on the bf16 values). Against the step with float64 products
    rounded to bf16 after each, the values are bf16 numbers and equal but where a float32 sum lands on the other
    side of a rounding boundary. (Over several steps such one-ulp differences grow: the polynomial's slope at
    small singular values is a ≈ 4, so whole iterations are compared only loosely, above.)"""
    G = torch.randn(3, 48, 80, generator=torch.Generator().manual_seed(7))
    a, b, c = HEAD_COEFFICIENTS[0]
    got = newton_schulz(G, steps=1, coefficients="head", dtype=torch.bfloat16)

    def bf16(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16).double()

    X = bf16(G / (torch.linalg.matrix_norm(G, keepdim=True) + 1e-7))
    A = bf16(X @ X.mT)
    B = bf16(b * A + c * (A @ A))
    want = bf16(a * X + B @ X)
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), bf16(got))  # bf16 values: the iteration did not stay in float32
    assert (got.double() == want).float().mean() > 0.999
    torch.testing.assert_close(got.double(), want, rtol=2**-7, atol=0)  # within one bf16 step anywhere
