"""Learning-rate schedules: the multiplier of the peak LR for each optimizer step.

Convention (the trainer and the recipe rely on it). A registered schedule is a function

    f(step: int, *, total_steps: int, warmup_steps: int, config: <its Config>) -> float

``step`` counts optimizer steps from 0 and the value is the multiplier of the peak LR used for the update made *at*
that step (this is ``LambdaLR``'s ``last_epoch`` when ``scheduler.step()`` is called once after every
``optimizer.step()``). Peak LRs are per parameter group (set by the router, ``routing.py``); one schedule scales
them all, as in ArchScale.

Warmup (shared by every schedule), for ``warmup_steps = W > 0``::

    multiplier(step) = (step + 1) / W        for 0 <= step < W

so the first update uses 1/W of the peak (never a wasted zero-LR step) and step W - 1 is the first at the peak.
With ``W = 0`` there is no warmup and step 0 already uses the post-warmup value.

After warmup the progress through the remaining steps is ``p = (step - W) / (total_steps - W)``, clamped to
[0, 1]: p = 0 at the first post-warmup step and p = 1 at ``step == total_steps`` (one past the last update, which
is ``total_steps - 1``). A decaying schedule therefore *reaches* ``min_lr_ratio`` at ``total_steps`` (the last
update uses a little more, e.g. ``1/(total_steps - W)`` of the peak for linear decay to 0: it is not wasted), and any
step beyond ``total_steps`` keeps ``min_lr_ratio`` (clamped; useful when a run is extended by a few steps).

``warmup_steps >= total_steps`` is an error rather than a silent clamp: the schedule would never leave warmup, so
the run would not be the experiment the recipe describes. Whoever derives ``warmup_steps`` from a warmup token
budget (REFERENCE.md §4: 1e9 tokens) decides, visibly, what to do for runs shorter than that.

Entries: ``linear`` (ArchScale's default, REFERENCE.md §4-5), ``cosine`` (Loshchilov & Hutter 2017, SGDR, without
restarts), ``wsd`` (warmup-stable-decay, Hu et al. 2024 "MiniCPM"; stable for 5/7 of the post-warmup steps per
REFERENCE.md §5; "1-sqrt" cooldown from Hägele et al. 2024 "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations"), ``constant`` (warmup, then the peak).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from archscale.optim._config import validated_config
from archscale.registry import schedules

__all__ = [
    "ConstantConfig",
    "CosineConfig",
    "LinearConfig",
    "ScheduleConfig",
    "WSDConfig",
    "check_steps",
    "constant",
    "cosine",
    "linear",
    "lr_multiplier",
    "make_lr_scheduler",
    "wsd",
]


# --------------------------------------------------------------------------------------------------- configs
class ScheduleConfig(BaseModel):
    """Parameters every schedule shares. Warmup is not here: it reaches the function already in steps."""

    model_config = ConfigDict(extra="forbid")

    min_lr_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Final LR as a fraction of the peak LR, reached at total_steps (ArchScale v1 uses 0).",
    )


class LinearConfig(ScheduleConfig):
    """Linear warmup, then linear decay to ``min_lr_ratio`` (ArchScale's default)."""


class CosineConfig(ScheduleConfig):
    """Linear warmup, then half a cosine from the peak to ``min_lr_ratio``."""


class WSDConfig(ScheduleConfig):
    """Warmup, stable at the peak, then a short decay ("cooldown") to ``min_lr_ratio``."""

    stable_fraction: float = Field(
        5.0 / 7.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Fraction of the post-warmup steps spent at the peak LR before the decay starts "
            "(REFERENCE.md §5: 5/7). Must be < 1, else there is no decay (use 'constant')."
        ),
    )
    decay_shape: Literal["linear", "1-sqrt"] = Field(
        "linear",
        description=(
            "Shape of the decay phase as a function of its progress q in [0, 1]: 'linear' = 1 - q; "
            "'1-sqrt' = 1 - sqrt(q) (Hägele et al. 2024, which found it better than linear for short cooldowns)."
        ),
    )


class ConstantConfig(ScheduleConfig):
    """Linear warmup, then the peak LR until the end."""

    @model_validator(mode="after")
    def _no_decay_target(self) -> ConstantConfig:
        # A constant schedule never decays, so a non-zero target would be silently ignored: refuse it instead.
        if self.min_lr_ratio != 0.0:
            raise ValueError(
                f"min_lr_ratio={self.min_lr_ratio} has no effect on the 'constant' schedule (it never decays); "
                "leave it at 0 or pick a decaying schedule (linear, cosine, wsd)"
            )
        return self


# --------------------------------------------------------------------------------------------------- helpers
def check_steps(total_steps: int, warmup_steps: int) -> None:
    """Raise ``ValueError`` unless ``0 <= warmup_steps < total_steps`` (see the module docstring for why)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}): the schedule would "
            "never leave warmup. Shorten the warmup or train longer."
        )


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step counts optimizer steps from 0, got {step}")


def _warmup(step: int, warmup_steps: int) -> float | None:
    """(step + 1) / W inside warmup, else None. The +1 makes the first update non-zero (module docstring)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return None


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    """Fraction of the post-warmup steps done before ``step``: 0 at step W, 1 at total_steps and beyond."""
    return min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))


def _between(min_ratio: float, fraction_of_peak: float) -> float:
    """Map a shape value in [0, 1] (1 = peak) onto [min_lr_ratio, 1]."""
    return min_ratio + (1.0 - min_ratio) * fraction_of_peak


# --------------------------------------------------------------------------------------------------- schedules
@schedules.register("linear", config=LinearConfig)
def linear(step: int, *, total_steps: int, warmup_steps: int, config: LinearConfig) -> float:
    """Warmup, then ``min + (1 - min)(1 - p)``: ArchScale's (and LitGPT/TinyLlama's) linear decay."""
    check_steps(total_steps, warmup_steps)
    _check_step(step)
    w = _warmup(step, warmup_steps)
    if w is not None:
        return w
    return _between(config.min_lr_ratio, 1.0 - _progress(step, total_steps, warmup_steps))


@schedules.register("cosine", config=CosineConfig)
def cosine(step: int, *, total_steps: int, warmup_steps: int, config: CosineConfig) -> float:
    """Warmup, then ``min + (1 - min)(1 + cos(pi p)) / 2`` (SGDR's annealing, Loshchilov & Hutter 2017)."""
    check_steps(total_steps, warmup_steps)
    _check_step(step)
    w = _warmup(step, warmup_steps)
    if w is not None:
        return w
    p = _progress(step, total_steps, warmup_steps)
    return _between(config.min_lr_ratio, 0.5 * (1.0 + math.cos(math.pi * p)))


@schedules.register("wsd", config=WSDConfig)
def wsd(step: int, *, total_steps: int, warmup_steps: int, config: WSDConfig) -> float:
    """Warmup, the peak while ``p <= stable_fraction``, then a decay over the rest of the run (MiniCPM, 2024).

    With f = stable_fraction, the decay progress is ``q = (p - f) / (1 - f)`` in [0, 1] and the multiplier is
    ``min + (1 - min) * shape(q)``, shape(q) = 1 - q ('linear') or 1 - sqrt(q) ('1-sqrt'). The boundary is
    continuous in p, so the decay starts at the first step with ``step > W + f (total_steps - W)``.
    """
    check_steps(total_steps, warmup_steps)
    _check_step(step)
    w = _warmup(step, warmup_steps)
    if w is not None:
        return w
    p = _progress(step, total_steps, warmup_steps)
    f = config.stable_fraction
    if p <= f:
        return 1.0
    q = (p - f) / (1.0 - f)
    shape = 1.0 - q if config.decay_shape == "linear" else 1.0 - math.sqrt(q)
    return _between(config.min_lr_ratio, shape)


@schedules.register("constant", config=ConstantConfig)
def constant(step: int, *, total_steps: int, warmup_steps: int, config: ConstantConfig) -> float:
    """Warmup, then 1 (for LR sweeps of the stable phase and for fine-tuning)."""
    check_steps(total_steps, warmup_steps)
    _check_step(step)
    w = _warmup(step, warmup_steps)
    return 1.0 if w is None else w


# --------------------------------------------------------------------------------------------------- public API
def lr_multiplier(
    name: str,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    total_steps: int,
    warmup_steps: int,
) -> Callable[[int], float]:
    """The schedule ``name`` as ``step -> multiplier``, with its params validated against its config model.

    Fails early (here, not at step 10 000): unknown name (did-you-mean error), a bad or unknown field
    (``pydantic.ValidationError`` naming it), ``warmup_steps >= total_steps``. The result is a plain function, so
    ``LambdaLR.state_dict()`` stores nothing of it and a checkpoint loads with ``torch.load(weights_only=True)``;
    on resume, rebuild it from the recipe.
    """
    fn = schedules.get(name)
    cfg = validated_config(schedules, name, config)
    check_steps(total_steps, warmup_steps)

    def multiplier(step: int) -> float:
        return fn(step, total_steps=total_steps, warmup_steps=warmup_steps, config=cfg)

    multiplier.__qualname__ = multiplier.__name__ = f"{name}_lr_multiplier"
    return multiplier


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, multiplier_fn: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` scaling every group's peak LR (its ``initial_lr``) by ``multiplier_fn(step)``.

    Building it applies the step-0 multiplier at once; call ``scheduler.step()`` after every
    ``optimizer.step()``. Resume: build optimizer and scheduler exactly as for a fresh run, then
    ``optimizer.load_state_dict(...)`` and ``scheduler.load_state_dict(...)``; the LRs continue bit for bit
    (``last_epoch`` and ``base_lrs`` come from the checkpoint, the function from the recipe).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=multiplier_fn)
