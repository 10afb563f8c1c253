"""build_param_groups: one group per role, every trainable parameter exactly once, errors that name names."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from archscale.optim.routing import build_param_groups, group_summary

LR = {"embedding": 1e-3, "head": 2e-3, "matrix": 3e-3, "vector": 4e-3}
WD = {"embedding": 0.0, "head": 0.0, "matrix": 0.1, "vector": 0.0}


class TinyLM(nn.Module):
    """embedding + linear (matrix + bias) + norm + head, the head optionally tied to the embedding."""

    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 11, bias=False)
        if tie:
            self.head.weight = self.embed.weight


def roles_of(tie: bool) -> dict[str, str]:
    roles = {
        "embed.weight": "embedding",
        "proj.weight": "matrix",
        "proj.bias": "vector",
        "norm.weight": "vector",
        "norm.bias": "vector",
    }
    if not tie:
        roles["head.weight"] = "head"
    return roles


def ids(params: list[torch.Tensor]) -> list[int]:
    return [id(p) for p in params]


@pytest.mark.parametrize("tie", [False, True])
def test_every_parameter_exactly_once(tie: bool) -> None:
    model = TinyLM(tie)
    groups = build_param_groups(model, roles_of(tie), LR, WD)
    in_groups = [i for g in groups for i in ids(g["params"])]
    assert sorted(in_groups) == sorted(ids(list(model.parameters())))  # each tensor once, tied ones included
    assert len(in_groups) == len(set(in_groups)) == (5 if tie else 6)


def test_groups_per_role_untied() -> None:
    model = TinyLM(tie=False)
    groups = build_param_groups(model, roles_of(False), LR, WD)
    assert [g["role"] for g in groups] == ["embedding", "head", "matrix", "vector"]
    for g in groups:
        assert g["lr"] == LR[g["role"]] and g["weight_decay"] == WD[g["role"]]
        assert set(g) == {"role", "lr", "weight_decay", "params", "param_names"}
        assert ids(g["params"]) == [id(model.get_parameter(n)) for n in g["param_names"]]
    names = {g["role"]: g["param_names"] for g in groups}
    assert names == {
        "embedding": ["embed.weight"],
        "head": ["head.weight"],
        "matrix": ["proj.weight"],
        "vector": ["proj.bias", "norm.weight", "norm.bias"],
    }


def test_tied_head_appears_once_and_empty_role_is_skipped() -> None:
    model = TinyLM(tie=True)
    groups = build_param_groups(model, roles_of(True), LR, WD)
    assert [g["role"] for g in groups] == ["embedding", "matrix", "vector"]  # no empty "head" group
    assert groups[0]["param_names"] == ["embed.weight"]
    assert groups[0]["params"][0] is model.head.weight


def test_tied_alias_may_be_named_with_the_same_role() -> None:
    model = TinyLM(tie=True)
    roles = roles_of(True) | {"head.weight": "embedding"}
    groups = build_param_groups(model, roles, LR, WD)
    assert sum(len(g["params"]) for g in groups) == 5


def test_tied_alias_with_another_role_is_a_duplicate() -> None:
    model = TinyLM(tie=True)
    roles = roles_of(True) | {"head.weight": "head"}
    with pytest.raises(ValueError, match="different roles") as info:
        build_param_groups(model, roles, LR, WD)
    assert "['embed.weight', 'head.weight'] -> ['embedding', 'head']" in str(info.value)


def test_missing_parameter_is_named() -> None:
    roles = roles_of(False)
    del roles["norm.bias"]
    del roles["proj.weight"]
    with pytest.raises(ValueError, match=r"2 trainable parameter\(s\) have no role.*proj\.weight, norm\.bias"):
        build_param_groups(TinyLM(tie=False), roles, LR, WD)


def test_unknown_parameter_is_named_with_a_suggestion() -> None:
    roles = roles_of(False) | {"norm.gain": "vector"}
    with pytest.raises(ValueError, match=r"'norm\.gain' \(did you mean 'norm\.(bias|weight)'\?\)"):
        build_param_groups(TinyLM(tie=False), roles, LR, WD)


def test_invalid_role_is_named() -> None:
    roles = roles_of(False) | {"proj.bias": "bias"}
    with pytest.raises(ValueError, match=r"'proj\.bias': 'bias'"):
        build_param_groups(TinyLM(tie=False), roles, LR, WD)


def test_missing_lr_or_wd_for_a_used_role() -> None:
    lr = {k: v for k, v in LR.items() if k != "vector"}
    with pytest.raises(ValueError, match="No lr given for role.*vector"):
        build_param_groups(TinyLM(tie=False), roles_of(False), lr, WD)
    wd = {k: v for k, v in WD.items() if k != "head"}
    with pytest.raises(ValueError, match="No weight_decay given for role.*head"):
        build_param_groups(TinyLM(tie=False), roles_of(False), LR, wd)
    # A role not in use needs nothing (tied model: no head).
    build_param_groups(TinyLM(tie=True), roles_of(True), {k: v for k, v in LR.items() if k != "head"}, WD)


def test_frozen_parameters_are_left_out() -> None:
    model = TinyLM(tie=False)
    model.norm.bias.requires_grad_(False)
    roles = roles_of(False)
    del roles["norm.bias"]  # frozen: needs no role...
    groups = build_param_groups(model, roles, LR, WD)
    assert "norm.bias" not in [n for g in groups for n in g["param_names"]]
    groups = build_param_groups(model, roles_of(False), LR, WD)  # ...but may have one
    assert "norm.bias" not in [n for g in groups for n in g["param_names"]]


def test_torch_accepts_the_groups_and_keeps_names_and_roles() -> None:
    model = TinyLM(tie=True)
    opt = torch.optim.AdamW(build_param_groups(model, roles_of(True), LR, WD))
    saved = opt.state_dict()["param_groups"]
    assert [g["role"] for g in saved] == ["embedding", "matrix", "vector"]
    assert saved[2]["param_names"] == ["proj.bias", "norm.weight", "norm.bias"]
    assert [s["numel"] for s in group_summary(opt.param_groups)] == [88, 64, 24]


# ----------------------------------------------------------------------------------------- overrides
def test_overrides_first_match_wins_and_make_extra_groups() -> None:
    model = TinyLM(tie=False)
    overrides = [("proj.bias", {"weight_decay": 0.5}), ("proj.*", {"lr": 1e-2}), ("*.weight", {"lr": 9.0})]
    groups = build_param_groups(model, roles_of(False), LR, WD, overrides=overrides)
    by = {(g.get("override"), g["role"]): g for g in groups}
    assert set(by) == {
        (None, "vector"),  # the default groups keep what no override took
        ("proj.bias", "vector"),
        ("proj.*", "matrix"),
        ("*.weight", "embedding"),
        ("*.weight", "head"),
        ("*.weight", "vector"),
    }
    assert by[(None, "vector")]["param_names"] == ["norm.bias"]
    pb = by[("proj.bias", "vector")]
    assert pb["param_names"] == ["proj.bias"] and pb["weight_decay"] == 0.5 and pb["lr"] == LR["vector"]
    pw = by[("proj.*", "matrix")]
    assert pw["param_names"] == ["proj.weight"] and pw["lr"] == 1e-2 and pw["weight_decay"] == WD["matrix"]
    assert by[("*.weight", "vector")]["param_names"] == ["norm.weight"]
    assert by[("*.weight", "head")]["lr"] == 9.0
    in_groups = [i for g in groups for i in ids(g["params"])]
    assert sorted(in_groups) == sorted(ids(list(model.parameters())))


def test_no_overrides_is_the_default_path() -> None:
    model = TinyLM(tie=False)
    assert build_param_groups(model, roles_of(False), LR, WD, overrides=[]) == build_param_groups(
        model, roles_of(False), LR, WD
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([("nothing.*", {"lr": 1.0})], "'nothing.*'"),  # matches nothing: a typo
        ([("proj.*", {"lr": 1.0}), ("proj.bias", {"lr": 2.0})], "'proj.bias'"),  # shadowed by the first
        ([("proj.*", {"momentum": 0.9})], "momentum"),  # unknown key
        ([("proj.*", {})], "must set one"),
        ([("proj.*", {"lr": -1.0})], ">= 0"),
        (["proj.*"], "pattern"),
    ],
)
def test_bad_overrides_raise(overrides: list, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_param_groups(TinyLM(tie=False), roles_of(False), LR, WD, overrides=overrides)
