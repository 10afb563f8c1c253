"""Scaling laws: transfer base hyperparameters, tuned once at a base depth d0, to a target depth d.

A recipe's ``scaling`` section holds the base hyperparameters (:class:`BaseHyperparams`, ArchScale v1 defaults:
d0 = 16, η0 = 4e-4, b0 = 2²¹ tokens, t0 = 1e11 tokens, warmup 1e9 tokens, weight decay 0.1; REFERENCE §4) and,
optionally, a registered law (``archscale.registry.scaling_laws``). The law decides, for the target model:

1. the token budget T: proportional to parameters, T = t0 · N(d)/N(d0) (v1: constant ≈ 103 tokens/param; v1's
   code counts N = c·d³ per family, i.e. T = t0·(d/d0)³, offered as ``tokens="cubic"``); a fixed
   tokens-per-parameter ratio (Chinchilla-optimal ≈ 20, Hoffmann et al. 2022); or the recipe's budget;
2. the batch: b0 rounded to whole micro-batches on every device (v1 rounds down, HEAD to the nearest), and the
   LR correction √(b/b0) for the rounding (the SDE square-root rule, Malladi et al. 2022);
3. the global learning rate η = η0 · √(b/b0) · (T/t0)^e (e = 0 in v1; HEAD's HyperP uses e = −0.32);
4. weight decay (constant, or HEAD's × d0/d for Muon);
5. warmup (a constant 1e9 tokens in v1; or proportional to T; or none; or the schedule section's own).

The per-parameter-role learning-rate and weight-decay multipliers, including μP++'s depth rule η ← η·√(d0/d),
belong to the *parametrization* (:mod:`archscale.scaling.parametrization`): they define μP and μP++ and apply
with or without a law. :func:`archscale.recipe.resolve` applies both, in numbered steps, and records every
number with the rule that produced it.

This module imports only pydantic (the recipe schema imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from archscale.registry import scaling_laws

__all__ = [
    "BaseHyperparams",
    "Rule",
    "TransferQuery",
    "Transfer",
    "DepthTransferConfig",
    "DepthTransfer",
    "ChinchillaConfig",
    "ChinchillaTransfer",
    "round_batch",
]

CountConvention = Literal["all", "non_embedding", "no_input_embedding"]


@dataclass(frozen=True)
class Rule:
    """A derived number and the human-readable rule (formula) that produced it."""

    value: float
    rule: str


class BaseHyperparams(BaseModel):
    """Hyperparameters tuned at the base model, and the anchors of μP's width/depth/head-dim ratios.

    The anchors (``depth``, ``width``, ``head_dim``) are used by μP and μP++ with or without a scaling law; the
    optimisation values (``lr``, ``batch_tokens``, ``tokens``, ``warmup_tokens``, ``weight_decay``) are used only
    by a scaling law (without one, ``optimizer.lr`` etc. are taken as given, at the base size).
    """

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(16, ge=1, description="d0: base depth (layers) at which the hyperparameters were tuned "
                                             "(ArchScale v1: 16; HEAD: 8).")
    width: int | None = Field(
        None, ge=1, description="n0: base width (n_embd) of width-μP ratios. None = n_embd · d0/L, i.e. width "
        "proportional to depth at the target's aspect ratio (ArchScale sizing), so n/n0 = L/d0.")
    head_dim: int = Field(128, ge=1, description="hd0: head dim anchoring μP's attention scale √hd0/hd "
                                                 "(ArchScale: 128).")
    lr: float = Field(4e-4, gt=0, description="η0: peak learning rate tuned at the base model (before per-role "
                                              "multipliers).")
    batch_tokens: int = Field(2**21, gt=0, description="b0: tokens per optimizer step at which η0 was tuned.")
    tokens: float = Field(1e11, gt=0, description="t0: training tokens of the base model.")
    warmup_tokens: float = Field(1e9, ge=0, description="Warmup of the base model, in tokens.")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay at the base model (before per-role "
                                                       "multipliers).")


@dataclass(frozen=True)
class TransferQuery:
    """What a law is told about the target run.

    depth: the target's number of layers L. n_params(depth, convention): parameter count of the recipe's
    architecture at another depth (the base model is ``n_params(base.depth, ...)``). batch_multiple: tokens of
    one micro-batch on every device (world · micro_batch_size · seq_len): the batch must be a multiple of it.
    budget_batch_tokens: the recipe's ``budget.global_batch_tokens``.
    """

    base: BaseHyperparams
    depth: int
    n_params: Callable[[int, CountConvention], int]
    batch_multiple: int
    budget_batch_tokens: int


@dataclass(frozen=True)
class Transfer:
    """A law's answer. ``tokens`` None = take the length from the recipe's budget section; ``warmup_tokens``
    None = take the warmup from the schedule section. ``lr`` and ``weight_decay`` are global: the
    parametrization's per-role multipliers apply on top."""

    batch_tokens: Rule
    lr: Rule
    weight_decay: Rule
    tokens: Rule | None = None
    warmup_tokens: Rule | None = None


def round_batch(raw: int, multiple: int, mode: Literal["floor", "nearest"]) -> int:
    """``raw`` tokens rounded to a positive multiple of ``multiple`` (down, or to the nearest; at least one)."""
    if mode == "floor":
        k = raw // multiple
    elif mode == "nearest":
        k = (raw + multiple // 2) // multiple
    else:
        raise ValueError(f"batch rounding must be 'floor' or 'nearest', got {mode!r}")
    return max(1, k) * multiple


class DepthTransferConfig(BaseModel):
    """Options of the depth-transfer law; the defaults are ArchScale v1 (REFERENCE §4), HEAD's variants are
    named alternatives."""

    model_config = ConfigDict(extra="forbid")

    tokens: Literal["proportional", "cubic", "per_param", "budget"] = Field(
        "proportional", description="proportional: T = t0 · N(d)/N(d0) with N counted (REFERENCE §4); cubic: "
        "T = t0 · (d/d0)³, v1's code (its analytic N = c·d³ per family); per_param: T = tokens_per_param · N(d); "
        "budget: the recipe's budget section (tokens, steps or tokens_per_param).")
    tokens_per_param: float = Field(20.0, gt=0, description="For tokens='per_param' (Chinchilla-optimal ≈ 20).")
    param_convention: CountConvention = Field(
        "non_embedding", description="Which N the token rules use (v1's sizes are non-embedding).")
    batch: Literal["base", "budget"] = Field(
        "base", description="Raw batch before rounding: b0 (base), or budget.global_batch_tokens; the LR is "
        "corrected by the batch rule either way.")
    batch_rounding: Literal["floor", "nearest"] = Field(
        "floor", description="Round the batch down (v1) or to the nearest (HEAD) multiple of world · micro · seq.")
    lr_batch_scaling: Literal["sqrt", "linear", "none"] = Field(
        "sqrt", description="LR × (b/b0)^½ (v1, SDE rule), × b/b0, or no correction.")
    lr_token_exponent: float = Field(
        0.0, description="LR × (T/t0)^e; 0 in v1, −0.32 for HEAD's HyperP (MuonH).")
    weight_decay: Literal["constant", "inverse_depth"] = Field(
        "constant", description="constant: base weight decay (v1); inverse_depth: × d0/d (HEAD with Muon).")
    warmup: Literal["base_tokens", "proportional", "none", "schedule"] = Field(
        "base_tokens", description="base_tokens: the base warmup in tokens at every depth (v1); proportional: "
        "base warmup × T/t0; none: no warmup (HEAD with Muon); schedule: the schedule section's warmup.")


@scaling_laws.register("archscale_v1", config=DepthTransferConfig)
class DepthTransfer:
    """ArchScale's depth transfer (v1 defaults): T ∝ N, batch b0 rounded down with LR × √(b/b0), constant
    weight decay and 1e9 warmup tokens. Options select HEAD's rules (see DepthTransferConfig)."""

    Config = DepthTransferConfig

    def __init__(self, config: DepthTransferConfig | None = None) -> None:
        self.config = config or self.Config()

    def __call__(self, q: TransferQuery) -> Transfer:
        c, base = self.config, q.base

        # Batch: whole micro-batches on every device, then the LR correction for the rounding.
        raw = base.batch_tokens if c.batch == "base" else q.budget_batch_tokens
        b = round_batch(raw, q.batch_multiple, c.batch_rounding)
        src = "b0" if c.batch == "base" else "budget.global_batch_tokens"
        batch = Rule(b, f"{src} {raw} rounded ({c.batch_rounding}) to a multiple of world·micro·seq_len "
                        f"{q.batch_multiple}")

        # Tokens.
        tokens: Rule | None = None
        if c.tokens == "proportional":
            n_t, n_b = q.n_params(q.depth, c.param_convention), q.n_params(base.depth, c.param_convention)
            tokens = Rule(base.tokens * n_t / n_b,
                          f"t0 · N(d)/N(d0) with N_{c.param_convention} = {base.tokens:.4g} · {n_t:,}/{n_b:,} "
                          f"(constant {base.tokens / n_b:.1f} tokens/param)")
        elif c.tokens == "cubic":
            tokens = Rule(base.tokens * (q.depth / base.depth) ** 3, "t0 · (d/d0)³ (v1's analytic N ∝ d³)")
        elif c.tokens == "per_param":
            n_t = q.n_params(q.depth, c.param_convention)
            tokens = Rule(c.tokens_per_param * n_t, f"{c.tokens_per_param:g} tokens/param × N_{c.param_convention}")

        # Global learning rate.
        lr, parts = base.lr, ["η0"]
        if c.lr_batch_scaling != "none":
            lr *= (b / base.batch_tokens) ** (0.5 if c.lr_batch_scaling == "sqrt" else 1.0)
        parts.append({"sqrt": "√(b/b0)", "linear": "(b/b0)", "none": ""}[c.lr_batch_scaling])
        if c.lr_token_exponent:
            if tokens is None:
                raise ValueError("lr_token_exponent needs a token rule of the law (tokens='proportional' or "
                                 "'per_param'), not the budget section")
            lr *= (tokens.value / base.tokens) ** c.lr_token_exponent
            parts.append(f"(T/t0)^{c.lr_token_exponent:g}")
        lr_rule = Rule(lr, " · ".join(p for p in parts if p) + " (scaling law)")

        # Weight decay.
        if c.weight_decay == "constant":
            wd = Rule(base.weight_decay, "base weight decay (scaling law)")
        else:
            wd = Rule(base.weight_decay * base.depth / q.depth, "base weight decay · d0/d (scaling law)")

        # Warmup.
        warm: Rule | None
        if c.warmup == "base_tokens":
            warm = Rule(base.warmup_tokens, "base warmup tokens, the same at every depth")
        elif c.warmup == "proportional":
            if tokens is None:
                raise ValueError("warmup='proportional' needs a token rule of the law, not the budget section")
            warm = Rule(base.warmup_tokens * tokens.value / base.tokens, "base warmup tokens · T/t0")
        elif c.warmup == "none":
            warm = Rule(0.0, "no warmup (scaling law)")
        else:
            warm = None
        return Transfer(batch_tokens=batch, lr=lr_rule, weight_decay=wd, tokens=tokens, warmup_tokens=warm)


class ChinchillaConfig(DepthTransferConfig):
    """As archscale_v1, but T = 20 tokens per parameter (Hoffmann et al. 2022) by default."""

    tokens: Literal["proportional", "cubic", "per_param", "budget"] = Field(
        "per_param", description="per_param (default here): T = tokens_per_param · N(d); see archscale_v1.")


@scaling_laws.register("chinchilla", config=ChinchillaConfig)
class ChinchillaTransfer(DepthTransfer):
    """Chinchilla-optimal budget, T = 20 · N (Hoffmann et al. 2022), with archscale_v1's batch, LR, weight-decay
    and warmup rules."""

    Config = ChinchillaConfig

