"""Curve fits: the Chinchilla replication (Besiroglu et al. 2024), recovery of the REFERENCE §7 v1 curves, bootstrap
intervals, family comparison, and the small L-BFGS."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from archscale.scaling import fit_parametric, fit_power_law
from archscale.scaling.fit import (
    PowerLawFit,
    compare_power_laws,
    lbfgs,
    plot_parametric,
    plot_power_laws,
    read_csv_columns,
)

CHINCHILLA = Path(__file__).resolve().parents[1] / "data_files" / "chinchilla_hoffmann2022_fig4.csv"

# REFERENCE §7: ArchScale v1 fits of L(C) = A·C^(−b) + C0.
V1_CURVES = {
    "Transformer++ SP": (239.9, 0.115, 1.11),
    "Transformer++ μP++": (49.64, 0.0745, 0.64),
    "Samba+YOCO μP++": (40.57, 0.070, 0.61),
    "SambaY μP++": (39.79, 0.069, 0.58),
}
FLOPS = np.logspace(18.9, 21.9, 7)  # ≈ the d8 … d24 range of ArchScale's runs


def chinchilla_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cols = read_csv_columns(CHINCHILLA, ["Model Size", "Training FLOP", "loss"])
    n, c, loss = cols["Model Size"], cols["Training FLOP"], cols["loss"]
    assert len(loss) == 245
    keep = np.argsort(loss, kind="stable")[:-5]  # the 5 highest-loss points left out
    n, c, loss = n[keep], c[keep], loss[keep]
    return n, c / (6 * n), loss  # D = FLOP / 6N


def test_chinchilla_parametric_fit_matches_the_published_replication() -> None:
    n, d, loss = chinchilla_points()
    fit = fit_parametric(n, d, loss)
    # Besiroglu et al. 2024: E = 1.82, A = 482.0, B = 2085.4, α = 0.348, β = 0.366.
    assert fit.E == pytest.approx(1.82, abs=0.02)
    assert fit.alpha == pytest.approx(0.348, abs=0.01)
    assert fit.beta == pytest.approx(0.366, abs=0.01)
    assert fit.A == pytest.approx(482.0, rel=0.05) and fit.B == pytest.approx(2085.4, rel=0.05)
    assert fit.params.keys() == {"E", "A", "B", "alpha", "beta"}
    # The fitted law reproduces the points to within a few percent in loss.
    assert np.median(np.abs(fit.predict(n, d) / loss - 1)) < 0.02


def test_chinchilla_bootstrap_intervals_contain_the_estimate() -> None:
    n, d, loss = chinchilla_points()
    fit = fit_parametric(n, d, loss, bootstrap=12, seed=1, starts=8)
    assert fit.samples is not None and fit.samples.shape == (12, 5)
    for k, v in fit.params.items():
        lo, hi = fit.ci[k]
        assert lo <= v <= hi and lo < hi, k
    assert fit.ci["alpha"][1] - fit.ci["alpha"][0] < 0.2


@pytest.mark.parametrize("family", list(V1_CURVES))
def test_power_law_recovers_the_v1_curves(family: str) -> None:
    A, b, C0 = V1_CURVES[family]
    fit = fit_power_law(FLOPS, A * FLOPS**-b + C0, label=family)
    assert fit.A == pytest.approx(A, rel=1e-4)
    assert fit.b == pytest.approx(b, rel=1e-5)
    assert fit.C0 == pytest.approx(C0, rel=1e-5)
    assert fit.rss < 1e-16


def test_power_law_with_noise_has_intervals_covering_the_truth() -> None:
    A, b, C0 = V1_CURVES["SambaY μP++"]
    rng = np.random.default_rng(0)
    flops = np.logspace(18.9, 21.9, 12)
    loss = (A * flops**-b + C0) * (1 + 0.002 * rng.standard_normal(len(flops)))
    fit = fit_power_law(flops, loss, bootstrap=100, seed=0)
    assert fit.ci["b"][0] <= b <= fit.ci["b"][1]
    assert fit.ci["C0"][0] <= C0 <= fit.ci["C0"][1]
    assert fit.b == pytest.approx(b, rel=0.2)


def test_parametric_fit_recovers_known_parameters() -> None:
    E, A, B, alpha, beta = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al.'s published approach-3 values
    n = np.repeat(np.logspace(7.5, 10, 6), 5)
    d = np.tile(np.logspace(9, 11.5, 5), 6) * (1 + 0.1 * np.arange(30) / 30)
    loss = E + A / n**alpha + B / d**beta
    fit = fit_parametric(n, d, loss, starts=16)
    for got, want in zip((fit.E, fit.A, fit.B, fit.alpha, fit.beta), (E, A, B, alpha, beta)):
        assert got == pytest.approx(want, rel=2e-3)
    # Compute-optimal allocation satisfies C = 6·N·D.
    n_opt, d_opt = fit.optimal_allocation(1e21)
    assert 6 * n_opt * d_opt == pytest.approx(1e21, rel=1e-9)


def test_compare_families_irreducible_loss_exponent_and_compute_to_reach_a_loss() -> None:
    fits = {name: fit_power_law(FLOPS, A * FLOPS**-b + C0) for name, (A, b, C0) in V1_CURVES.items()}
    target = 2.0
    # Compute needed, by hand: C = (A / (L − C0))^(1/b).
    want = (49.64 / (2.0 - 0.64)) ** (1 / 0.0745)
    assert fits["Transformer++ μP++"].flops_for_loss(target) == pytest.approx(want, rel=1e-3)
    assert math.isinf(fits["Transformer++ SP"].flops_for_loss(1.0))  # below its irreducible loss 1.11
    table = compare_power_laws(fits, target_loss=target, reference="Transformer++ μP++")
    lines = table.splitlines()
    assert lines[0].split()[0] == "family" and len(lines) == 5
    sambay = next(line for line in lines if line.startswith("SambaY"))
    assert "0.58" in sambay and "0.069" in sambay
    ratio = float(sambay.split()[-1])
    assert ratio == pytest.approx(fits["SambaY μP++"].flops_for_loss(2.0) / want, rel=1e-2)
    assert min(fits, key=lambda k: fits[k].C0) == "SambaY μP++"  # lowest irreducible loss (REFERENCE §8)
    with pytest.raises(ValueError, match="reference"):
        compare_power_laws(fits, target_loss=target, reference="GPT")


def test_plots_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fits = {name: fit_power_law(FLOPS, A * FLOPS**-b + C0) for name, (A, b, C0) in V1_CURVES.items()}
    points = {name: (FLOPS, f.predict(FLOPS)) for name, f in fits.items()}
    p = plot_power_laws(fits, tmp_path / "curves.png", points=points, target_loss=2.0)
    assert p.stat().st_size > 10_000
    n = np.repeat(np.logspace(8, 10, 4), 3)
    d = np.tile(np.logspace(9, 11, 3), 4)
    fit = fit_parametric(n, d, 1.7 + 400 / n**0.34 + 400 / d**0.28, starts=4)
    q = plot_parametric(fit, tmp_path / "parametric.png", n_params=n, n_tokens=d, loss=fit.predict(n, d))
    assert q.stat().st_size > 10_000


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="loss has 2 values, flops has 3"):
        fit_power_law([1e19, 1e20, 1e21], [3.0, 2.5])
    with pytest.raises(ValueError, match="flops must be finite and > 0"):
        fit_power_law([1e19, -1.0, 1e21], [3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match="3 parameters"):
        fit_power_law([1e19, 1e20], [3.0, 2.5])
    with pytest.raises(ValueError, match="starts"):
        fit_parametric(np.ones(6) * 1e8, np.ones(6) * 1e9, np.ones(6) * 3.0, starts=0)
    with pytest.raises(ValueError, match="no column 'N'"):
        read_csv_columns(CHINCHILLA, ["N"])


def test_lbfgs_minimises_rosenbrock() -> None:
    def rosen(x: np.ndarray) -> tuple[float, np.ndarray]:
        f = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
        g = np.array([-400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]), 200 * (x[1] - x[0] ** 2)])
        return f, g

    x, f = lbfgs(rosen, np.array([-1.2, 1.0]))
    assert np.allclose(x, [1.0, 1.0], atol=1e-6) and f < 1e-12


def test_compute_for_a_loss_of_a_near_flat_fit_is_infinite_not_an_overflow() -> None:
    # A fitted exponent b → 0 (e.g. tiny toy runs with no trend) makes (A/(L − C0))^(1/b) overflow a float.
    fit = PowerLawFit(A=5.0, b=1e-26, C0=1.0, n_points=3, rss=0.0)
    assert fit.flops_for_loss(3.0) == math.inf
    assert fit.flops_for_loss(0.5) == math.inf  # below the irreducible loss
    assert PowerLawFit(A=100.0, b=0.5, C0=1.0, n_points=3, rss=0.0).flops_for_loss(2.0) == pytest.approx(1e4)
