"""Parametrizations applied by the model builder (init, forward multipliers) and by the optimizer router (per-role
LR and weight decay), through the Trainer and load_for_inference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from archscale import registry
from archscale.models.lm import build_model
from archscale.recipe import Recipe, RecipeError, resolve
from archscale.scaling.parametrization import build_model_for, model_spec_for, parametrize
from archscale.train.trainer import Trainer
from scaling_helpers import tiny_recipe  # type: ignore[import-not-found]


def small(parametrization: str, **params: object) -> Recipe:
    return Recipe(
        model={"name": "transformer", "params": {"depth": 2, "n_embd": 64, "n_head": 4, "head_dim": 16,
                                                 "n_kv_head": 2, "vocab_size": 256, **params}},
        parametrization=parametrization,
        budget={"steps": 4},
        scaling={"base": {"depth": 2, "width": 32, "head_dim": 32}},
    )


def test_registered_parametrizations() -> None:
    assert {"sp", "mup", "mup++"} <= set(registry.parametrizations.names())


def test_sp_builds_exactly_the_plain_model() -> None:
    recipe = small("sp")
    torch.manual_seed(3)
    ours = build_model_for(recipe)
    torch.manual_seed(3)
    plain = build_model(recipe.model.entry()(recipe.model.config()))
    for (n, a), (_, b) in zip(ours.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("name", ["mup", "mup++"])
def test_mup_init_by_role(name: str) -> None:
    torch.manual_seed(0)
    model = build_model_for(small(name, vocab_size=4096))
    params = dict(model.named_parameters())
    roles = model.param_roles()
    assert torch.count_nonzero(params["head.weight"]) == 0  # zero readout
    emb = params["embed.weight"]
    assert emb.std().item() == pytest.approx(1e-4, rel=0.05)
    for pname, role in roles.items():
        p = params[pname]
        if role == "matrix":
            fan_in = p.shape[1]
            bound = 1 / math.sqrt(fan_in)
            assert p.abs().max().item() <= bound + 1e-7, pname
            assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15), pname
        elif role == "vector":
            assert torch.all(p == 1), pname  # norm gains keep their module init


def test_mup_tied_embedding_is_the_readout_with_std_0_02() -> None:
    torch.manual_seed(0)
    model = build_model_for(small("mup++", vocab_size=4096, tie_embeddings=True))
    assert model.head is None
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_forward_multipliers_reach_the_built_model() -> None:
    # width 64, base width 32 → logits × 1/2; head_dim 16, hd0 32 → scale √32/16; μP++: branches / √(2·2).
    model = build_model_for(small("mup++"))
    assert model.spec.logit_multiplier == pytest.approx(0.5)
    assert model.spec.residual_multiplier == pytest.approx(0.5)
    assert all(b.residual_multiplier == pytest.approx(0.5) for b in model.blocks)
    assert all(b.mixer.scale == pytest.approx(math.sqrt(32) / 16) for b in model.blocks)
    spec = model_spec_for(small("mup"))
    assert spec.residual_multiplier == 1.0 and spec.logit_multiplier == pytest.approx(0.5)
    sp = model_spec_for(small("sp"))
    assert (sp.logit_multiplier, sp.residual_multiplier, sp.attn_scale) == (1.0, 1.0, None)
    # The resolved numbers are those of the built model.
    r = resolve(small("mup++"))
    assert r["logit_multiplier"] == model.spec.logit_multiplier and r["attn_scale"] == model.blocks[0].mixer.scale


def test_base_width_defaults_to_width_proportional_to_depth() -> None:
    recipe = Recipe.model_validate({**small("mup++").model_dump(), "scaling": {"base": {"depth": 4}}})
    ctx = parametrize(recipe).context
    assert ctx.base_width == 64 * 4 / 2 and ctx.width_ratio == pytest.approx(2.0) and ctx.depth_ratio == 2.0


def test_mixed_attention_head_dims_are_refused_under_mup() -> None:
    from archscale.models.spec import LayerSpec, LMSpec
    from archscale.scaling.laws import BaseHyperparams
    from archscale.scaling.parametrization import attention_head_dim, scale_context

    spec = LMSpec(vocab_size=32, n_embd=32, mlp_hidden=64, layers=[
        LayerSpec(mixer="attention", params={"n_head": 2, "head_dim": 16}),
        LayerSpec(mixer="attention", params={"n_head": 4, "head_dim": 8}),
    ])
    with pytest.raises(ValueError, match="head_dim 8 in layers \\[1\\]; head_dim 16 in layers \\[0\\]"):
        attention_head_dim(spec)
    ctx = scale_context(spec, BaseHyperparams())  # SP never asks for the head dim
    with pytest.raises(ValueError, match="attention layers differ"):
        ctx.head_dim


def test_trainer_and_inference_use_the_parametrization(counting_data: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(counting_data, tmp_path / "run", parametrization="mup++", n_embd=64, steps=4)
    trainer = Trainer(recipe)
    result = trainer.fit()
    resolved = trainer.resolved
    model = trainer.model
    assert model.spec.logit_multiplier == pytest.approx(0.5) and model.spec.residual_multiplier == pytest.approx(0.5)
    # The optimizer got μP++'s per-role peak LR and weight decay (schedule: linear decay after 1 warmup step).
    assert resolved["lr_matrix"] == pytest.approx(1e-2 * 0.5) and resolved["lr_vector"] == pytest.approx(1e-2)
    assert resolved["wd_vector"] == 0.0 and resolved["wd_matrix"] == pytest.approx(0.1)
    assert result.final_val_loss is not None and math.isfinite(result.final_val_loss)

    from archscale.data.tokenizers import train_bpe_tokenizer
    from archscale.train.run_dir import load_for_inference

    train_bpe_tokenizer(["one two three four"] * 20, 260, tmp_path / "run" / "tokenizer.json")
    loaded, _ = load_for_inference(tmp_path / "run")
    assert loaded.spec == model.spec
    x = torch.randint(1, 64, (2, 16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_unknown_parametrization_and_bad_params_are_named() -> None:
    with pytest.raises(Exception, match="Unknown parametrization 'mupp'. Did you mean: mup"):
        small("mupp")
    with pytest.raises(Exception, match="embeding_std"):
        Recipe(model={"name": "transformer", "params": {"depth": 2}}, budget={"steps": 1},
               parametrization={"name": "mup++", "params": {"embeding_std": 1.0}})


def test_resolve_names_the_parametrization_when_it_cannot_apply() -> None:
    from archscale.models.spec import LayerSpec, LMSpec

    @registry.architectures.register("_mixed_heads_test")
    def mixed(cfg: object) -> LMSpec:
        return LMSpec(vocab_size=32, n_embd=32, mlp_hidden=64, layers=[
            LayerSpec(mixer="attention", params={"n_head": 2, "head_dim": 16}),
            LayerSpec(mixer="attention", params={"n_head": 4, "head_dim": 8}),
        ])

    try:
        recipe = Recipe(model="_mixed_heads_test", parametrization="mup", budget={"steps": 1})
        with pytest.raises(RecipeError, match="parametrization 'mup': .*attention layers differ"):
            resolve(recipe)
        assert resolve(recipe.model_copy(update={"parametrization": recipe.parametrization.model_copy(
            update={"name": "sp"})}))["n_layer"] == 2
    finally:
        registry.architectures.unregister("_mixed_heads_test")


TINY = {"depth": 4, "n_embd": 64, "n_head": 4, "head_dim": 16, "n_kv_head": 2, "mlp_hidden": 128, "vocab_size": 128,
        "block_size": 32}
EXTRA = {"pattern": {"pattern": "(mamba swa16)*2"}}  # required params of generic architectures


@pytest.mark.parametrize("arch", registry.architectures.names())
def test_every_architecture_builds_and_trains_under_mupp(arch: str) -> None:
    fields = registry.architectures.config_model(arch).model_fields
    if "depth" not in fields:
        pytest.skip(f"{arch} is not sized by depth")
    params = {**{k: v for k, v in TINY.items() if k in fields}, **EXTRA.get(arch, {})}
    recipe = Recipe(model={"name": arch, "params": params}, parametrization="mup++", budget={"steps": 1},
                    scaling={"base": {"depth": 4, "width": 32, "head_dim": 16}})
    torch.manual_seed(0)
    model = build_model_for(recipe)
    assert model.spec.residual_multiplier == pytest.approx(1 / math.sqrt(2 * model.spec.n_layers))
    x = torch.randint(0, 128, (2, 16))
    out = model(x, targets=x)
    if model.head is not None:  # zero readout: uniform prediction
        assert out.loss.item() == pytest.approx(math.log(128), abs=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    r = resolve(recipe)
    assert r["lr_matrix"] == pytest.approx(3e-3 * 0.5) and r["lr_vector"] == pytest.approx(3e-3)  # n0/n = 1/2
