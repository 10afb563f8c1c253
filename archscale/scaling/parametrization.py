"""Parametrizations: how initialisation, forward multipliers and per-role learning rates depend on model size.

A parametrization is a registered object with the methods of :class:`Parametrization`. The model builder and the
optimizer router apply what it returns; nothing here parses parameter names (roles come from the model structure,
see ``archscale.models.api.ParamRole``).

Only standard parametrization (SP) lives here so far; μP and μP++ (REFERENCE §4) are added as further entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from archscale.models.api import PARAM_ROLES, ParamRole
from archscale.registry import parametrizations


@dataclass(frozen=True)
class Rule:
    """A derived number and the human-readable rule that produced it."""

    value: float
    rule: str


class Parametrization(Protocol):
    def lr_multipliers(self, n_layer: int) -> dict[ParamRole, Rule]:
        """Multiplier of the recipe's peak learning rate for each parameter role."""
        ...

    def weight_decay_multipliers(self, n_layer: int) -> dict[ParamRole, Rule]:
        """Multiplier of the recipe's weight decay for each parameter role (0 = no decay)."""
        ...


class StandardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@parametrizations.register("sp", config=StandardConfig)
class StandardParametrization:
    """Standard parametrization (SP): one learning rate and one weight decay for every parameter; init
    N(0, 0.02) with 1/√(2L) on residual output projections (GPT-2 / Megatron convention, REFERENCE §4.6),
    which the model applies by default; no forward multipliers."""

    Config = StandardConfig

    def __init__(self, config: StandardConfig | None = None) -> None:
        self.config = config or StandardConfig()

    def lr_multipliers(self, n_layer: int) -> dict[ParamRole, Rule]:
        return {role: Rule(1.0, "SP: same LR for every role") for role in PARAM_ROLES}

    def weight_decay_multipliers(self, n_layer: int) -> dict[ParamRole, Rule]:
        return {role: Rule(1.0, "SP: decoupled weight decay on every role") for role in PARAM_ROLES}
