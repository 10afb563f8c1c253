"""Route parameters into optimizer groups by their role, never by their names.

Every parameter has a :data:`~archscale.models.api.ParamRole` (embedding, head, matrix, vector) reported by the
module that owns it; the per-role peak LR and weight decay come from the parametrization (REFERENCE.md §4: width-μP
scales the matrix LR by d0/d, μP++ puts no weight decay on vector-like params). This file only turns
"name -> role" plus "role -> lr / wd" into torch param groups, one per role, and checks the partition: every
trainable parameter lands in exactly one group (nanochat's assertion; REFERENCE.md §5), and the roles mapping names
nothing that does not exist. Routing by name substrings is the anti-pattern this replaces (DESIGN.md).

Groups use torch's own ``"param_names"`` key (torch >= 2.6 understands it in ``Optimizer.state_dict``), so
checkpoints and logs can say which tensor is where. Tied (shared) parameters appear once, under the first name
``named_parameters()`` gives; the roles mapping may name any alias of them.

``overrides`` is an escape hatch for experiments (e.g. a different LR for one layer's gate): an ordered list of
``(fnmatch pattern on parameter names, {"lr": ..., "weight_decay": ...})``, first match wins, each producing extra
groups (split by role, so every group stays role-pure for role-aware optimizers such as Muon). Never the default path.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import torch
from torch import nn

from archscale.models.api import PARAM_ROLES, ParamRole

__all__ = ["OVERRIDE_KEYS", "build_param_groups", "group_summary"]

OVERRIDE_KEYS: frozenset[str] = frozenset({"lr", "weight_decay"})
"""What an override may set; anything else is an error (it would be silently ignored by the optimizer)."""

assert set(get_args(ParamRole)) == set(PARAM_ROLES)  # the router relies on PARAM_ROLES listing every role


def build_param_groups(
    model: nn.Module,
    roles: Mapping[str, ParamRole],
    lr: Mapping[ParamRole, float],
    weight_decay: Mapping[ParamRole, float],
    *,
    overrides: Sequence[tuple[str, Mapping[str, float]]] | None = None,
) -> list[dict[str, Any]]:
    """Torch param groups, one per non-empty role (in ``PARAM_ROLES`` order), then any override groups.

    Each group: ``{"role", "lr", "weight_decay", "params", "param_names"}`` (override groups also carry
    ``"override"``: the pattern). ``lr`` is the *peak* LR; the schedule scales it (``LambdaLR`` records it as
    ``initial_lr``). Parameters with ``requires_grad=False`` are left out (they may still be named in ``roles``).

    Raises ``ValueError``, naming the offending parameters, if ``roles`` names a parameter the model lacks, gives
    an invalid role or two different roles to aliases of one tied tensor, misses a trainable parameter, or if a role
    in use has no lr / weight decay, or an override is malformed or owns no parameter.
    """
    # remove_duplicate=False: every alias of a tied tensor is a legitimate name to give a role to.
    all_named = list(model.named_parameters(remove_duplicate=False))
    by_name: dict[str, nn.Parameter] = dict(all_named)
    aliases: dict[int, list[str]] = {}  # id(param) -> its names, first = the name named_parameters() gives
    unique: list[nn.Parameter] = []  # each tensor once, in named_parameters() order
    for name, p in all_named:
        if id(p) not in aliases:
            aliases[id(p)] = []
            unique.append(p)
        aliases[id(p)].append(name)

    unknown = [n for n in roles if n not in by_name]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, list(by_name), n=1)
            hints.append(f"{n!r} (did you mean {close[0]!r}?)" if close else repr(n))
        raise ValueError(
            f"roles names {len(unknown)} parameter(s) the model does not have: {', '.join(hints)}. "
            f"The model's parameters come from named_parameters()."
        )

    invalid = {n: r for n, r in roles.items() if r not in PARAM_ROLES}
    if invalid:
        listed = ", ".join(f"{n!r}: {r!r}" for n, r in invalid.items())
        raise ValueError(f"Invalid parameter role(s) {listed}; a role is one of {', '.join(PARAM_ROLES)}")

    role_of: dict[int, ParamRole] = {}
    conflicts: list[str] = []
    missing: list[str] = []
    for p in unique:
        names = aliases[id(p)]
        given = {roles[n] for n in names if n in roles}
        if len(given) > 1:
            conflicts.append(f"{names} -> {sorted(given)}")
        elif given:
            role_of[id(p)] = given.pop()
        elif p.requires_grad:
            missing.append(names[0])
    if conflicts:
        raise ValueError(
            "A shared (tied) parameter was given different roles under its different names, so it would land in "
            f"two groups: {'; '.join(conflicts)}. Give all its names the same role."
        )
    if missing:
        raise ValueError(
            f"{len(missing)} trainable parameter(s) have no role and would not be optimized: {', '.join(missing)}. "
            "Every module must report the role of each of its parameters (param_roles())."
        )

    trainable = [p for p in unique if p.requires_grad]
    used_roles = {role_of[id(p)] for p in trainable}
    for what, table in (("lr", lr), ("weight_decay", weight_decay)):
        absent = [r for r in PARAM_ROLES if r in used_roles and r not in table]
        if absent:
            raise ValueError(f"No {what} given for role(s) {', '.join(absent)} (roles in use: {sorted(used_roles)})")
        negative = {r: v for r, v in table.items() if r in used_roles and v < 0}
        if negative:
            raise ValueError(f"{what} must be >= 0, got {negative}")

    owner = _assign_overrides(trainable, aliases, overrides or [])

    groups: list[dict[str, Any]] = []
    for role in PARAM_ROLES:  # the default groups
        members = [p for p in trainable if role_of[id(p)] == role and owner[id(p)] is None]
        if members:
            groups.append(_group(role, float(lr[role]), float(weight_decay[role]), members, aliases))
    for index, (pattern, settings) in enumerate(overrides or []):
        for role in PARAM_ROLES:
            members = [p for p in trainable if role_of[id(p)] == role and owner[id(p)] == index]
            if members:
                group = _group(
                    role,
                    float(settings.get("lr", lr[role])),
                    float(settings.get("weight_decay", weight_decay[role])),
                    members,
                    aliases,
                )
                group["override"] = pattern
                groups.append(group)

    _check_partition(groups, trainable, aliases)
    return groups


def _group(
    role: ParamRole, lr: float, weight_decay: float, params: list[nn.Parameter], aliases: dict[int, list[str]]
) -> dict[str, Any]:
    return {
        "role": role,
        "lr": lr,
        "weight_decay": weight_decay,
        "params": params,
        "param_names": [aliases[id(p)][0] for p in params],
    }


def _assign_overrides(
    trainable: list[nn.Parameter],
    aliases: dict[int, list[str]],
    overrides: Sequence[tuple[str, Mapping[str, float]]],
) -> dict[int, int | None]:
    """id(param) -> index of the first override whose pattern matches one of its names (None: no override)."""
    for index, item in enumerate(overrides):
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"override #{index} must be (pattern, {{'lr': ..., 'weight_decay': ...}}), got {item!r}")
        pattern, settings = item
        bad = set(settings) - OVERRIDE_KEYS
        if bad or not settings:
            raise ValueError(
                f"override #{index} ({pattern!r}) may set only {sorted(OVERRIDE_KEYS)} and must set one of them, "
                f"got {sorted(settings)}"
            )
        negative = {k: v for k, v in settings.items() if v < 0}
        if negative:
            raise ValueError(f"override #{index} ({pattern!r}): values must be >= 0, got {negative}")

    owner: dict[int, int | None] = {}
    for p in trainable:
        owner[id(p)] = None
        for index, (pattern, _) in enumerate(overrides):
            # fnmatchcase: case-sensitive on every OS; parameter names are case-sensitive.
            if any(fnmatch.fnmatchcase(name, pattern) for name in aliases[id(p)]):
                owner[id(p)] = index
                break
    idle = [f"#{i} {pattern!r}" for i, (pattern, _) in enumerate(overrides) if i not in owner.values()]
    if idle:
        raise ValueError(
            f"override(s) {', '.join(idle)} match no trainable parameter not already taken by an earlier override "
            "(first match wins): a typo in the pattern?"
        )
    return owner


def _check_partition(
    groups: list[dict[str, Any]], trainable: list[nn.Parameter], aliases: dict[int, list[str]]
) -> None:
    """Every trainable parameter in exactly one group: the invariant, re-checked on the result."""
    seen: dict[int, int] = {}
    for group in groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    twice = [aliases[i][0] for i, count in seen.items() if count > 1]
    lost = [aliases[id(p)][0] for p in trainable if id(p) not in seen]
    if twice or lost or len(seen) != len(trainable):
        raise RuntimeError(f"parameter partition is broken: in several groups {twice}, in none {lost}")


def group_summary(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per group without the tensors (role, lr, wd, parameter count, numel), for logs and dry runs."""
    return [
        {
            "role": g["role"],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "tensors": len(g["params"]),
            "numel": sum(int(torch.numel(p)) for p in g["params"]),
            **({"override": g["override"]} if "override" in g else {}),
        }
        for g in groups
    ]
