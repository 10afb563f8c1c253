"""Validate a registry entry's parameters against the pydantic model the entry registered.

Schedules and optimizers are both "name + params" specs; this is the one place that turns the params (a dict from a
recipe or the CLI, or an already built model) into the entry's own config model, so that a typo'd or out-of-range
field fails with pydantic's error naming the field instead of being silently dropped (DESIGN.md, anti-patterns).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from archscale.registry import Registry


def validated_config(registry: Registry[Any], name: str, config: Mapping[str, Any] | BaseModel | None) -> BaseModel:
    """The entry ``name``'s config model instance built from ``config`` (``None`` = all defaults).

    Raises the registry's did-you-mean error for an unknown name and ``pydantic.ValidationError`` (naming the
    field) for bad params. A config model of another class is re-validated through its fields, so that e.g. a
    ``CosineConfig`` handed to ``wsd`` is checked against ``WSDConfig`` rather than trusted.
    """
    model = registry.config_model(name)
    if config is None:
        return model()
    if isinstance(config, model):
        return config
    if isinstance(config, BaseModel):
        # exclude_unset: only what the caller actually chose is carried over, not the other model's defaults.
        return model.model_validate(config.model_dump(exclude_unset=True))
    if isinstance(config, Mapping):
        return model.model_validate(dict(config))
    raise TypeError(
        f"Params of {registry.label} '{name}' must be a dict or a pydantic model, got {type(config).__name__}"
    )
