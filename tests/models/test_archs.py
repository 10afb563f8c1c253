"""The registered families reproduce REFERENCE §2's layer patterns and §1's sizing; counts match real models.

The expected patterns are written here by hand in REFERENCE's notation (never derived from the builders): M =
mamba, M2 = mamba2, GDN = gdn, ``*`` = export_memory, S<W> = windowed attention, F = full attention, G = GMU
(nG normalised), X = cross-attention, a ``d`` prefix = differential.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from archscale.models.lm import build_model
from archscale.models.spec import LayerSpec, LMSpec
from archscale.registry import architectures
from archscale.scaling.counting import count_params

ROOT = Path(__file__).resolve().parents[2]


def rep(unit: str, n: int) -> str:
    return " ".join([unit] * n)


def symbol(layer: LayerSpec) -> str:
    p = layer.params
    if layer.mixer in ("attention", "diff_attention"):
        s = f"S{p['window']}" if p.get("window") else "F"
        return ("d" if layer.mixer == "diff_attention" else "") + s
    if layer.mixer == "yoco_cross":
        return "dX" if p.get("differential") else "X"
    if layer.mixer == "gmu":
        return "nG" if p.get("normalize") else "G"
    name = {"mamba": "M", "mamba2": "M2", "gdn": "GDN"}[layer.mixer]
    return name + ("*" if p.get("export_memory") else "")


def build(family: str, **params: object) -> LMSpec:
    return architectures.get(family)(architectures.config_model(family).model_validate(params))


# REFERENCE §2, by hand, for d8 / d16 / d24 (h = 4 / 8 / 12).
EXPECTED: dict[str, dict[int, str]] = {
    "transformer": {8: rep("F", 8), 16: rep("F", 16), 24: rep("F", 24)},
    "transformerls": {d: rep("S128 S128 S128 F", d // 4) for d in (8, 16, 24)},
    "samba": {8: rep("M S2048", 4), 16: rep("M S2048", 8), 24: rep("M S2048", 12)},
    "sambay": {
        8: "M S128 M S128 M* F G X",
        16: f"{rep('M S128', 4)} M* F {rep('G X', 3)}",
        24: f"{rep('M S128', 6)} M* F {rep('G X', 5)}",
    },
    "sambayda": {
        8: "M dS128 M dS128 M* dF G dX",
        16: f"{rep('M dS128', 4)} M* dF {rep('G dX', 3)}",
        24: f"{rep('M dS128', 6)} M* dF {rep('G dX', 5)}",
    },
    "sambayoco": {
        8: "M S128 M S128 M F X X",
        16: f"{rep('M S128', 4)} M F {rep('X', 6)}",
        24: f"{rep('M S128', 6)} M F {rep('X', 10)}",
    },
    "swayoco": {8: f"{rep('S128', 5)} F X X", 16: f"{rep('S128', 9)} F {rep('X', 6)}",
                24: f"{rep('S128', 13)} F {rep('X', 10)}"},
    "mambay": {8: "M M M M M* F G X", 16: f"{rep('M', 8)} M* F {rep('G X', 3)}",
               24: f"{rep('M', 12)} M* F {rep('G X', 5)}"},
    "mambay2": {8: "M2 M2 M2 M2 M2* F nG X", 16: f"{rep('M2', 8)} M2* F {rep('nG X', 3)}",
                24: f"{rep('M2', 12)} M2* F {rep('nG X', 5)}"},
    "gdny": {8: "GDN GDN GDN GDN GDN* F nG X", 16: f"{rep('GDN', 8)} GDN* F {rep('nG X', 3)}",
             24: f"{rep('GDN', 12)} GDN* F {rep('nG X', 5)}"},
    "sgdny": {8: "GDN S128 GDN S128 GDN* F nG X", 16: f"{rep('GDN S128', 4)} GDN* F {rep('nG X', 3)}",
              24: f"{rep('GDN S128', 6)} GDN* F {rep('nG X', 5)}"},
}
ASPECT = {"transformer": 128, "transformerls": 128, "samba": 122, "sambay": 124, "sambayda": 124, "sambayoco": 126,
          "swayoco": 130, "mambay": 120, "mambay2": 120, "gdny": 120, "sgdny": 126}
ROPE = {"transformer", "transformerls", "samba", "swayoco"}  # the others are NoPE (ArchScale's model-wide nope)
YOCO = {"sambay", "sambayda", "sambayoco", "swayoco", "mambay", "mambay2", "gdny", "sgdny"}


@pytest.mark.parametrize("depth", [8, 16, 24])
@pytest.mark.parametrize("family", EXPECTED)
def test_reference_patterns(family: str, depth: int) -> None:
    spec = build(family, depth=depth)
    assert " ".join(symbol(layer) for layer in spec.layers) == EXPECTED[family][depth]
    # §1 sizing: n_embd = ar·d, d heads of 128, d/4 KV heads, MLP 4·n_embd, 32 000 vocab, context 4096, untied.
    assert spec.n_embd == ASPECT[family] * depth and spec.mlp_hidden == 4 * spec.n_embd
    assert (spec.vocab_size, spec.block_size, spec.tie_embeddings, spec.norm) == (32000, 4096, False, "rmsnorm")
    for layer in spec.layers:
        if layer.mixer in ("attention", "diff_attention", "yoco_cross"):
            p = layer.params
            assert (p["n_head"], p["n_kv_head"], p["head_dim"]) == (depth, depth // 4, 128)
            assert p.get("positional", "rope") == ("rope" if family in ROPE else "nope")
            assert not p.get("qv_bias") and not p.get("o_bias")
    # The YOCO full-attention layer h+1 shares its K,V; no other layer does.
    sharing = [i for i, layer in enumerate(spec.layers) if layer.params.get("share_kv")]
    assert sharing == ([depth // 2 + 1] if family in YOCO else [])


def test_phi4miniflash() -> None:
    spec = build("phi4miniflash")
    expected = f"{rep('M dS512', 8)} M* dF {rep('G dX', 7)}"
    assert " ".join(symbol(layer) for layer in spec.layers) == expected
    assert (spec.n_embd, spec.mlp_hidden, spec.vocab_size, spec.norm) == (2560, 10240, 200064, "layernorm")
    assert spec.tie_embeddings and spec.n_layers == 32
    for layer in spec.layers:
        if layer.mixer != "mamba" and layer.mixer != "gmu":
            p = layer.params
            assert (p["n_head"], p["n_kv_head"], p["head_dim"], p["positional"]) == (40, 20, 64, "nope")
            assert p["qv_bias"] and p["o_bias"]
    assert [i for i, layer in enumerate(spec.layers) if layer.params.get("share_kv")] == [17]


def test_yoco_depth_must_be_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        build("sambay", depth=10)
    with pytest.raises(ValueError, match="even"):
        build("sambayda", depth=12)  # 3 KV heads cannot be paired


@pytest.mark.parametrize("family", sorted(set(EXPECTED) | {"phi4miniflash"}))
def test_count_params_matches_meta_model(family: str) -> None:
    spec = build(family) if family == "phi4miniflash" else build(family, depth=8)
    model = build_model(spec, device="meta")
    counts = count_params(spec)
    roles = model.param_roles()
    real = {r: 0 for r in ("embedding", "head", "matrix", "vector")}
    for name, p in model.named_parameters():
        real[roles[name]] += p.numel()
    assert counts.by_role() == real
    if family == "phi4miniflash":
        assert counts.total == pytest.approx(3.85e9, rel=0.01)  # Phi-4-mini-flash-reasoning: 3.8B parameters


# ArchScale's own size formula N ≈ (a·ar² + b·ar)·d³ (non-embedding) per family, from the per-layer structure.
N_MULT = {"transformer": (12, 320), "samba": (15, 160), "sambay": (14.5, 144), "sambayoco": (13.5, 208),
          "swayoco": (12, 288), "mambay": (16, 64)}


@pytest.mark.parametrize("family", N_MULT)
@pytest.mark.parametrize("depth", [16, 24])
def test_sizes_follow_archscale_formula(family: str, depth: int) -> None:
    a, b = N_MULT[family]
    ar = ASPECT[family]
    ours = count_params(build(family, depth=depth)).non_embedding
    assert ours == pytest.approx((a * ar**2 + b * ar) * depth**3, rel=0.025)


@pytest.mark.parametrize("depth", [8, 12, 16, 20, 24])
def test_families_match_transformer_in_parameters(depth: int) -> None:
    base = count_params(build("transformer", depth=depth)).non_embedding
    for family in EXPECTED:
        if family == "sambayda" and depth % 8:
            continue
        ratio = count_params(build(family, depth=depth)).non_embedding / base
        assert 1.0 <= ratio < 1.075, (family, ratio)


def test_cross_layers_count_only_wq_wo() -> None:
    spec = build("swayoco", depth=8)
    x_only = spec.model_copy(update={"layers": [spec.layers[5], spec.layers[6]]})  # F then X
    counts = count_params(x_only)
    d, hk, kvk = spec.n_embd, 8 * 128, 2 * 128
    f_layer, x_layer = 2 * d * hk + 2 * d * kvk, 2 * d * hk
    assert counts.matrix == f_layer + x_layer + 2 * 3 * d * spec.mlp_hidden


def test_architecture_doc_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_arch_table", ROOT / "docs" / "gen_arch_table.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (ROOT / "docs" / "architectures.md").read_text()
    assert gen.updated(text) == text, "docs/architectures.md is stale: run python docs/gen_arch_table.py"


def test_big_models_build_on_meta() -> None:
    model = build_model(build("sambay", depth=24), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert torch.device("meta") == next(model.parameters()).device
