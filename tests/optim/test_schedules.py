"""LR schedules: every entry against its closed-form formula, edge cases, config validation, registry errors.

The expected values are written independently of archscale/optim/schedules.py (exact rational arithmetic where a
phase boundary is involved), so a wrong warmup offset, decay endpoint or stable fraction fails here.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from pydantic import ValidationError

from archscale.optim.schedules import (
    ConstantConfig,
    CosineConfig,
    LinearConfig,
    WSDConfig,
    constant,
    cosine,
    linear,
    lr_multiplier,
    wsd,
)
from archscale.registry import UnknownEntryError, schedules

# (total_steps, warmup_steps, min_lr_ratio): a typical run, no warmup, a long warmup, a one-step decay phase.
CASES = [(100, 10, 0.0), (100, 10, 0.1), (57, 0, 0.0), (40, 30, 0.25), (8, 7, 0.0), (1, 0, 0.0)]


def steps_for(total: int) -> range:
    return range(0, total + 15)  # past the end too: must clamp


# ----------------------------------------------------------------------------------------- closed forms
def warmup_formula(step: int, warmup: int) -> float:
    return (step + 1) / warmup


def linear_formula(step: int, total: int, warmup: int, m: float) -> float:
    if step < warmup:
        return warmup_formula(step, warmup)
    remaining = max(0, total - step) / (total - warmup)  # 1 at step == warmup, 0 at step >= total
    return m + (1 - m) * remaining


def cosine_formula(step: int, total: int, warmup: int, m: float) -> float:
    if step < warmup:
        return warmup_formula(step, warmup)
    p = min(step - warmup, total - warmup) / (total - warmup)
    return m + (1 - m) * (1 + math.cos(math.pi * p)) / 2


def wsd_formula(step: int, total: int, warmup: int, m: float, stable: Fraction, shape: str) -> float:
    if step < warmup:
        return warmup_formula(step, warmup)
    decay_start = warmup + stable * (total - warmup)  # exact rational: where the stable phase ends
    if step <= decay_start:
        return 1.0
    q = min(Fraction(1), (step - decay_start) / ((1 - stable) * (total - warmup)))
    s = 1 - float(q) if shape == "linear" else 1 - math.sqrt(q)
    return m + (1 - m) * s


# ----------------------------------------------------------------------------------------- formulas
@pytest.mark.parametrize(("total", "warmup", "m"), CASES)
def test_linear_matches_formula(total: int, warmup: int, m: float) -> None:
    f = lr_multiplier("linear", {"min_lr_ratio": m}, total_steps=total, warmup_steps=warmup)
    for step in steps_for(total):
        assert f(step) == pytest.approx(linear_formula(step, total, warmup, m), rel=1e-12, abs=1e-12), step


@pytest.mark.parametrize(("total", "warmup", "m"), CASES)
def test_cosine_matches_formula(total: int, warmup: int, m: float) -> None:
    f = lr_multiplier("cosine", {"min_lr_ratio": m}, total_steps=total, warmup_steps=warmup)
    for step in steps_for(total):
        assert f(step) == pytest.approx(cosine_formula(step, total, warmup, m), rel=1e-12, abs=1e-12), step


@pytest.mark.parametrize(("total", "warmup", "m"), CASES + [(107, 2, 0.0), (1000, 100, 0.05)])
@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
@pytest.mark.parametrize("stable", [Fraction(5, 7), Fraction(1, 2), Fraction(0)])
def test_wsd_matches_formula(total: int, warmup: int, m: float, shape: str, stable: Fraction) -> None:
    cfg = {"min_lr_ratio": m, "decay_shape": shape, "stable_fraction": float(stable)}
    f = lr_multiplier("wsd", cfg, total_steps=total, warmup_steps=warmup)
    for step in steps_for(total):
        expected = wsd_formula(step, total, warmup, m, stable, shape)
        assert f(step) == pytest.approx(expected, rel=1e-12, abs=1e-12), step


@pytest.mark.parametrize(("total", "warmup"), [(100, 10), (57, 0), (8, 7)])
def test_constant_matches_formula(total: int, warmup: int) -> None:
    f = lr_multiplier("constant", {}, total_steps=total, warmup_steps=warmup)
    for step in steps_for(total):
        expected = warmup_formula(step, warmup) if step < warmup else 1.0
        assert f(step) == pytest.approx(expected, rel=1e-12, abs=0), step


def test_wsd_default_is_five_sevenths_stable_then_linear() -> None:
    """REFERENCE §5: stable for 5/7 of the post-warmup steps. 70 post-warmup steps -> 50 at the peak, then 20 down."""
    f = lr_multiplier("wsd", None, total_steps=80, warmup_steps=10)
    post = [f(s) for s in range(10, 80)]
    assert post[:51] == [1.0] * 51  # p = 0 ... 50/70 = 5/7 inclusive
    assert post[51] < 1.0
    assert f(80) == 0.0
    assert WSDConfig().decay_shape == "linear"
    diffs = [post[i] - post[i + 1] for i in range(51, 69)]
    assert max(diffs) - min(diffs) < 1e-12  # linear: equal decrements


def test_functions_are_callable_directly_with_their_config() -> None:
    """The registered convention: f(step, *, total_steps, warmup_steps, config)."""
    assert schedules.get("linear") is linear and schedules.get("wsd") is wsd
    assert linear(5, total_steps=10, warmup_steps=0, config=LinearConfig()) == pytest.approx(0.5)
    assert cosine(5, total_steps=10, warmup_steps=0, config=CosineConfig()) == pytest.approx(0.5)
    assert constant(3, total_steps=10, warmup_steps=4, config=ConstantConfig()) == pytest.approx(1.0)
    assert wsd(0, total_steps=10, warmup_steps=0, config=WSDConfig()) == 1.0


# ----------------------------------------------------------------------------------------- warmup & edges
@pytest.mark.parametrize("name", ["linear", "cosine", "wsd", "constant"])
def test_warmup_convention(name: str) -> None:
    """Step 0 uses 1/W of the peak (not 0); step W-1 reaches the peak; warmup rises linearly."""
    f = lr_multiplier(name, {}, total_steps=100, warmup_steps=4)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0  # first post-warmup step: p = 0, still at the peak


@pytest.mark.parametrize("name", ["linear", "cosine", "wsd", "constant"])
def test_no_warmup_starts_at_peak(name: str) -> None:
    f = lr_multiplier(name, {}, total_steps=10, warmup_steps=0)
    assert f(0) == 1.0


@pytest.mark.parametrize("name", ["linear", "cosine", "wsd"])
def test_decay_is_monotone_and_clamps_after_the_end(name: str) -> None:
    f = lr_multiplier(name, {"min_lr_ratio": 0.1}, total_steps=50, warmup_steps=5)
    values = [f(s) for s in range(5, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] > 0.1  # the last update still uses more than the floor
    assert f(50) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["linear", "cosine", "wsd", "constant"])
@pytest.mark.parametrize(("total", "warmup"), [(10, 10), (10, 25), (0, 0), (5, -1)])
def test_bad_step_counts_raise(name: str, total: int, warmup: int) -> None:
    with pytest.raises(ValueError, match="warmup_steps|total_steps"):
        lr_multiplier(name, {}, total_steps=total, warmup_steps=warmup)


def test_warmup_not_below_total_message_is_clear() -> None:
    with pytest.raises(ValueError, match=r"warmup_steps \(500\) must be smaller than total_steps \(100\)"):
        lr_multiplier("linear", {}, total_steps=100, warmup_steps=500)


def test_negative_step_raises() -> None:
    f = lr_multiplier("linear", {}, total_steps=10, warmup_steps=2)
    with pytest.raises(ValueError, match="step"):
        f(-1)


# ----------------------------------------------------------------------------------------- validation
def test_unknown_schedule_did_you_mean() -> None:
    with pytest.raises(UnknownEntryError, match="Did you mean: cosine"):
        lr_multiplier("cosin", {}, total_steps=10, warmup_steps=0)
    with pytest.raises(UnknownEntryError, match="Unknown schedule 'lineer'.*Did you mean: linear"):
        schedules.get("lineer")


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("linear", {"min_lr_ratio": -1}, "min_lr_ratio"),
        ("cosine", {"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ("linear", {"min_lr_raito": 0.1}, "min_lr_raito"),  # typo'd field: forbidden, not ignored
        ("wsd", {"stable_fraction": 1.0}, "stable_fraction"),
        ("wsd", {"decay_shape": "sqrt"}, "decay_shape"),
        ("constant", {"min_lr_ratio": 0.1}, "min_lr_ratio"),  # would be silently ignored
        ("cosine", {"stable_fraction": 0.5}, "stable_fraction"),  # a wsd field on another schedule
    ],
)
def test_config_errors_name_the_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        lr_multiplier(name, params, total_steps=10, warmup_steps=1)
    assert field in str(info.value)


def test_config_models_are_registered_and_accepted() -> None:
    assert schedules.config_model("wsd") is WSDConfig
    assert schedules.config_model("linear") is LinearConfig
    # A model instance is accepted as is; one of another schedule is re-validated against the right model.
    f = lr_multiplier("wsd", CosineConfig(min_lr_ratio=0.2), total_steps=10, warmup_steps=0)
    assert f(10) == pytest.approx(0.2)
    g = lr_multiplier("wsd", WSDConfig(stable_fraction=0.0), total_steps=10, warmup_steps=0)
    assert g(5) == pytest.approx(0.5)
    for model in (LinearConfig, CosineConfig, WSDConfig, ConstantConfig):
        assert all(f.description for f in model.model_fields.values()), model
