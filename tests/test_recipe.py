"""Recipe validation (errors name the field) and resolve (numbers, rules, JSON round trip)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from archscale.recipe import Recipe, RecipeError, ResolvedRecipe, apply_overrides, build_recipe, resolve
from archscale.recipes import default


def tiny(**budget: object) -> Recipe:
    """A tiny transformer recipe; budget defaults to 10 steps unless another length is given."""
    lengths = {"tokens", "steps", "tokens_per_param"}
    full = {"global_batch_tokens": 256, "micro_batch_size": 4, **budget}
    if not lengths & set(budget):
        full["steps"] = 10
    return Recipe(
        name="t",
        model={"name": "transformer", "params": {"depth": 2, "n_embd": 64, "n_head": 4, "head_dim": 16,
                                                 "n_kv_head": 2, "vocab_size": 512}},
        data={"seq_len": 32},
        budget=full,
    )


def recipe_error(data: dict) -> str:
    with pytest.raises(RecipeError) as err:
        build_recipe(data)
    return str(err.value)


def test_default_recipe_is_valid_and_strict() -> None:
    r = default()
    assert r.model.name == "transformer" and r.model.params["depth"] == 4
    assert r.parametrization.name == "sp" and r.optimizer.name == "adamw"


def test_typo_in_top_level_field_names_it_and_suggests() -> None:
    data = default().model_dump(mode="json")
    data["optimiser"] = data.pop("optimizer")
    msg = recipe_error(data)
    assert "optimiser: unknown field; did you mean optimizer?" in msg


def test_typo_in_nested_field_names_the_path() -> None:
    data = default().model_dump(mode="json")
    data["budget"]["micro_batch"] = 4
    msg = recipe_error(data)
    assert "budget.micro_batch: unknown field; did you mean micro_batch_size?" in msg


def test_typo_in_entry_params_is_checked_against_the_entry_config() -> None:
    data = default().model_dump(mode="json")
    data["model"]["params"]["depht"] = 4
    msg = recipe_error(data)
    assert "model:" in msg and "params.depht: unknown field; did you mean depth?" in msg


def test_wrong_type_names_field_and_value() -> None:
    data = default().model_dump(mode="json")
    data["budget"]["steps"] = "many"
    msg = recipe_error(data)
    assert "budget.steps" in msg and "'many'" in msg
    data = default().model_dump(mode="json")
    data["model"]["params"]["depth"] = "deep"
    assert "params.depth" in recipe_error(data)


def test_unknown_registry_name_lists_close_matches() -> None:
    data = default().model_dump(mode="json")
    data["model"]["name"] = "transfomer"
    msg = recipe_error(data)
    assert "Unknown architecture 'transfomer'. Did you mean: transformer" in msg
    data = default().model_dump(mode="json")
    data["schedule"]["name"] = "cosin"
    assert "Unknown schedule 'cosin'. Did you mean: cosine?" in recipe_error(data)


def test_budget_needs_exactly_one_length() -> None:
    data = default().model_dump(mode="json")
    data["budget"]["tokens"] = 1000
    assert "exactly one of tokens, steps, tokens_per_param" in recipe_error(data)


def test_direct_construction_raises_pydantic_error_with_field() -> None:
    with pytest.raises(ValidationError, match="optimizer"):
        Recipe(model="transformer", budget={"steps": 1}, optimizer={"name": "adamw", "lr": -1})


def test_overrides_apply_and_validate() -> None:
    r = apply_overrides(default(), ["optimizer.lr=1e-3", "model.params.depth=2", "name=other", "system.compile=false"])
    assert r.optimizer.lr == 1e-3 and r.model.params["depth"] == 2 and r.name == "other"
    assert r.system.compile is False
    with pytest.raises(RecipeError, match="optimizer has no field 'learning_rate'"):
        apply_overrides(default(), ["optimizer.learning_rate=1"])
    with pytest.raises(RecipeError, match="did you mean depth"):
        apply_overrides(default(), ["model.params.dpth=2"])
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides(default(), ["optimizer.lr"])
    with pytest.raises(RecipeError, match="optimizer.lr"):
        apply_overrides(default(), ["optimizer.lr=fast"])


def test_resolve_batch_steps_and_rules() -> None:
    r = resolve(tiny(), world_size=1)
    assert r["global_batch_tokens"] == 256 and r["grad_accum_steps"] == 2  # 256 / (1 × 4 × 32)
    assert r["steps"] == 10 and r["tokens"] == 2560
    assert "micro" in r.values["grad_accum_steps"].rule
    r2 = resolve(tiny(), world_size=2)
    assert r2["grad_accum_steps"] == 1 and r2["global_batch_tokens"] == 256
    r3 = resolve(tiny(), world_size=4)  # one micro-batch per device is already 512 tokens: rounds up
    assert r3["grad_accum_steps"] == 1 and r3["global_batch_tokens"] == 512


def test_resolve_tokens_per_param_uses_the_named_convention() -> None:
    r = resolve(tiny(tokens_per_param=20.0))
    n = r["N_non_embedding"]
    assert r["steps"] == math.ceil(20 * n / 256)
    assert r["tokens"] == r["steps"] * 256
    assert r["N_all"] > r["N_no_input_embedding"] > r["N_non_embedding"]


def test_resolve_warmup_forms() -> None:
    base = tiny()
    r = resolve(base.model_copy(update={"schedule": base.schedule.model_copy(update={"warmup_tokens": 1000})}))
    assert r["warmup_steps"] == math.ceil(1000 / 256)
    with pytest.raises(ValidationError, match="at most one of"):
        Recipe.model_validate({**base.model_dump(), "schedule": {"warmup_steps": 1, "warmup_fraction": 0.1}})
    too_long = base.model_copy(update={"schedule": base.schedule.model_copy(update={"warmup_steps": 99})})
    with pytest.raises(RecipeError, match="warmup of 99 steps is not shorter than the 10 training steps"):
        resolve(too_long)


def test_resolve_json_round_trip() -> None:
    r = resolve(default(), world_size=2)
    text = r.to_json()
    back = ResolvedRecipe.from_json(text)
    assert back == r
    assert resolve(back.recipe, world_size=back.world_size) == r
    assert back.to_json() == text
    assert "lr_matrix" in r.table()


def test_resolve_per_role_lr_under_sp_equals_recipe_lr() -> None:
    r = resolve(default())
    for role in ("embedding", "head", "matrix", "vector"):
        assert r[f"lr_{role}"] == default().optimizer.lr
        assert r[f"wd_{role}"] == default().optimizer.weight_decay
    assert r["init_std_out_proj"] == pytest.approx(0.02 / math.sqrt(2 * 4))
