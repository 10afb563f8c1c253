"""Signum (Bernstein et al. 2018, "signSGD: compressed optimisation for non-convex problems"): the sign of a
momentum buffer, with decoupled weight decay. Registered through the ``archscale.optimizers`` entry point."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field


class SignumConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum of the buffer whose sign is the update.")


class Signum(torch.optim.Optimizer):
    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad, alpha=1 - group["momentum"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(buf.sign(), alpha=-group["lr"])
        return loss


def signum(param_groups: list[dict[str, Any]], config: SignumConfig) -> Signum:
    """archscale optimizer entry: (role-routed param groups, validated config) -> optimizer."""
    return Signum(param_groups, lr=param_groups[0]["lr"], momentum=config.momentum)


signum.Config = SignumConfig  # type: ignore[attr-defined]
