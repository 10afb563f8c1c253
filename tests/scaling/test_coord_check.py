"""Coordinate check on CPU: mean |activation| per layer type is flat in width under μP/μP++ and grows under SP."""

from __future__ import annotations

from pathlib import Path

import pytest

from archscale.recipe import Recipe
from archscale.scaling import coord_check
from archscale.scaling.coord_check import counting_tokens, lr_transfer, width_overrides

WIDTHS = [32, 64, 128, 256]


def recipe(parametrization: str, lr: float = 1e-2) -> Recipe:
    return Recipe(
        model={"name": "transformer", "params": {"depth": 2, "n_embd": 32, "n_head": 2, "head_dim": 16,
                                                 "n_kv_head": 1, "vocab_size": 128, "block_size": 32}},
        data={"seq_len": 32},
        parametrization=parametrization,
        optimizer={"lr": lr},
        budget={"steps": 3},
        scaling={"base": {"depth": 2, "width": 32, "head_dim": 16}},
    )


@pytest.fixture(scope="module")
def checks() -> dict[str, object]:
    return {p: coord_check(recipe(p), WIDTHS, steps=3) for p in ("sp", "mup++")}


def test_activations_grow_with_width_under_sp_and_stay_flat_under_mupp(checks: dict) -> None:
    sp, mupp = checks["sp"], checks["mup++"]
    for kind in ("mixer", "mlp"):
        # After 3 Adam steps at a fixed LR, SP's hidden updates grow ∝ width (log-log slope ≈ 1 per step taken).
        assert sp.slope(kind) > 1.0, (kind, sp.slopes())
        assert abs(mupp.slope(kind)) < 0.3, (kind, mupp.slopes())
        assert sp.slope(kind) - mupp.slope(kind) > 1.0
    assert sp.slope("logits") > 0.5 and abs(mupp.slope("logits")) < 0.3
    # At initialisation (step 0) μP++'s zero readout gives zero logits; its hidden activations are already flat.
    assert mupp.stats["logits"][:, 0].max() == 0.0
    assert abs(mupp.slope("mixer", step=0)) < 0.3
    # μP++ trains at every width with the same LR; SP at that LR trains the narrowest model but not the widest.
    assert (mupp.losses[:, -1] < mupp.losses[:, 0]).all()
    assert sp.losses[0, -1] < sp.losses[0, 0] and sp.losses[-1, -1] > sp.losses[-1, 0]


def test_plot_is_written(checks: dict, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    p = checks["mup++"].plot(tmp_path / "cc.png")
    assert p.stat().st_size > 10_000


def test_width_overrides_keep_head_size_and_ratios() -> None:
    r = recipe("sp")
    assert width_overrides(r, 128) == ["model.params.n_embd=128", "model.params.n_head=8", "model.params.n_kv_head=4"]
    with pytest.raises(ValueError, match="not a multiple of head_dim 16"):
        width_overrides(r, 40)
    with pytest.raises(ValueError, match="at least two widths"):
        coord_check(r, [32])


def test_lr_transfer_records_a_loss_per_width_and_lr() -> None:
    res = lr_transfer(recipe("mup++"), [32, 64], [1e-3, 1e-2, 1e9], steps=4, batch_size=4, average_last=2)
    assert res.losses.shape == (2, 3)
    assert (res.losses[:, 2] == float("inf")).all()  # diverged at an absurd LR
    assert res.best_lr_index()[0] in (0, 1) and res.shift() in (0, 1)
    assert counting_tokens(10, 2, 5, seed=1).shape == (2, 6)
