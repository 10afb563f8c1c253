"""Scaling-law fits: a compute power law L(C) and the parametric law L(N, D), with bootstrap confidence intervals.

**Power law in compute** (ArchScale; REFERENCE §7): L(C) = A · C^(−b) + C0 with C = 6 · N · T training FLOPs,
fitted by bounded least squares on the loss (b ≥ 0, 0 ≤ C0 ≤ min L). C0 is the irreducible loss, b the exponent;
``flops_for_loss(L)`` inverts the curve: C = (A / (L − C0))^(1/b). :func:`compare_power_laws` tabulates families
(irreducible loss, exponent, compute to reach a loss and its ratio to a reference family).

**Parametric law** (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3):
L(N, D) = E + A/N^α + B/D^β, fitted as Besiroglu et al. 2024 ("Chinchilla Scaling: A replication attempt")
describe: minimise Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L), δ = 1e-3, over (a, b, e, α, β) with
A = e^a, B = e^b, E = e^e, by L-BFGS from a grid of starts (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1},
a, b ∈ {0, 5, …, 25}). The objective is evaluated at all 4 500 grid points (vectorised); by default L-BFGS runs
from the 64 best of them (``starts="all"`` runs from every one, as the paper does; on the Chinchilla points both
reach the same optimum).

**Bootstrap**: ``bootstrap=K`` refits K resamples of the points (with replacement) and reports percentile
intervals (``ci``) for every parameter; the resampled parameters are kept in ``samples`` for derived quantities.

Plots need matplotlib (``pip install 'archscale[plot]'``). Only numpy and scipy are needed to fit.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from archscale.plotting import pyplot, save_figure

__all__ = [
    "PowerLawFit",
    "ParametricFit",
    "fit_power_law",
    "fit_parametric",
    "compare_power_laws",
    "plot_power_laws",
    "plot_parametric",
    "read_csv_columns",
    "lbfgs",
]

ArrayLike = Sequence[float] | np.ndarray


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class PowerLawFit:
    """L(C) = A · C^(−b) + C0; ``ci`` maps a parameter to its bootstrap interval."""

    A: float
    b: float
    C0: float
    n_points: int
    rss: float  # residual sum of squares of the loss
    label: str = ""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False)  # (K, 3): A, b, C0 per bootstrap resample
    confidence: float = 0.95

    @property
    def params(self) -> dict[str, float]:
        return {"A": self.A, "b": self.b, "C0": self.C0}

    def predict(self, flops: ArrayLike | float) -> np.ndarray:
        return self.A * np.asarray(flops, dtype=float) ** (-self.b) + self.C0

    def flops_for_loss(self, loss: float) -> float:
        """Compute C at which the curve reaches ``loss`` (inf when loss ≤ C0, the irreducible loss)."""
        return _flops_for_loss(self.A, self.b, self.C0, loss)

    def flops_for_loss_ci(self, loss: float) -> tuple[float, float] | None:
        """Bootstrap interval of :meth:`flops_for_loss` (None without bootstrap)."""
        if self.samples is None or not len(self.samples):
            return None
        vals = np.array([_flops_for_loss(a, b, c, loss) for a, b, c in self.samples])
        return _interval(vals, self.confidence)

    def __str__(self) -> str:
        return _describe(self.label or "power law", self.params, self.ci, f"L(C) = A·C^(−b) + C0, {self.n_points} points")


@dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A/N^α + B/D^β; ``ci`` maps a parameter to its bootstrap interval."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n_points: int
    objective: float  # Σ Huber on log-loss at the optimum
    label: str = ""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False)  # (K, 5): E, A, B, alpha, beta
    confidence: float = 0.95

    @property
    def params(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    def predict(self, n_params: ArrayLike | float, n_tokens: ArrayLike | float) -> np.ndarray:
        n, d = np.asarray(n_params, dtype=float), np.asarray(n_tokens, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal_allocation(self, flops: ArrayLike | float) -> tuple[np.ndarray, np.ndarray]:
        """Compute-optimal (N, D) under C = 6·N·D (Hoffmann et al. 2022, eq. 4):
        N = G·(C/6)^(β/(α+β)), D = G⁻¹·(C/6)^(α/(α+β)), G = (αA / (βB))^(1/(α+β))."""
        c = np.asarray(flops, dtype=float) / 6.0
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        return g * c ** (self.beta / s), c ** (self.alpha / s) / g

    def __str__(self) -> str:
        return _describe(self.label or "parametric", self.params, self.ci,
                         f"L(N, D) = E + A/N^α + B/D^β, {self.n_points} points")


def _describe(title: str, params: Mapping[str, float], ci: Mapping[str, tuple[float, float]], what: str) -> str:
    parts = []
    for k, v in params.items():
        s = f"{k} = {v:.4g}"
        if k in ci:
            s += f" [{ci[k][0]:.4g}, {ci[k][1]:.4g}]"
        parts.append(s)
    return f"{title}: {', '.join(parts)}  ({what})"


def _flops_for_loss(A: float, b: float, C0: float, loss: float) -> float:
    if loss <= C0 or b <= 0:
        return math.inf
    try:
        return float((A / (loss - C0)) ** (1.0 / b))
    except OverflowError:  # a near-flat fit (b → 0): the loss is out of reach at any finite compute
        return math.inf


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    lo = (1.0 - confidence) / 2.0
    finite = values[np.isfinite(values)]
    if len(finite) < len(values) / 2:  # mostly unreachable: report the interval as open
        return (float(np.quantile(finite, lo)) if len(finite) else math.inf, math.inf)
    return float(np.quantile(values, lo)), float(np.quantile(values, 1.0 - lo))


def _check(*arrays: ArrayLike, names: Sequence[str]) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=float).ravel() for a in arrays]
    n = len(out[0])
    for a, name in zip(out, names):
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} values, {names[0]} has {n}: give one value per point")
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name} must be finite and > 0 (got {a[~np.isfinite(a) | (a <= 0)][:3]} ...)")
    return out


# --------------------------------------------------------------------------------------------- power law
def fit_power_law(
    flops: ArrayLike,
    loss: ArrayLike,
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    label: str = "",
) -> PowerLawFit:
    """Fit L(C) = A · C^(−b) + C0 to (FLOPs, loss) points by bounded least squares (see the module docstring).

    >>> c = np.logspace(19, 22, 6); fit = fit_power_law(c, 49.64 * c**-0.0745 + 0.64)
    >>> round(fit.A, 2), round(fit.b, 4), round(fit.C0, 2)
    (49.64, 0.0745, 0.64)
    """
    c, y = _check(flops, loss, names=("flops", "loss"))
    if len(c) < 3:
        raise ValueError(f"a power law with an offset has 3 parameters; got only {len(c)} points")
    ref = float(np.mean(np.log(c)))
    A, b, C0, rss = _power_law_lsq(np.log(c) - ref, y, starts=None)
    A = A * math.exp(b * ref)  # undo the centring: A·(C/e^ref)^(−b) = (A·e^(b·ref))·C^(−b)
    samples = None
    ci: dict[str, tuple[float, float]] = {}
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = []
        start = (math.log(A) - b * ref, b, C0)
        for _ in range(bootstrap):
            idx = rng.integers(0, len(c), len(c))
            if len(np.unique(c[idx])) < 3:
                continue
            a_k, b_k, c0_k, _ = _power_law_lsq(np.log(c[idx]) - ref, y[idx], starts=[start])
            draws.append((a_k * math.exp(b_k * ref), b_k, c0_k))
        samples = np.array(draws)
        ci = {k: _interval(samples[:, i], confidence) for i, k in enumerate(("A", "b", "C0"))}
    return PowerLawFit(A=A, b=b, C0=C0, n_points=len(c), rss=rss, label=label, ci=ci, samples=samples,
                       confidence=confidence)


def _power_law_lsq(x: np.ndarray, y: np.ndarray, starts: list[tuple[float, float, float]] | None
                   ) -> tuple[float, float, float, float]:
    """Least squares of y = exp(la − b·x) + C0 over (la, b, C0), b ∈ [0, 10], C0 ∈ [0, min y]; x = log C − ref."""
    from scipy.optimize import least_squares

    def residual(t: np.ndarray) -> np.ndarray:
        return np.exp(t[0] - t[1] * x) + t[2] - y

    def jac(t: np.ndarray) -> np.ndarray:
        e = np.exp(t[0] - t[1] * x)
        return np.stack([e, -e * x, np.ones_like(x)], axis=1)

    ymin = float(y.min())
    if starts is None:
        starts = [(math.log(max(float(y.mean()) - c0, 1e-8)), b0, c0)
                  for b0 in (0.02, 0.05, 0.1, 0.2, 0.5) for c0 in (0.0, 0.5 * ymin, 0.9 * ymin)]
    lower, upper = [-np.inf, 0.0, 0.0], [np.inf, 10.0, ymin]
    best = None
    for s in starts:
        x0 = np.clip(np.array(s, dtype=float), [-1e6, 0.0, 0.0], [1e6, 10.0, ymin * (1 - 1e-12)])
        r = least_squares(residual, x0, jac=jac, bounds=(lower, upper), xtol=1e-15, ftol=1e-15, gtol=1e-15,
                          max_nfev=5000)
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    la, b, c0 = best.x
    return float(math.exp(la)), float(b), float(c0), float(2 * best.cost)


# --------------------------------------------------------------------------------------------- parametric
_GRID = {
    "alpha": np.arange(0.0, 2.5, 0.5),
    "beta": np.arange(0.0, 2.5, 0.5),
    "e": np.arange(-1.0, 1.5, 0.5),
    "a": np.arange(0.0, 30.0, 5.0),
    "b": np.arange(0.0, 30.0, 5.0),
}


def fit_parametric(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    *,
    delta: float = 1e-3,
    starts: int | str = 64,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    label: str = "",
) -> ParametricFit:
    """Fit L(N, D) = E + A/N^α + B/D^β (Huber on log-loss, L-BFGS from a grid; see the module docstring).

    ``starts``: how many of the best grid points (by initial objective) L-BFGS starts from, or "all".
    Returns a :class:`ParametricFit` with E, A, B, alpha, beta (and bootstrap ``ci`` when ``bootstrap`` > 0).
    """
    n, d, y = _check(n_params, n_tokens, loss, names=("n_params", "n_tokens", "loss"))
    if len(n) < 5:
        raise ValueError(f"the parametric law has 5 parameters; got only {len(n)} points")
    ln, ld, ly = np.log(n), np.log(d), np.log(y)
    grid = np.array(list(itertools.product(_GRID["a"], _GRID["b"], _GRID["e"], _GRID["alpha"], _GRID["beta"])))
    if starts == "all":
        chosen = grid
    elif isinstance(starts, int) and starts > 0:
        values = _huber_objective_batch(grid, ln, ld, ly, delta)
        chosen = grid[np.argsort(values, kind="stable")[:starts]]
    else:
        raise ValueError(f"starts must be a positive number of grid points or 'all', got {starts!r}")
    theta, obj = _best_of(chosen, ln, ld, ly, delta)

    samples = None
    ci: dict[str, tuple[float, float]] = {}
    if bootstrap:
        rng = np.random.default_rng(seed)
        few = grid[np.argsort(_huber_objective_batch(grid, ln, ld, ly, delta), kind="stable")[:4]]
        draws = []
        for _ in range(bootstrap):
            idx = rng.integers(0, len(n), len(n))
            t_k, _ = _best_of(np.vstack([theta[None, :], few]), ln[idx], ld[idx], ly[idx], delta)
            draws.append(_natural(t_k))
        samples = np.array(draws)
        ci = {k: _interval(samples[:, i], confidence) for i, k in enumerate(("E", "A", "B", "alpha", "beta"))}
    E, A, B, alpha, beta = _natural(theta)
    return ParametricFit(E=E, A=A, B=B, alpha=alpha, beta=beta, n_points=len(n), objective=obj, label=label,
                         ci=ci, samples=samples, confidence=confidence)


def _natural(theta: np.ndarray) -> tuple[float, float, float, float, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return math.exp(e), math.exp(a), math.exp(b), alpha, beta


def _best_of(starts: np.ndarray, ln: np.ndarray, ld: np.ndarray, ly: np.ndarray, delta: float
             ) -> tuple[np.ndarray, float]:
    fun = _huber_objective(ln, ld, ly, delta)
    best_x, best_f = None, math.inf
    for s in starts:
        x, f = lbfgs(fun, np.asarray(s, dtype=float))
        if f < best_f:
            best_x, best_f = x, f
    assert best_x is not None
    return best_x, best_f


def _huber_objective(ln: np.ndarray, ld: np.ndarray, ly: np.ndarray, delta: float
                     ) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """θ = (a, b, e, α, β) -> (Σ Huber_δ(LSE(a − α·lnN, b − β·lnD, e) − lnL), gradient)."""

    def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, e, alpha, beta = t
        z = np.stack([a - alpha * ln, b - beta * ld, np.full_like(ln, e)])  # (3, n)
        m = z.max(axis=0)
        w = np.exp(z - m)
        s = w.sum(axis=0)
        r = m + np.log(s) - ly  # log predicted - log observed
        w = w / s  # softmax weights: dLSE/dz
        small = np.abs(r) <= delta
        f = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
        g = np.where(small, r, delta * np.sign(r))
        grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                         -(g * w[0] * ln).sum(), -(g * w[1] * ld).sum()])
        return float(f), grad

    return fun


def _huber_objective_batch(thetas: np.ndarray, ln: np.ndarray, ld: np.ndarray, ly: np.ndarray, delta: float
                           ) -> np.ndarray:
    """The objective at many θ at once: (S, 5) -> (S,)."""
    a, b, e, alpha, beta = (thetas[:, i : i + 1] for i in range(5))
    z1, z2 = a - alpha * ln[None, :], b - beta * ld[None, :]
    z3 = np.broadcast_to(e, z1.shape)
    m = np.maximum(np.maximum(z1, z2), z3)
    r = m + np.log(np.exp(z1 - m) + np.exp(z2 - m) + np.exp(z3 - m)) - ly[None, :]
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(axis=1)


def lbfgs(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    *,
    memory: int = 10,
    gtol: float = 1e-10,
    ftol: float = 1e-15,
    max_iter: int = 2000,
) -> tuple[np.ndarray, float]:
    """Minimise ``fun`` (value and gradient) by L-BFGS (Nocedal & Wright, Algorithm 7.4: two-loop recursion)
    with a backtracking Armijo line search. Stops when the largest gradient entry is below ``gtol``, when the
    objective has changed by less than ``ftol`` (relative) three iterations running, or after ``max_iter``.

    A plain numpy implementation for small problems (a handful of parameters): no BLAS calls, so it does not
    slow down when the machine's cores are oversubscribed, unlike SciPy's L-BFGS-B on tiny vectors.
    """
    x = np.array(x0, dtype=float)
    f, g = fun(x)
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    flat = 0
    for _ in range(max_iter):
        if not np.isfinite(f) or np.max(np.abs(g)) < gtol:
            break
        # Two-loop recursion: d = −H·g with H the L-BFGS inverse-Hessian estimate.
        q = g.copy()
        coeffs = []
        for s, y in zip(reversed(S), reversed(Y)):
            rho = 1.0 / float(y @ s)
            alpha = rho * float(s @ q)
            q -= alpha * y
            coeffs.append((rho, alpha))
        gamma = float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1]) if S else 1.0 / max(1.0, float(np.linalg.norm(g)))
        r = gamma * q
        for (s, y), (rho, alpha) in zip(zip(S, Y), reversed(coeffs)):
            r += s * (alpha - rho * float(y @ r))
        d = -r
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            S.clear(), Y.clear()
            d = -g / max(1.0, float(np.linalg.norm(g)))
            slope = float(g @ d)
        step = 1.0
        while True:
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-20:
                return x, f
        s_k, y_k = x_new - x, g_new - g
        if float(s_k @ y_k) > 1e-12 * float(np.linalg.norm(s_k)) * float(np.linalg.norm(y_k)):
            S.append(s_k)
            Y.append(y_k)
            if len(S) > memory:
                S.pop(0), Y.pop(0)
        flat = flat + 1 if abs(f - f_new) <= ftol * max(abs(f), abs(f_new), 1e-300) else 0
        x, f, g = x_new, f_new, g_new
        if flat >= 3:
            break
    return x, f


# --------------------------------------------------------------------------------------------- compare, plot
def compare_power_laws(
    fits: Mapping[str, PowerLawFit] | Sequence[PowerLawFit],
    *,
    target_loss: float | None = None,
    reference: str | None = None,
) -> str:
    """A table of families: irreducible loss C0, exponent b, A, and (with ``target_loss``) the compute C needed
    to reach it and its ratio to the ``reference`` family (default: the first). Bootstrap intervals in brackets."""
    items = list(fits.items()) if isinstance(fits, Mapping) else [(f.label or f"fit {i}", f) for i, f in enumerate(fits)]
    if not items:
        return "(no fits)"
    ref_name = reference if reference is not None else items[0][0]
    ref = dict(items).get(ref_name)
    if ref is None:
        raise ValueError(f"reference {ref_name!r} is not one of {[k for k, _ in items]}")
    header = ["family", "C0 (irreducible)", "b (exponent)", "A", "points"]
    if target_loss is not None:
        header += [f"C for L={target_loss:g}", f"× {ref_name}"]
    rows = [header]
    for name, f in items:
        row = [name, _with_ci(f.C0, f.ci.get("C0")), _with_ci(f.b, f.ci.get("b")), _with_ci(f.A, f.ci.get("A")),
               str(f.n_points)]
        if target_loss is not None:
            c = f.flops_for_loss(target_loss)
            row += [_with_ci(c, f.flops_for_loss_ci(target_loss)),
                    f"{c / ref.flops_for_loss(target_loss):.3g}" if math.isfinite(c) else "inf"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _with_ci(v: float, ci: tuple[float, float] | None) -> str:
    s = f"{v:.4g}" if math.isfinite(v) else "inf"
    if ci is not None:
        s += f" [{ci[0]:.3g}, {ci[1]:.3g}]"
    return s


def plot_power_laws(
    fits: Mapping[str, PowerLawFit],
    path: str | Path,
    *,
    points: Mapping[str, tuple[ArrayLike, ArrayLike]] | None = None,
    target_loss: float | None = None,
    title: str = "",
) -> Path:
    """Loss against training FLOPs (log x): each family's points and fitted curve, C0 as a dotted line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    lo, hi = math.inf, -math.inf
    for name, (xs, _) in (points or {}).items():
        lo, hi = min(lo, float(np.min(xs))), max(hi, float(np.max(xs)))
    if not math.isfinite(lo):
        lo, hi = 1e18, 1e22
    grid = np.logspace(math.log10(lo) - 0.3, math.log10(hi) + 0.5, 200)
    for name, f in fits.items():
        (line,) = ax.plot(grid, f.predict(grid), label=f"{name}: {f.A:.4g}·C^-{f.b:.3g} + {f.C0:.3g}")
        ax.axhline(f.C0, color=line.get_color(), linestyle=":", linewidth=0.8)
        if points and name in points:
            ax.scatter(*points[name], color=line.get_color(), s=18, zorder=3)
    if target_loss is not None:
        ax.axhline(target_loss, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs C = 6·N·T")
    ax.set_ylabel("loss")
    ax.set_title(title or "L(C) = A·C^(−b) + C0")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_parametric(
    fit: ParametricFit, path: str | Path, *, n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike, title: str = ""
) -> Path:
    """Observed against predicted loss for the parametric fit, coloured by model size."""
    plt = pyplot()
    n, d, y = (np.asarray(v, dtype=float) for v in (n_params, n_tokens, loss))
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    pred = fit.predict(n, d)
    sc = ax.scatter(pred, y, c=np.log10(n), s=14, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log10 N")
    lim = [min(pred.min(), y.min()), max(pred.max(), y.max())]
    ax.plot(lim, lim, color="gray", linewidth=0.8)
    ax.set_xlabel("predicted loss")
    ax.set_ylabel("observed loss")
    p = fit.params
    ax.set_title(title or f"E={p['E']:.3g} A={p['A']:.4g} B={p['B']:.4g} α={p['alpha']:.3g} β={p['beta']:.3g}",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------- CSV
def read_csv_columns(path: str | Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Float columns of a CSV file by header name (a clear error names the missing column and the ones there).
    Rows where any requested column is empty or not a number are dropped."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))}; columns: {', '.join(header)}")
        values: dict[str, list[float]] = {c: [] for c in columns}
        for row in reader:
            try:
                parsed = [float(row[c]) for c in columns]
            except (TypeError, ValueError):
                continue
            if all(math.isfinite(v) for v in parsed):
                for c, v in zip(columns, parsed):
                    values[c].append(v)
    return {c: np.array(v) for c, v in values.items()}
