"""archscale: language-model pretraining research on architectures and scaling laws.

The public surface is small and imported lazily, so that ``import archscale`` stays cheap (no torch import
until a model, a trainer or data is actually used)::

    from archscale import Recipe, resolve, build_model, Trainer, registry
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Recipe": "archscale.recipe",
    "ResolvedRecipe": "archscale.recipe",
    "resolve": "archscale.recipe",
    "build_model": "archscale.models.lm",
    "Trainer": "archscale.train.trainer",
    "registry": "archscale.registry",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from archscale import registry
    from archscale.models.lm import build_model
    from archscale.recipe import Recipe, ResolvedRecipe, resolve
    from archscale.train.trainer import Trainer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'archscale' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.endswith("." + name) else getattr(mod, name)
    globals()[name] = value
    return value
