"""Registered optimizers, built from the role-routed param groups of ``routing.py``.

Convention (the trainer relies on it). A registered optimizer is a function

    f(param_groups: list[dict], config: <its Config>) -> torch.optim.Optimizer

The per-group ``lr`` (peak; the schedule scales it) and ``weight_decay`` come from the router, so the config holds
only what is the same for every group. Each entry must refuse groups without ``lr`` / ``weight_decay`` rather than
fall back to torch's defaults (1e-3 / 1e-2), which would silently break μP/μP++ per-role LRs (REFERENCE.md §4).

``muon`` (Muon on matrices, AdamW on the rest; REFERENCE.md §5) is registered in ``muon.py``, reading each group's
``"role"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from archscale.optim._config import validated_config
from archscale.registry import optimizers

__all__ = ["AdamWConfig", "adamw", "build_optimizer", "require_group_hparams"]


class AdamWConfig(BaseModel):
    """AdamW hyperparameters shared by all groups (ArchScale v1: β = (0.9, 0.95), ε = 1e-8; REFERENCE.md §4)."""

    model_config = ConfigDict(extra="forbid")

    betas: tuple[float, float] = Field(
        (0.9, 0.95),
        description="(β1, β2): decay rates of the first and second moment estimates, each in [0, 1).",
    )
    eps: float = Field(1e-8, gt=0.0, description="Added to sqrt(v̂) in the denominator, for numerical safety.")
    fused: bool | None = Field(
        None,
        description=(
            "Use torch's fused kernel. None = fused when every parameter is a floating-point CUDA tensor, else "
            "torch's default (foreach on accelerators, the for-loop on CPU)."
        ),
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        return betas


def require_group_hparams(param_groups: list[dict[str, Any]], keys: tuple[str, ...] = ("lr", "weight_decay")) -> None:
    """Raise if a group lacks one of ``keys``: torch would fill in its own default without a word."""
    if not param_groups:
        raise ValueError("No parameter groups to optimize")
    for index, group in enumerate(param_groups):
        absent = [k for k in keys if k not in group]
        if absent:
            label = group.get("role", f"#{index}")
            raise ValueError(
                f"Param group {label} has no {', '.join(absent)}; groups must come from "
                "archscale.optim.routing.build_param_groups (per-role lr and weight decay)"
            )


def _all_cuda_float(param_groups: list[dict[str, Any]]) -> bool:
    params = [p for g in param_groups for p in g["params"]]
    return bool(params) and all(p.device.type == "cuda" and torch.is_floating_point(p) for p in params)


@optimizers.register("adamw", config=AdamWConfig)
def adamw(param_groups: list[dict[str, Any]], config: AdamWConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` (Loshchilov & Hutter 2019: decay decoupled from the gradient, p ← p(1 − lr·wd))."""
    require_group_hparams(param_groups)
    fused = config.fused
    if fused is None:
        fused = True if _all_cuda_float(param_groups) else None  # None: torch picks foreach or the for-loop
    # lr / weight_decay below are never used: every group carries its own (checked above).
    return torch.optim.AdamW(
        param_groups, lr=param_groups[0]["lr"], betas=config.betas, eps=config.eps, fused=fused
    )


def build_optimizer(
    name: str, param_groups: list[dict[str, Any]], config: Mapping[str, Any] | BaseModel | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``param_groups``, its params validated against its config model first
    (unknown name: did-you-mean error; bad field: ``pydantic.ValidationError`` naming it)."""
    fn = optimizers.get(name)
    return fn(param_groups, validated_config(optimizers, name, config))
