"""Scaling: parametrizations (SP, μP, μP++), transfer laws, parameter and FLOP counting, curve fits, sweeps and
coordinate checks.

The public names are imported lazily (``archscale.scaling.counting`` must stay importable without scipy)::

    from archscale.scaling import fit_power_law, fit_parametric, build_model_for, coord_check
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "fit_power_law": "archscale.scaling.fit",
    "fit_parametric": "archscale.scaling.fit",
    "compare_power_laws": "archscale.scaling.fit",
    "PowerLawFit": "archscale.scaling.fit",
    "ParametricFit": "archscale.scaling.fit",
    "BaseHyperparams": "archscale.scaling.laws",
    "build_model_for": "archscale.scaling.parametrization",
    "model_spec_for": "archscale.scaling.parametrization",
    "parametrize": "archscale.scaling.parametrization",
    "expand_sweep": "archscale.scaling.sweep",
    "depth_table": "archscale.scaling.sweep",
    "coord_check": "archscale.scaling.coord_check",
    "lr_transfer": "archscale.scaling.coord_check",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from archscale.scaling.coord_check import coord_check, lr_transfer
    from archscale.scaling.fit import (
        ParametricFit,
        PowerLawFit,
        compare_power_laws,
        fit_parametric,
        fit_power_law,
    )
    from archscale.scaling.laws import BaseHyperparams
    from archscale.scaling.parametrization import build_model_for, model_spec_for, parametrize
    from archscale.scaling.sweep import depth_table, expand_sweep


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'archscale.scaling' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
