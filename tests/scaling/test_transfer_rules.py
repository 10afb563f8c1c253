"""REFERENCE §4 worked values (ArchScale v1, d0 = 16) reproduced by resolve for Transformer++ and SambaY at d8-d24,
and the other transfer rules (batch rounding with √batch LR, Muon, HEAD options, Chinchilla tokens, conflicts).

Expected numbers are computed by hand from the formulas of REFERENCE §4, not with the library's helpers:
LR_vector = 4e-4·√(16/d), LR_matrix = 4e-4·(16/d)^1.5, tokens = 1e11·N(d)/N(16) ≈ 1e11·(d/16)³,
logits × 16/d, residual branches × 1/√(2d), attention scale √128/128.
"""

from __future__ import annotations

import pytest

from archscale import registry
from archscale.recipe import Recipe, RecipeError, apply_overrides, resolve
from archscale.recipes import archscale_v1

# d: (tokens ≈ 1e11·(d/16)³, LR_vector, LR_matrix, logit multiplier 16/d, residual multiplier 1/√(2d))
WORKED = {
    8: (12.5e9, 5.657e-4, 1.131e-3, 2.0, 0.25),
    12: (42.1875e9, 4.619e-4, 6.158e-4, 1.3333, 0.20412),
    16: (100e9, 4.0e-4, 4.0e-4, 1.0, 0.17678),
    20: (195.3125e9, 3.578e-4, 2.862e-4, 0.8, 0.15811),
    24: (337.5e9, 3.266e-4, 2.177e-4, 0.66667, 0.14434),
}
B0 = 2**21


def v1(family: str, depth: int, *extra: str) -> Recipe:
    return apply_overrides(archscale_v1(), [f"model.name={family}", f"model.params.depth={depth}", *extra])


def check_worked(family: str, depth: int, token_rel: float) -> None:
    tokens, lr_vec, lr_mat, logit, resid = WORKED[depth]
    r = resolve(v1(family, depth))
    assert r["tokens"] == pytest.approx(tokens, rel=token_rel)
    assert r["lr_vector"] == pytest.approx(lr_vec, rel=1e-3)
    assert r["lr_embedding"] == pytest.approx(lr_vec, rel=1e-3) and r["lr_head"] == pytest.approx(lr_vec, rel=1e-3)
    assert r["lr_matrix"] == pytest.approx(lr_mat, rel=1e-3)
    assert r["wd_matrix"] == pytest.approx(0.1)
    assert r["wd_vector"] == r["wd_embedding"] == r["wd_head"] == 0.0
    assert r["global_batch_tokens"] == B0 and r["grad_accum_steps"] == B0 // (2 * 4096)
    assert r["steps"] * B0 >= r["tokens"] - B0
    assert r["warmup_steps"] == 477  # ceil(1e9 / 2²¹)
    assert r["logit_multiplier"] == pytest.approx(logit, rel=1e-4)
    assert r["residual_multiplier"] == pytest.approx(resid, rel=1e-4)
    assert r["attn_scale"] == pytest.approx(128**0.5 / 128)
    assert r["init_std_embedding"] == 1e-4 and r["init_std_head"] == 0.0


@pytest.mark.parametrize("depth", sorted(WORKED))
def test_transformer_worked_values(depth: int) -> None:
    check_worked("transformer", depth, token_rel=2e-3)


def test_transformer_d8_headline_numbers() -> None:
    r = resolve(v1("transformer", 8))
    assert f"{r['tokens'] / 1e9:.1f}B" == "12.5B"
    assert f"{r['lr_vector']:.3g}" == "0.000566" and f"{r['lr_matrix']:.3g}" == "0.00113"
    assert 102 < r["tokens_per_param"] < 104  # "≈103 tokens/param"


@pytest.mark.parametrize("depth", sorted(WORKED))
def test_sambay_worked_values(depth: int) -> None:
    if "sambay" not in registry.architectures:
        pytest.fail("the 'sambay' architecture is not registered (archscale/models/archs*.py)")
    # N(d)/N(d0) of SambaY is (d/16)³ up to its terms linear in width (Mamba's dt rank, conv, norms): ≤ 1.5 %.
    check_worked("sambay", depth, token_rel=1.5e-2)
    # v1's code uses N = c·d³ for every family: tokens="cubic" gives exactly t0·(d/16)³ (rounded up to a step).
    r = resolve(v1("sambay", depth, "scaling.law.params.tokens=cubic"))
    assert 0 <= r["tokens"] - WORKED[depth][0] < B0


def test_plain_mup_and_sp_under_the_same_law() -> None:
    r = resolve(v1("transformer", 8, "parametrization.name=mup"))
    assert r["lr_matrix"] == pytest.approx(4e-4 * 16 / 8) and r["lr_vector"] == pytest.approx(4e-4)
    assert r["wd_vector"] == pytest.approx(0.1) and r["residual_multiplier"] == 1.0
    assert r["logit_multiplier"] == pytest.approx(2.0)
    r = resolve(v1("transformer", 8, "parametrization.name=sp"))
    for role in ("matrix", "vector", "embedding", "head"):
        assert r[f"lr_{role}"] == pytest.approx(4e-4) and r[f"wd_{role}"] == pytest.approx(0.1)
    assert r["logit_multiplier"] == 1.0 and r["init_std_out_proj"] == pytest.approx(0.02 / 4)


def test_batch_rounding_and_sqrt_batch_lr_correction() -> None:
    # world 6 × micro 2 × 4096 = 49 152 tokens per pass; 2²¹ / 49 152 = 42.67.
    r = resolve(v1("transformer", 16), world_size=6)
    assert r["global_batch_tokens"] == 42 * 49152 == 2064384  # v1 rounds down
    assert r["lr"] == pytest.approx(4e-4 * (2064384 / 2**21) ** 0.5)
    assert r["lr_matrix"] == pytest.approx(4e-4 * 0.992157, rel=1e-5)
    r = resolve(v1("transformer", 16, "scaling.law.params.batch_rounding=nearest"), world_size=6)
    assert r["global_batch_tokens"] == 43 * 49152
    assert r["lr"] == pytest.approx(4e-4 * (43 * 49152 / 2**21) ** 0.5)
    r = resolve(v1("transformer", 16, "scaling.law.params.batch=budget", "budget.global_batch_tokens=1048576"))
    assert r["global_batch_tokens"] == 2**20 and r["lr"] == pytest.approx(4e-4 / 2**0.5)


def test_muon_keeps_matrices_at_the_depth_rule_only() -> None:
    entry = registry.optimizers.get("muon")
    assert getattr(entry, "width_independent_matrix_lr", False) is True
    r = resolve(v1("transformer", 8, "optimizer.name=muon"))
    assert r["lr_matrix"] == pytest.approx(4e-4 * (16 / 8) ** 0.5)  # × 1 of the width rule
    assert r["lr_vector"] == pytest.approx(4e-4 * (16 / 8) ** 0.5)


def test_head_options_weight_decay_warmup_and_token_exponent() -> None:
    r = resolve(v1("transformer", 8, "scaling.law.params.weight_decay=inverse_depth", "scaling.law.params.warmup=none",
                   "scaling.law.params.lr_token_exponent=-0.32"))
    assert r["wd_matrix"] == pytest.approx(0.1 * 16 / 8) and r["wd_vector"] == 0.0
    assert r["warmup_steps"] == 0
    t_ratio = 121652224 / 973146112  # N_non_embedding d8 / d16 (tests/models/test_counting.py sizes)
    assert r["lr"] == pytest.approx(4e-4 * t_ratio**-0.32, rel=1e-4)
    r = resolve(v1("transformer", 8, "scaling.law.params.warmup=proportional"))
    assert r["warmup_steps"] == -(-int(1e9 * t_ratio) // B0)


def test_chinchilla_law_gives_20_tokens_per_parameter() -> None:
    r = resolve(v1("transformer", 8, "scaling.law.name=chinchilla"))
    assert r["tokens"] == pytest.approx(20 * 121652224, abs=B0)
    r = resolve(v1("transformer", 8, "scaling.law.name=chinchilla", "scaling.law.params.tokens_per_param=40"))
    assert r["tokens"] == pytest.approx(40 * 121652224, abs=B0)


def test_base_hyperparameters_are_typed_and_move_every_number() -> None:
    r = resolve(v1("transformer", 8, "scaling.base.depth=8", "scaling.base.lr=1e-3", "scaling.base.tokens=2e10"))
    assert r["lr_matrix"] == pytest.approx(1e-3) and r["lr_vector"] == pytest.approx(1e-3)
    assert r["tokens"] == pytest.approx(2e10, abs=B0) and r["logit_multiplier"] == 1.0
    with pytest.raises(RecipeError, match="scaling.base has no field 'eta0'"):
        v1("transformer", 8, "scaling.base.eta0=1")
    with pytest.raises(RecipeError, match="Unknown scaling law 'archscale_v2'. Did you mean: archscale_v1?"):
        v1("transformer", 8, "scaling.law.name=archscale_v2")
    with pytest.raises(RecipeError, match="tokens"):
        v1("transformer", 8, "scaling.law.params.tokens=lots")


def test_law_and_recipe_sections_must_not_both_set_a_number() -> None:
    with pytest.raises(RecipeError, match="budget.steps is set but scaling law 'archscale_v1' sets the token budget"):
        resolve(v1("transformer", 8, "budget.steps=10"))
    with pytest.raises(RecipeError, match="schedule.warmup_fraction is set but scaling law"):
        resolve(v1("transformer", 8, "schedule.warmup_fraction=0.1"))
    # tokens='budget' hands the length back to the budget section, which then must give one.
    r = resolve(v1("transformer", 8, "scaling.law.params.tokens=budget", "budget.steps=1000"))
    assert r["steps"] == 1000 and r["lr_matrix"] == pytest.approx(1.131e-3, rel=1e-3)
    with pytest.raises(RecipeError, match="give exactly one of tokens, steps, tokens_per_param"):
        resolve(v1("transformer", 8, "scaling.law.params.tokens=budget"))
    with pytest.raises(RecipeError, match="give exactly one of tokens, steps, tokens_per_param"):
        apply_overrides(archscale_v1(), ["scaling.law=null"])


def test_without_a_law_optimizer_lr_is_the_base_lr_of_mupp() -> None:
    r = resolve(Recipe(model={"name": "transformer", "params": {"depth": 4, "n_embd": 64, "head_dim": 16}},
                       parametrization="mup++", optimizer={"lr": 1e-2}, budget={"steps": 5},
                       scaling={"base": {"depth": 2, "width": 32, "head_dim": 16}}))
    # d0/d = 1/2, n0/n = 1/2: matrices × √(1/2) · 1/2, vector-like × √(1/2).
    assert r["lr_matrix"] == pytest.approx(1e-2 * 0.5**1.5) and r["lr_vector"] == pytest.approx(1e-2 * 0.5**0.5)
    assert r["logit_multiplier"] == pytest.approx(0.5) and r["residual_multiplier"] == pytest.approx(1 / 8**0.5)
    assert r["lr"] == 1e-2 and r.values["lr"].rule == "optimizer.lr"
