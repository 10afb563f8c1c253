"""Newton–Schulz orthogonalisation: the map G = U S Vᵀ ↦ ≈ U Vᵀ that Muon applies to each momentum matrix.

An odd matrix polynomial p(X) = a X + b (X Xᵀ) X + c (X Xᵀ)² X acts on the singular values only: if X = U S Vᵀ then
p(X) = U p(S) Vᵀ with the scalar p(σ) = a σ + b σ³ + c σ⁵ applied to each σ. Starting from X₀ = G / ‖G‖_F (so that
every σ ≤ 1) and iterating p drives all non-zero singular values towards 1 while keeping U and V, i.e. towards the
orthogonal polar factor U Vᵀ, with matrix products only (fast in bf16 on tensor cores; no SVD).

Two coefficient choices (REFERENCE.md §5):

- ``"quintic"`` (v1): the same (a, b, c) = (3.4445, −4.7750, 2.0315) at every step (Jordan et al. 2024, "Muon: an
  optimizer for hidden layers"). a is large so that small singular values grow fast; the price is that the
  iteration does not converge to exactly 1 but oscillates in a band (about [0.7, 1.2] once every σ has grown),
  which is harmless for training.
- ``"head"``: ArchScale HEAD's per-step schedule: five different triples, steepest first, so that early steps lift
  small singular values fast and later ones flatten the result close to 1 (the idea of choosing each step's
  polynomial for the singular-value interval the previous steps leave, cf. Amsel et al. 2025, "The Polar
  Express"). With more steps than triples, the last triple repeats.

Any other sequence of (a, b, c) triples may be passed. For a tall input (m > n) the iteration runs on Xᵀ so the
Gram matrix X Xᵀ is the smaller min(m, n)²; the result is transposed back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from archscale.kernels.product_dtype import product_dtype

__all__ = [
    "HEAD_COEFFICIENTS",
    "QUINTIC_COEFFICIENTS",
    "CoefficientsName",
    "coefficient_schedule",
    "newton_schulz",
]

Triple = tuple[float, float, float]
CoefficientsName = Literal["quintic", "head"]

QUINTIC_COEFFICIENTS: Triple = (3.4445, -4.7750, 2.0315)
"""ArchScale v1 / Muon's classic quintic, used at every step."""

HEAD_COEFFICIENTS: tuple[Triple, ...] = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
"""ArchScale HEAD's per-step (a, b, c), one triple per Newton–Schulz step."""


def coefficient_schedule(coefficients: CoefficientsName | Sequence[Sequence[float]], steps: int) -> list[Triple]:
    """The (a, b, c) used at each of ``steps`` steps: a named schedule or explicit triples (the last repeats)."""
    if steps < 1:
        raise ValueError(f"Newton–Schulz needs at least one step, got steps={steps}")
    if isinstance(coefficients, str):
        if coefficients == "quintic":
            return [QUINTIC_COEFFICIENTS] * steps
        if coefficients == "head":
            triples: Sequence[Sequence[float]] = HEAD_COEFFICIENTS
        else:
            raise ValueError(f"Unknown Newton–Schulz coefficients {coefficients!r}; use 'quintic', 'head' or triples")
    else:
        triples = coefficients
    out = [tuple(float(v) for v in t) for t in triples]
    if not out or any(len(t) != 3 for t in out):
        raise ValueError(f"Newton–Schulz coefficients must be (a, b, c) triples, got {coefficients!r}")
    return [out[min(i, len(out) - 1)] for i in range(steps)]  # type: ignore[misc]


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: CoefficientsName | Sequence[Sequence[float]] = "quintic",
    *,
    dtype: torch.dtype | None = torch.bfloat16,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Approximately orthogonalise each matrix of ``G`` (shape (..., m, n); leading dims are a batch).

    Returns a tensor of G's shape and dtype whose matrices have G's singular vectors and singular values near 1
    (see the module docstring; exact zero singular values stay zero). ``dtype``: the precision of the iteration
    (bf16 as in ArchScale; float32 for tests and reproducible distributed comparisons; None = G's dtype).
    A zero matrix maps to zero.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices (..., m, n), got shape {tuple(G.shape)}")
    schedule = coefficient_schedule(coefficients, steps)
    shape = G.shape
    m, n = shape[-2], shape[-1]
    X = G.reshape(-1, m, n)  # (B, m, n)
    if m > n:  # tall: iterate on the wide transpose, so the Gram matrix is n × n
        X = X.mT
    # Frobenius normalisation (in at least float32, for accuracy) puts every singular value in [0, 1].
    X = X.to(torch.promote_types(X.dtype, torch.float32))
    X = (X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)).to(dtype or G.dtype)  # norm: (B, 1, 1)
    # Off CUDA, 16-bit products run in float32 on the same values and are rounded back after each (a GPU's
    # GEMM; PyTorch's CPU bf16 product is a scalar loop on AVX2): see archscale.kernels.product_dtype.
    work = product_dtype(X)
    for a, b, c in schedule:
        Xw = X.to(work)
        A = torch.bmm(Xw, Xw.mT).to(X.dtype)  # (B, k, k), k = min(m, n)
        Aw = A.to(work)
        B = torch.baddbmm(Aw, Aw, Aw, beta=b, alpha=c).to(X.dtype)  # b A + c A²
        X = torch.baddbmm(Xw, B.to(work), Xw, beta=a).to(X.dtype)  # a X + B X
    if m > n:
        X = X.mT
    return X.reshape(shape).to(G.dtype)
