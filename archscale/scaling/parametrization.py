"""Parametrizations: how initialisation, forward multipliers and per-role learning rates depend on model size.

A parametrization is a registered object with the methods of :class:`Parametrization`. It sees the model only
through its :class:`~archscale.models.spec.LMSpec` and a :class:`ScaleContext` (target and base depth, width and
head dim; whether the optimizer's matrix update is width-independent), and answers with numbers; the model builder
(:func:`build_model_for`) and the optimizer router apply them. Nothing parses parameter names: roles (embedding,
head, matrix, vector) come from the model structure (``archscale.models.api.ParamRole``).

Registered (REFERENCE §4, ArchScale v1):

- ``sp``: one LR and weight decay for every role; init N(0, 0.02), output projections / √(2L); no multipliers.
- ``mup`` (width μP, Yang et al. 2021, "Tensor Programs V"; ArchScale's "original μP"): AdamW LR of matrices
  × n0/n, vector-like params × 1; init fan-in uniform U(±1/√fan_in) on matrices, untied readout zero,
  embedding N(0, 1e-4) (N(0, 0.02) when tied); logits × n0/n; attention scale × √(hd0/hd) ("1/d attention").
- ``mup++`` (μP++, Ren et al. 2025): μP + Depth-μP (Yang et al. 2023, "Tensor Programs VI": every residual
  branch × 1/√(2L), global LR × √(d0/d)) + no weight decay on vector-like params. With AdamW:
  LR_matrix = η·(d0/d)^1.5, LR_vector = η·(d0/d)^0.5 when width ∝ depth.

Width ratios use n/n0 with n0 = ``scaling.base.width``, by default n_embd · d0/L (width ∝ depth, so that n0/n =
d0/L: "logits × d0/L" of REFERENCE §4.7). With an optimizer whose matrix update is already width-independent
(Muon's RMS-matched update), matrices keep × 1 of the width rule; an optimizer entry declares this with the
attribute ``width_independent_matrix_lr = True`` (see :data:`WIDTH_INDEPENDENT_ATTR`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from archscale.models.api import PARAM_ROLES, ParamRole
from archscale.models.init import InitRule
from archscale.models.spec import LMSpec
from archscale.registry import parametrizations
from archscale.scaling.laws import BaseHyperparams, Rule

if TYPE_CHECKING:  # pragma: no cover
    from archscale.models.lm import LanguageModel
    from archscale.recipe import Recipe

__all__ = [
    "Rule",
    "ScaleContext",
    "Parametrization",
    "StandardParametrization",
    "MuP",
    "MuPPlusPlus",
    "WIDTH_INDEPENDENT_ATTR",
    "attention_head_dim",
    "attention_head_dims",
    "scale_context",
    "Parametrized",
    "parametrize",
    "model_spec_for",
    "build_model_for",
    "mup_init",
]

WIDTH_INDEPENDENT_ATTR = "width_independent_matrix_lr"
"""Attribute of a registered optimizer (the function or class in ``archscale.registry.optimizers``): True when its
matrix update is already width-independent (Muon), so μP's n0/n matrix LR rule does not apply."""


@dataclass(frozen=True)
class ScaleContext:
    """Where the target model sits relative to the base model the hyperparameters were tuned at."""

    n_layer: int  # L
    base_n_layer: int  # d0
    width: int  # n (n_embd)
    base_width: float  # n0 (fractional when n_embd · d0 is not divisible by L)
    head_dims: dict[int, list[int]]  # softmax-attention head dim hd -> layers with it (empty: no attention)
    base_head_dim: int  # hd0
    tied: bool = False
    width_independent_matrix_lr: bool = False

    @property
    def head_dim(self) -> int | None:
        """The attention head dim hd (None without attention). μP's attention scale is one number per model
        (``LMSpec.attn_scale``), so mixed head dims raise here, when a parametrization needs hd."""
        if len(self.head_dims) > 1:
            where = "; ".join(f"head_dim {hd} in layers {idx}" for hd, idx in sorted(self.head_dims.items()))
            raise ValueError(f"μP's attention scale is one number per model but the attention layers differ ({where})")
        return next(iter(self.head_dims), None)

    @property
    def width_ratio(self) -> float:
        """n0/n: μP's matrix-LR and logit multiplier."""
        return self.base_width / self.width

    @property
    def depth_ratio(self) -> float:
        """d0/L: Depth-μP's (squared) LR multiplier."""
        return self.base_n_layer / self.n_layer


class Parametrization(Protocol):
    """What a registered parametrization answers; see the module docstring."""

    def lr_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        """Multiplier of the global peak learning rate for each parameter role."""
        ...

    def weight_decay_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        """Multiplier of the global weight decay for each parameter role (0 = no decay)."""
        ...

    def forward_multipliers(self, spec: LMSpec, ctx: ScaleContext) -> dict[str, Rule]:
        """New values of LMSpec's forward fields (logit_multiplier, residual_multiplier, attn_scale); the
        fields not returned keep the architecture's values."""
        ...

    def init_rule(self, spec: LMSpec, ctx: ScaleContext) -> InitRule | None:
        """The per-parameter initialisation applied by the model builder; None = the model's own default
        (SP: ``archscale.models.init.standard_init``), applied when the model is constructed."""
        ...

    def init_stds(self, spec: LMSpec, ctx: ScaleContext) -> dict[str, Rule]:
        """Standard deviation of the init by kind (embedding, head, matrix, out_proj), for the resolved table."""
        ...


# --------------------------------------------------------------------------------------------- SP
class StandardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@parametrizations.register("sp", config=StandardConfig)
class StandardParametrization:
    """Standard parametrization (SP): one learning rate and one weight decay for every parameter; init
    N(0, 0.02) with 1/√(2L) on residual output projections (GPT-2 / Megatron convention, REFERENCE §4.6);
    no forward multipliers."""

    Config = StandardConfig

    def __init__(self, config: StandardConfig | None = None) -> None:
        self.config = config or StandardConfig()

    def lr_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        return {role: Rule(1.0, "SP: same LR for every role") for role in PARAM_ROLES}

    def weight_decay_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        return {role: Rule(1.0, "SP: decoupled weight decay on every role") for role in PARAM_ROLES}

    def forward_multipliers(self, spec: LMSpec, ctx: ScaleContext) -> dict[str, Rule]:
        return {}

    def init_rule(self, spec: LMSpec, ctx: ScaleContext) -> InitRule | None:
        return None  # the model's default: standard_init(spec.init_std, L), applied at construction

    def init_stds(self, spec: LMSpec, ctx: ScaleContext) -> dict[str, Rule]:
        s = spec.init_std
        out = {
            "embedding": Rule(s, "SP: N(0, init_std)"),
            "matrix": Rule(s, "SP: N(0, init_std)"),
            "out_proj": Rule(s / math.sqrt(2 * spec.n_layers), "SP: init_std / √(2L) on residual output projections"),
        }
        if not spec.tie_embeddings:
            out["head"] = Rule(s, "SP: N(0, init_std)")
        return out


# --------------------------------------------------------------------------------------------- μP, μP++
class MuPConfig(BaseModel):
    """Init constants of μP / μP++ (ArchScale v1 values)."""

    model_config = ConfigDict(extra="forbid")

    embedding_std: float = Field(1e-4, gt=0, description="Std of the untied input embedding (RWKV-style small init).")
    tied_embedding_std: float = Field(0.02, gt=0, description="Std of a tied embedding (it is also the readout).")
    zero_readout: bool = Field(True, description="Initialise an untied head (readout) to zero (μP's zero readout).")
    init_scale: float = Field(1.0, gt=0, description="Multiplier of the fan-in uniform init of matrices "
                                                     "(ArchScale's w_init_scale).")


def mup_init(config: MuPConfig, tied: bool) -> InitRule:
    """μP init: matrices U(±s/√fan_in) (fan_in = input features; PyTorch's nn.Linear default for s = 1), no extra
    factor on output projections (μP++ scales the branch output instead); untied readout zero; embedding
    N(0, 1e-4), or N(0, 0.02) when tied; vector-like params keep their module init (norm gains 1, Mamba's A_log)."""

    def rule(name: str, param: nn.Parameter, role: ParamRole, is_output_projection: bool) -> None:
        with torch.no_grad():
            if role == "vector":
                return
            if role == "embedding":
                param.normal_(0.0, config.tied_embedding_std if tied else config.embedding_std)
            elif role == "head":
                if config.zero_readout:
                    param.zero_()
                else:
                    _fan_in_uniform(param, config.init_scale)
            else:
                _fan_in_uniform(param, config.init_scale)

    return rule


def _fan_in_uniform(param: torch.Tensor, scale: float) -> None:
    fan_in = param[0].numel() if param.ndim > 1 else param.numel()  # (out, in, ...) layout of nn.Linear / conv
    bound = scale / math.sqrt(fan_in)
    param.uniform_(-bound, bound)


@parametrizations.register("mup", config=MuPConfig)
class MuP:
    """Width μP (ArchScale's "original μP"): matrix LR × n0/n (× 1 with a width-independent optimizer such as
    Muon), vector-like × 1, weight decay on every role; fan-in uniform init, zero readout, small embedding;
    logits × n0/n and attention scale × √(hd0/hd)."""

    Config = MuPConfig
    name = "μP"
    depth_mup = False

    def __init__(self, config: MuPConfig | None = None) -> None:
        self.config = config or self.Config()

    # learning rate and weight decay
    def lr_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        depth, depth_rule = 1.0, ""
        if self.depth_mup:
            depth, depth_rule = math.sqrt(ctx.depth_ratio), "√(d0/d)"
        if ctx.width_independent_matrix_lr:
            width, width_rule = 1.0, "× 1 (optimizer's matrix update is width-independent)"
        else:
            width, width_rule = ctx.width_ratio, "n0/n"
        matrix_rule = " · ".join(p for p in (depth_rule, width_rule) if p)
        vector_rule = depth_rule or "× 1"
        out: dict[ParamRole, Rule] = {}
        for role in PARAM_ROLES:
            if role == "matrix":
                out[role] = Rule(depth * width, f"{self.name} matrices: {matrix_rule}")
            else:
                out[role] = Rule(depth, f"{self.name} vector-like: {vector_rule}")
        return out

    def weight_decay_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        return {role: Rule(1.0, f"{self.name}: decoupled weight decay on every role") for role in PARAM_ROLES}

    # forward
    def forward_multipliers(self, spec: LMSpec, ctx: ScaleContext) -> dict[str, Rule]:
        out = {"logit_multiplier": Rule(spec.logit_multiplier * ctx.width_ratio, f"{self.name}: logits × n0/n")}
        if ctx.head_dim is not None:
            base = spec.attn_scale if spec.attn_scale is not None else ctx.head_dim**-0.5
            out["attn_scale"] = Rule(
                base * math.sqrt(ctx.base_head_dim / ctx.head_dim),
                f"{self.name}: 1/√hd · √(hd0/hd) = √hd0/hd (1/d attention anchored at hd0 = {ctx.base_head_dim})",
            )
        if self.depth_mup:
            out["residual_multiplier"] = Rule(
                spec.residual_multiplier / math.sqrt(2 * ctx.n_layer), f"{self.name}: each residual branch / √(2L)"
            )
        return out

    # init
    def init_rule(self, spec: LMSpec, ctx: ScaleContext) -> InitRule:
        return mup_init(self.config, spec.tie_embeddings)

    def init_stds(self, spec: LMSpec, ctx: ScaleContext) -> dict[str, Rule]:
        c = self.config
        s = c.init_scale
        out = {
            "embedding": Rule(c.tied_embedding_std if spec.tie_embeddings else c.embedding_std,
                              f"{self.name}: N(0, {'tied_embedding_std' if spec.tie_embeddings else 'embedding_std'})"),
            "matrix": Rule(s / math.sqrt(3 * spec.n_embd), f"{self.name}: U(±1/√fan_in), std 1/√(3·fan_in) at "
                                                           "fan_in = n_embd"),
            "out_proj": Rule(s / math.sqrt(3 * spec.mlp_hidden), f"{self.name}: U(±1/√fan_in) at the MLP down "
                                                                 "projection's fan_in = mlp_hidden (no depth factor)"),
        }
        if not spec.tie_embeddings:
            out["head"] = Rule(0.0 if c.zero_readout else s / math.sqrt(3 * spec.n_embd),
                               f"{self.name}: zero readout" if c.zero_readout else f"{self.name}: U(±1/√fan_in)")
        return out


@parametrizations.register("mup++", config=MuPConfig)
class MuPPlusPlus(MuP):
    """μP++ (Ren et al. 2025): width μP + Depth-μP (residual branches / √(2L), LR × √(d0/d)) + no weight decay
    on vector-like parameters (embeddings, head, norms, biases, conv1d, A_log, D, λ)."""

    name = "μP++"
    depth_mup = True

    def weight_decay_multipliers(self, ctx: ScaleContext) -> dict[ParamRole, Rule]:
        return {
            role: Rule(1.0, "μP++: decoupled weight decay on matrices") if role == "matrix"
            else Rule(0.0, "μP++: no weight decay on vector-like params")
            for role in PARAM_ROLES
        }


# --------------------------------------------------------------------------------------------- context
def attention_head_dims(spec: LMSpec) -> dict[int, list[int]]:
    """Head dim -> layer indices of the model's softmax-attention layers: those whose mixer config has ``n_head``
    and ``head_dim`` (head_dim None means n_embd // n_head)."""
    from archscale.models.mixers.base import resolve_mixer

    found: dict[int, list[int]] = {}
    for i, layer in enumerate(spec.layers):
        _, config = resolve_mixer(layer)
        fields = type(config).model_fields
        if "n_head" not in fields or "head_dim" not in fields:
            continue
        hd = config.head_dim if config.head_dim is not None else spec.n_embd // config.n_head  # type: ignore[attr-defined]
        found.setdefault(int(hd), []).append(i)
    return found


def attention_head_dim(spec: LMSpec) -> int | None:
    """The one head dim of the model's attention layers (None without attention; ValueError if they differ)."""
    return ScaleContext(1, 1, 1, 1.0, attention_head_dims(spec), 1).head_dim


def scale_context(spec: LMSpec, base: BaseHyperparams, optimizer_entry: Any = None) -> ScaleContext:
    """The :class:`ScaleContext` of ``spec`` relative to ``base`` (base width n0 defaults to n_embd · d0/L)."""
    L = spec.n_layers
    base_width = base.width if base.width is not None else spec.n_embd * base.depth / L
    return ScaleContext(
        n_layer=L,
        base_n_layer=base.depth,
        width=spec.n_embd,
        base_width=float(base_width),
        head_dims=attention_head_dims(spec),
        base_head_dim=base.head_dim,
        tied=spec.tie_embeddings,
        width_independent_matrix_lr=bool(getattr(optimizer_entry, WIDTH_INDEPENDENT_ATTR, False)),
    )


@dataclass(frozen=True)
class Parametrized:
    """A recipe's model spec with the parametrization's forward multipliers applied, plus what produced it."""

    spec: LMSpec  # as built (multipliers and the recipe's loss section applied)
    architecture_spec: LMSpec  # as the architecture entry returned it
    parametrization: Parametrization
    context: ScaleContext
    forward: dict[str, Rule]

    def init_rule(self) -> InitRule | None:
        return self.parametrization.init_rule(self.spec, self.context)


def parametrize(recipe: Recipe) -> Parametrized:
    """Architecture spec → parametrized spec: the single path used by resolve, the Trainer and inference."""
    arch = recipe.model.entry()(recipe.model.config())
    param = recipe.parametrization.entry()(recipe.parametrization.config())
    ctx = scale_context(arch, recipe.scaling.base, recipe.optimizer.entry())
    forward = param.forward_multipliers(arch, ctx)
    # The recipe's loss section rides on the spec the model is built from (LossSpec validated these values).
    loss = {"z_loss": recipe.loss.z_loss, "loss_impl": recipe.loss.impl, "loss_chunk_size": recipe.loss.chunk_size}
    spec = arch.model_copy(update={**{k: r.value for k, r in forward.items()}, **loss})
    return Parametrized(spec=spec, architecture_spec=arch, parametrization=param, context=ctx, forward=forward)


def model_spec_for(recipe: Recipe) -> LMSpec:
    """The LMSpec the recipe's model is built from (forward multipliers of the parametrization applied)."""
    return parametrize(recipe).spec


def build_model_for(recipe: Recipe, *, device: torch.device | str | None = None) -> LanguageModel:
    """Build the recipe's model and initialise it by its parametrization (the Trainer and ``load_for_inference``
    both build through here). On the meta device nothing is initialised."""
    from archscale.models.lm import build_model

    p = parametrize(recipe)
    model = build_model(p.spec, device=device)  # initialised by the model's default (SP) rule
    rule = p.init_rule()
    if rule is not None and not (device is not None and str(device) == "meta"):
        model.reset_parameters(rule)
    return model
