"""Parameter initialisation as a rule applied per parameter, by role and by position in the residual stream.

The model walks its parameters with their role (embedding / head / matrix / vector, from module structure) and a
flag saying whether the parameter is the output projection of a residual branch (attention o_proj, MLP
down_proj, ...: declared by the owning module's ``output_projections()``), and calls an :data:`InitRule` on each.
A parametrization (SP here; μP / μP++ later, REFERENCE §4.6) is just another rule.

Before the rule runs, every submodule's own ``reset_parameters()`` has run, so norm gains are 1 and special
parameters (e.g. Mamba's A_log, dt bias) have their module-defined init; a rule may leave such parameters alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from archscale.models.api import ParamRole

InitRule = Callable[[str, nn.Parameter, ParamRole, bool], None]
"""``rule(name, param, role, is_output_projection)``: initialise ``param`` in place (or leave it)."""


def standard_init(std: float, n_layers: int) -> InitRule:
    """Standard parametrization (GPT-2 / Megatron style, REFERENCE §4.6): embeddings, head and matrices
    N(0, std); output projections of residual branches N(0, std/√(2L)), since 2L branches add into the stream
    (Radford et al. 2019); vector-like parameters keep their module init (norm gains 1)."""
    out_std = std / math.sqrt(2 * n_layers)

    def rule(name: str, param: nn.Parameter, role: ParamRole, is_output_projection: bool) -> None:
        if role == "vector":
            return
        with torch.no_grad():
            param.normal_(0.0, out_std if is_output_projection else std)

    return rule
