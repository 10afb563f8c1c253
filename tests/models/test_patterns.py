"""The ``pattern`` architecture: grammar, names, the cross-layer check, and errors that name the bad token."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from archscale.models.patterns import PatternConfig, PatternError, check_shared_flow, parse_pattern, pattern
from archscale.models.spec import LayerSpec
from archscale.registry import architectures


def layers(text: str | list, **kw: object) -> list[LayerSpec]:
    return pattern(PatternConfig(pattern=text, **kw)).layers


def summary(text: str | list, **kw: object) -> list[tuple[str, dict]]:
    return [(layer.mixer, layer.params) for layer in layers(text, **kw)]


def test_the_briefs_example() -> None:
    spec = pattern(PatternConfig(pattern="(mamba swa128)*4 mamba* attn (gmu yoco)*3"))
    mixers = [layer.mixer for layer in spec.layers]
    assert mixers == ["mamba", "attention"] * 4 + ["mamba", "attention"] + ["gmu", "yoco_cross"] * 3
    assert spec.layers[8].params == {"export_memory": True}
    assert spec.layers[9].params["share_kv"] is True  # the F layer, inferred: the nearest full attention
    assert all("share_kv" not in spec.layers[i].params for i in range(9))
    assert spec.layers[1].params == {"n_head": 16, "n_kv_head": 4, "head_dim": 128, "positional": "rope",
                                     "window": 128}
    # depth = number of layers; widths follow the depth as for the families (ar 128 by default)
    assert spec.n_layers == 16 and spec.n_embd == 128 * 16
    assert architectures.get("pattern") is pattern


def test_reference_letters_equal_words() -> None:
    words = layers("(mamba swa128)*4 mamba* attn* (gmu yoco)*3", positional="nope")
    letters = layers("(M S128)*4 M* F (G X)*3", positional="nope")
    assert words == letters


def test_names_and_arguments() -> None:
    got = summary(
        "dswa64 dattn* dyoco mamba2* ngmu(norm_groups=2) gdn M2 GDN swa attn(positional=nope, rope_base=5e5) "
        "mamba(d_state=8)",
        n_embd=64, n_head=4, head_dim=16, n_kv_head=2, window=32,
    )
    heads = {"n_head": 4, "n_kv_head": 2, "head_dim": 16, "positional": "rope"}
    assert got[0] == ("diff_attention", {**heads, "window": 64})
    assert got[1] == ("diff_attention", {**heads, "share_kv": True})
    assert got[2] == ("yoco_cross", {**heads, "differential": True})
    assert got[3] == ("mamba2", {"export_memory": True})
    assert got[4] == ("gmu", {"normalize": True, "norm_groups": 2})
    assert [m for m, _ in got[5:8]] == ["gdn", "mamba2", "gdn"]
    assert got[8] == ("attention", {**heads, "window": 32})  # bare swa: the config's window
    assert got[9] == ("attention", {**heads, "positional": "nope", "rope_base": 500000.0})
    assert got[10] == ("mamba", {"d_state": 8})


def test_registered_mixer_names_and_mixer_params() -> None:
    got = summary("mamba* gmu(d_mem=64) attention(n_head=2)",
                  mixer_params={"mamba": {"d_state": 4}, "attention": {"window": 9}}, n_embd=32, n_head=2)
    assert got == [("mamba", {"d_state": 4, "export_memory": True}), ("gmu", {"d_mem": 64}),
                   ("attention", {"window": 9, "n_head": 2})]


def test_nesting_repetition_and_double_star() -> None:
    toks = parse_pattern("((a b)*2 c)*2 d**3 e*")
    assert [t.name for t in toks] == ["a", "b", "a", "b", "c"] * 2 + ["d"] * 3 + ["e"]
    assert [t.export for t in toks][-4:] == [True, True, True, True]
    assert not any(t.export for t in toks[:10])


def test_list_form() -> None:
    got = summary(["(M S128)*2", {"mixer": "mamba", "params": {"export_memory": True}}, "F G X"],
                  mixer_params={"mamba": {"d_state": 4}}, positional="nope")
    assert [m for m, _ in got] == ["mamba", "attention", "mamba", "attention", "mamba", "attention", "gmu",
                                   "yoco_cross"]
    assert got[4][1] == {"d_state": 4, "export_memory": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mamba (attn", "unclosed '\\('"),
        ("mamba attn)", "unexpected '\\)'"),
        ("mamba () attn", "empty group"),
        ("", "empty pattern"),
        ("mamab attn", "unknown layer 'mamab'.*Did you mean: mamba"),
        ("attn(window)", "bad argument 'window' of 'attn'"),
        ("attn(n_head=2", "unclosed '\\(' in the arguments of 'attn'"),
        ("mamba*0", "at least 1"),
        ("attn% mamba", "unexpected character '%'"),
        ("gmu*", "'gmu\\*' is marked '\\*' but its mixer 'gmu' can export neither"),
    ],
)
def test_grammar_errors_name_the_token(text: str, message: str) -> None:
    with pytest.raises((PatternError, ValidationError), match=message):
        layers(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mamba attn gmu", "layer 2 \\('gmu'\\) reads shared memory"),
        ("mamba* yoco", "layer 1 \\('yoco_cross'\\) reads shared K,V"),
        ("mamba* swa gmu yoco", "sliding window"),
        ("attn* yoco(positional=nope)", "positional: nope vs rope"),
        ("attn* yoco(n_kv_head=2)", "n_kv_head: 2 vs 1"),
    ],
)
def test_cross_layer_errors(text: str, message: str) -> None:
    with pytest.raises((PatternError, ValidationError), match=message):
        layers(text, depth=0)


def test_depth_must_match() -> None:
    with pytest.raises(ValidationError, match="depth=3 but the pattern has 2 layers"):
        PatternConfig(pattern="attn attn", depth=3)
    assert PatternConfig(pattern="attn attn", depth=2).depth == 2


def test_check_shared_flow_keeps_explicit_producers() -> None:
    attn = {"n_head": 2, "head_dim": 8}
    explicit = [LayerSpec(mixer="attention", params={**attn, "share_kv": True}),
                LayerSpec(mixer="attention", params=attn),
                LayerSpec(mixer="yoco_cross", params=attn)]
    assert check_shared_flow(explicit) == explicit  # the marked F is used; the later attention stays plain
    inferred = check_shared_flow(explicit[1:])
    assert inferred[0].params["share_kv"] is True
