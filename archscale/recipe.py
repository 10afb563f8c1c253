"""The experiment description: a strict pydantic :class:`Recipe`, and :func:`resolve` into every derived number.

A recipe is composed in Python (``def my_run() -> Recipe``) from component specs. A component spec names a
registry entry and carries params validated against that entry's own config model, so a typo in a field, a wrong
type or an unknown registry name fails at construction with a message naming the field and the fix. Names never
encode hyperparameters: every choice is an explicit field.

``resolve(recipe, world_size=...)`` computes, in numbered steps, everything a run needs (sizes, parameter counts
by convention, FLOPs, batch and accumulation, token budget and steps, warmup, per-role LR and weight decay, init
and forward multipliers). Each number is stored with the rule that produced it, and the result round-trips
through JSON (the run directory keeps ``recipe.resolved.json``).
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from archscale import registry as reg
from archscale.data.config import DataConfig
from archscale.scaling.laws import BaseHyperparams

__all__ = [
    "Recipe",
    "ModelSpec",
    "OptimizerSpec",
    "ScheduleSpec",
    "ParametrizationSpec",
    "BudgetSpec",
    "ScalingSpec",
    "ScalingLawSpec",
    "BaseHyperparams",
    "SystemSpec",
    "LossSpec",
    "Derived",
    "ResolvedRecipe",
    "resolve",
    "apply_overrides",
    "RecipeError",
]


class RecipeError(ValueError):
    """A recipe that cannot be built or resolved; the message names the field and suggests a fix."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------------------------- components
class ComponentSpec(StrictModel):
    """A registry entry by name plus its params, validated against the entry's config model.

    A bare string is accepted as shorthand for ``{"name": ...}``.
    """

    _registry: ClassVar[reg.Registry[Any]]

    name: str = Field(description="Registered name of the component (see `archscale list`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the entry's config model.")

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _validate_against_entry(self) -> ComponentSpec:
        try:
            config_model = self._registry.config_model(self.name)
        except reg.RegistryError as exc:
            raise ValueError(str(exc)) from None
        try:
            config = config_model.model_validate(self.params)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, prefix="params", model=config_model)) from None
        # Keep exactly what the user set (defaults stay implicit, so that changing a default in a later
        # version is visible in the resolved recipe rather than frozen into old recipe files).
        object.__setattr__(self, "params", config.model_dump(mode="json", exclude_unset=True))
        return self

    def config(self) -> BaseModel:
        """The validated config object of the entry (defaults filled in)."""
        return self._registry.config_model(self.name).model_validate(self.params)

    def entry(self) -> Any:
        return self._registry.get(self.name)


class ModelSpec(ComponentSpec):
    _registry = reg.architectures


class ParametrizationSpec(ComponentSpec):
    _registry = reg.parametrizations
    name: str = Field(default="sp", description="Parametrization: sp (standard), ... (see `archscale list`).")


class OptimizerSpec(ComponentSpec):
    _registry = reg.optimizers
    name: str = Field(default="adamw", description="Registered optimizer.")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate (before per-role multipliers).")
    weight_decay: float = Field(default=0.1, ge=0, description="Decoupled weight decay (before per-role multipliers).")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Clip the global gradient norm; None = off.")


class ScheduleSpec(ComponentSpec):
    _registry = reg.schedules
    name: str = Field(default="linear", description="Registered LR schedule: linear, cosine, wsd, constant, ...")
    warmup_steps: int | None = Field(default=None, ge=0, description="Warmup length in optimizer steps.")
    warmup_tokens: int | None = Field(default=None, ge=0, description="Warmup length in tokens (ArchScale: 1e9).")
    warmup_fraction: float | None = Field(default=None, ge=0, lt=1, description="Warmup as a fraction of steps.")

    @model_validator(mode="after")
    def _one_warmup(self) -> ScheduleSpec:
        given = [n for n in ("warmup_steps", "warmup_tokens", "warmup_fraction") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of warmup_steps, warmup_tokens, warmup_fraction (got {given})")
        return self


class BudgetSpec(StrictModel):
    """How much to train and in what batches. Exactly one of tokens, steps, tokens_per_param, unless a scaling
    law sets the token budget (then none)."""

    tokens: int | None = Field(default=None, gt=0, description="Total training tokens.")
    steps: int | None = Field(default=None, gt=0, description="Total optimizer steps.")
    tokens_per_param: float | None = Field(
        default=None, gt=0, description="Tokens = this × N (N under `param_convention`); Chinchilla-optimal ≈ 20."
    )
    param_convention: Literal["all", "non_embedding", "no_input_embedding"] = Field(
        default="non_embedding", description="Which parameter count N means for tokens_per_param."
    )
    global_batch_tokens: int = Field(
        default=8192, gt=0, description="Tokens per optimizer step, rounded to whole micro-batches on all devices."
    )
    micro_batch_size: int = Field(default=8, gt=0, description="Sequences per device per forward/backward.")

    @model_validator(mode="after")
    def _at_most_one_length(self) -> BudgetSpec:
        if len(self.lengths()) > 1:
            raise ValueError(_LENGTH_MESSAGE.format(got=self.lengths()))
        return self

    def lengths(self) -> list[str]:
        """Which of tokens, steps, tokens_per_param are given."""
        return [n for n in ("tokens", "steps", "tokens_per_param") if getattr(self, n) is not None]


_LENGTH_MESSAGE = "give exactly one of tokens, steps, tokens_per_param (got {got}); e.g. --set budget.steps=100"


class ScalingLawSpec(ComponentSpec):
    """A registered scaling law (``archscale list scaling_laws``) and its params."""

    _registry = reg.scaling_laws


class ScalingSpec(StrictModel):
    """Base hyperparameters (tuned at the base depth; also the anchors of μP) and an optional scaling law that
    transfers them to this recipe's depth (token budget, batch and LR correction, weight decay, warmup)."""

    law: ScalingLawSpec | None = Field(
        default=None, description="Registered scaling law, e.g. archscale_v1 or chinchilla; None = take budget, "
        "optimizer.lr/weight_decay and warmup from their sections as given.")
    base: BaseHyperparams = Field(default_factory=BaseHyperparams, description="d0, η0, b0, t0, ... (REFERENCE §4).")


class LossSpec(StrictModel):
    """The training loss: cross-entropy of the next token, optionally with PaLM's z-loss (Chowdhery et al. 2022),
    and how it is computed. Copied into the model spec (LMSpec.z_loss, loss_impl, loss_chunk_size)."""

    z_loss: float = Field(
        default=0.0, ge=0, description="Weight of the auxiliary z-loss, z_loss · mean(logsumexp(logits)²), added "
        "to the objective (PaLM: 1e-4); 0 = off. The model also returns the cross-entropy alone (ce_loss) to log.")
    impl: Literal["fused", "naive"] = Field(
        default="fused", description="fused = chunked linear cross-entropy that never builds the (tokens, vocab) "
        "logits (works under torch.compile); naive = full logits then F.cross_entropy (the reference).")
    chunk_size: int | None = Field(
        default=None, ge=1,
        description="Tokens per chunk of the fused loss; None = automatic (1024 for 16-bit weights, 2048 for float32).")


class SystemSpec(StrictModel):
    """Where and how the run executes; nothing here changes the mathematics of training except precision."""

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = cuda when available.")
    num_devices: int = Field(default=1, ge=1, description="Devices per node (processes launched by Fabric).")
    num_nodes: int = Field(default=1, ge=1, description="Nodes (launch one process per device with torchrun).")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto", description="auto = single device, or DDP with several; fsdp = FSDP2 (sharded)."
    )
    hsdp_replicas: int = Field(default=1, ge=1, description="FSDP2 only: replicate across this many shard groups.")
    dist_timeout_s: float = Field(default=1800.0, gt=0, description="Seconds a collective may wait for a rank.")
    precision: Literal["auto", "32-true", "bf16-mixed", "bf16-true"] = Field(
        default="auto", description="auto = bf16-mixed on CUDA, 32-true on CPU."
    )
    compile: bool | None = Field(default=None, description="torch.compile the model; None = on for CUDA only.")
    tf32: bool = Field(
        default=True, description="On CUDA, let float32 products use TF32 tensor cores (10-bit mantissa inputs, fp32 "
        "accumulation): the chunked Gated DeltaNet and Mamba-2 forms compute in fp32; bf16 products are unaffected. "
        "False = full fp32 products.")
    activation_checkpointing: bool = Field(
        default=False, description="Recompute each block's activations in the backward pass instead of storing "
        "them (less memory for long context, about one more forward of compute).")
    seed: int = Field(default=1337, description="Seeds initialisation, data order and dropout-free sampling.")
    out_dir: str | None = Field(default=None, description="Run directory; default runs/<recipe name>.")
    log_every: int = Field(default=10, ge=1, description="Steps between metric lines.")
    val_every: int = Field(default=100, ge=1, description="Steps between validation-loss evaluations.")
    val_batches: int = Field(default=8, ge=1, description="Micro-batches per validation evaluation.")
    checkpoint_every: int = Field(default=100, ge=1, description="Steps between checkpoints (and one at the end).")
    keep_checkpoints: int = Field(default=2, ge=1, description="Most recent checkpoints kept on disk.")
    save_final_checkpoint: bool = Field(default=True, description="Also checkpoint after the last step.")
    resume: str = Field(default="auto", description="'auto' = latest checkpoint in out_dir if any; 'never'; or a path.")
    on_nonfinite: Literal["stop", "skip"] = Field(
        default="stop", description="On a NaN/inf loss or gradient: stop the run, or skip that optimizer step."
    )
    loggers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="Extra loggers.")
    progress: bool = Field(default=True, description="Show a live progress line on the terminal.")


class Recipe(StrictModel):
    """Everything that defines a training run. Compose in Python; override with ``--set a.b=value``."""

    name: str = Field(default="run", description="Label of the run (never parsed for settings).")
    model: ModelSpec = Field(description="Architecture entry and its params, e.g. {name: transformer, params: {depth: 8}}.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training/validation data (default: embedded corpus).")
    parametrization: ParametrizationSpec = Field(default_factory=ParametrizationSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    budget: BudgetSpec = Field(description="Training length and batch size.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Base hyperparameters and scaling law.")
    loss: LossSpec = Field(default_factory=LossSpec, description="Training loss: z-loss weight, fused or naive.")
    system: SystemSpec = Field(default_factory=SystemSpec)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\\0") or v in (".", ".."):
            raise ValueError(f"name {v!r} must be a non-empty label without path separators")
        return v

    @model_validator(mode="after")
    def _budget_length(self) -> Recipe:
        # Without a scaling law the budget section must say how long to train (with one, resolve checks that
        # the law and the budget do not both set it).
        if self.scaling.law is None and not self.budget.lengths():
            raise ValueError("budget: " + _LENGTH_MESSAGE.format(got="none") + ", or set a scaling law")
        return self


# --------------------------------------------------------------------------------------------- errors
def describe_validation_error(exc: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per problem: the dotted field path, what is wrong, and (for unknown fields) close valid names."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        path = ".".join(([prefix] if prefix else []) + loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model or exc_model(exc), loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=3, cutoff=0.6) if loc else []
            msg = "unknown field" + (f"; did you mean {', '.join(close)}?" if close else "")
            if valid:
                msg += f" Valid fields: {', '.join(valid)}"
        elif err["type"] != "value_error" and "input" in err:
            msg += f" (got {err['input']!r})"
        lines.append(f"{path}: {msg}" if path else msg)
    return "; ".join(lines) if prefix else "\n".join(lines)


def exc_model(exc: ValidationError) -> type[BaseModel] | None:
    return {"Recipe": Recipe}.get(exc.title)


def _fields_at(model: type[BaseModel] | None, loc: list[str]) -> list[str]:
    """Field names of the (nested) pydantic model at ``loc``, for did-you-mean suggestions."""
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part)
        ann = field.annotation if field is not None else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def build_recipe(data: dict[str, Any]) -> Recipe:
    """``Recipe.model_validate`` with a readable :class:`RecipeError` instead of pydantic's report."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError("Invalid recipe:\n" + describe_validation_error(exc, model=Recipe)) from None


# --------------------------------------------------------------------------------------------- overrides
def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply ``a.b.c=value`` overrides (value parsed as JSON when it parses, else kept as a string) and validate.

    ``model.params.depth=4``, ``optimizer.lr=1e-3``, ``data.sources={"/data/slim": 1.0}``.
    """
    data = recipe.model_dump(mode="json", exclude_unset=True)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"Override {item!r} is not of the form key.path=value (e.g. optimizer.lr=1e-3)")
        path = key.strip().split(".")
        _check_override_path(path, item)
        target = data
        for part in path[:-1]:
            node = target.get(part)
            if node is None:
                node = target[part] = {}
            if not isinstance(node, dict):
                raise RecipeError(f"Override {item!r}: '{part}' is a value, not a section")
            target = node
        target[path[-1]] = _parse_value(raw)
    return build_recipe(data)


def _check_override_path(path: list[str], item: str) -> None:
    model: type[BaseModel] | None = Recipe
    for i, part in enumerate(path):
        if model is None:
            return  # inside a free-form dict (params, sources): the entry's own config validates it
        if part not in model.model_fields:
            valid = list(model.model_fields)
            close = difflib.get_close_matches(part, valid, n=3, cutoff=0.6)
            where = ".".join(path[:i]) or "recipe"
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise RecipeError(f"Override {item!r}: {where} has no field '{part}'.{hint} Valid: {', '.join(valid)}")
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    if raw in ("None", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


# --------------------------------------------------------------------------------------------- resolve
class Derived(BaseModel):
    """A derived quantity and the rule that produced it."""

    model_config = ConfigDict(extra="forbid")
    value: Any
    rule: str


class ResolvedRecipe(StrictModel):
    """A recipe plus every number derived from it for a given world size."""

    recipe: Recipe
    world_size: int
    values: dict[str, Derived]

    def __getitem__(self, key: str) -> Any:
        try:
            return self.values[key].value
        except KeyError:
            close = difflib.get_close_matches(key, list(self.values), n=3)
            raise KeyError(f"No derived value '{key}'. Did you mean: {', '.join(close)}?") from None

    def table(self) -> str:
        """Aligned text table: name, value, rule."""
        rows = [(k, _fmt(d.value), d.rule) for k, d in self.values.items()]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ResolvedRecipe:
        return cls.model_validate_json(text)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def resolve(recipe: Recipe, world_size: int = 1) -> ResolvedRecipe:
    """Derive every number of a run, each with its rule (see the module docstring).

    Steps: (1) architecture → sizes, and the parametrization's forward multipliers; (2) parameter counts by
    convention; (3) FLOPs/token; (4) batch rounding and gradient accumulation; (5) token budget and steps;
    (6) warmup; (7) global LR and weight decay (from the scaling law, else the optimizer section), then per-role
    multipliers of the parametrization; (8) init and forward multipliers. A scaling law (``recipe.scaling.law``)
    decides steps 4-7 from the base hyperparameters (:mod:`archscale.scaling.laws`).
    """
    from archscale.scaling.counting import count_params, training_flops_per_token  # heavy: imports torch
    from archscale.scaling.laws import TransferQuery
    from archscale.scaling.parametrization import parametrize

    if world_size < 1:
        raise RecipeError(f"world_size must be ≥ 1, got {world_size}")
    out: dict[str, Derived] = {}

    def put(key: str, value: Any, rule: str) -> None:
        out[key] = Derived(value=value, rule=rule)

    # 1. Architecture, with the parametrization's forward multipliers (the spec the model is built from).
    try:
        p = parametrize(recipe)
    except ValueError as exc:
        raise RecipeError(f"parametrization '{recipe.parametrization.name}': {exc}") from None
    spec, ctx = p.spec, p.context
    n_layer = spec.n_layers
    seq_len = recipe.data.seq_len
    put("n_layer", n_layer, f"architecture '{recipe.model.name}'")
    put("n_embd", spec.n_embd, f"architecture '{recipe.model.name}'")
    put("vocab_size", spec.vocab_size, "model params")
    put("seq_len", seq_len, "data.seq_len")
    put("parametrization", recipe.parametrization.name, "parametrization.name")
    if recipe.parametrization.name != "sp" or recipe.scaling.law is not None:
        base = recipe.scaling.base
        put("base_depth", base.depth, "scaling.base.depth (d0)")
        put("base_width", ctx.base_width, "scaling.base.width" if base.width is not None else
            "n_embd · d0/L (width ∝ depth)")

    # 2. Parameter counts under each convention (they differ by the embedding and head).
    counts = count_params(spec)
    put("params_by_role", {r: getattr(counts, r) for r in ("embedding", "head", "matrix", "vector")}, "analytic count")
    for conv in ("all", "non_embedding", "no_input_embedding"):
        put(f"N_{conv}", counts.n(conv), f"count_params convention '{conv}'")

    # 3. FLOPs per token for training (forward + backward = 3 × forward).
    # Causal attention counts the keys a query may see (what a causal kernel computes; the MFU convention of
    # PaLM appendix B halves the dense count the same way).
    flops_tok = training_flops_per_token(spec, seq_len, attention="causal")
    put("train_flops_per_token", flops_tok, "3 × forward (2 × matmul params + causal attention at seq_len)")

    # The scaling law (if any) answers steps 4-7 at once.
    b = recipe.budget
    per_pass = world_size * b.micro_batch_size * seq_len
    transfer = None
    if recipe.scaling.law is not None:
        law = recipe.scaling.law
        put("scaling_law", law.name, "scaling.law.name")
        query = TransferQuery(
            base=recipe.scaling.base,
            depth=n_layer,
            n_params=_params_at_depth(recipe, counts, n_layer),
            batch_multiple=per_pass,
            budget_batch_tokens=b.global_batch_tokens,
        )
        try:
            transfer = law.entry()(law.config())(query)
        except ValueError as exc:
            raise RecipeError(f"scaling law '{law.name}': {exc}") from None

    # 4. Batch: whole micro-batches on every device; accumulation makes up the rest.
    put("micro_batch_size", b.micro_batch_size, "budget.micro_batch_size")
    if transfer is not None:
        batch_tokens = int(transfer.batch_tokens.value)
        if batch_tokens % per_pass:
            raise RecipeError(f"scaling law '{recipe.scaling.law.name}' gave a batch of {batch_tokens} tokens, not a "  # type: ignore[union-attr]
                              f"multiple of world × micro × seq_len = {per_pass}")
        accum = batch_tokens // per_pass
        put("grad_accum_steps", accum, f"global_batch_tokens / (world {world_size} × micro {b.micro_batch_size} × "
            f"seq_len {seq_len})")
        put("global_batch_tokens", batch_tokens, transfer.batch_tokens.rule)
    else:
        accum = max(1, round(b.global_batch_tokens / per_pass))
        batch_tokens = accum * per_pass
        put("grad_accum_steps", accum, f"round(global_batch_tokens {b.global_batch_tokens} / (world {world_size} × "
            f"micro {b.micro_batch_size} × seq_len {seq_len}))")
        put("global_batch_tokens", batch_tokens, "grad_accum × world × micro × seq_len")

    # 5. Budget.
    if transfer is not None and transfer.tokens is not None:
        if b.lengths():
            raise RecipeError(
                f"budget.{b.lengths()[0]} is set but scaling law '{recipe.scaling.law.name}' sets the token "  # type: ignore[union-attr]
                "budget: remove it, or let the law take the budget section (e.g. --set "
                "scaling.law.params.tokens=budget)"
            )
        steps = max(1, math.ceil(transfer.tokens.value / batch_tokens))
        tokens = steps * batch_tokens
        put("tokens", tokens, f"{transfer.tokens.rule}, rounded up to whole steps")
    elif b.steps is not None:
        steps = b.steps
        tokens = steps * batch_tokens
        put("tokens", tokens, "steps × global_batch_tokens")
    else:
        if b.tokens is not None:
            want, rule = b.tokens, "budget.tokens"
        elif b.tokens_per_param is not None:
            want = int(b.tokens_per_param * counts.n(b.param_convention))
            rule = f"tokens_per_param {b.tokens_per_param:g} × N_{b.param_convention}"
        else:
            raise RecipeError("budget: " + _LENGTH_MESSAGE.format(got="none") +
                              f" (scaling law '{recipe.scaling.law.name}' takes the budget section)")  # type: ignore[union-attr]
        steps = max(1, math.ceil(want / batch_tokens))
        tokens = steps * batch_tokens
        put("tokens", tokens, f"{rule}, rounded up to whole steps")
    put("steps", steps, "tokens / global_batch_tokens")
    put("train_flops", float(flops_tok) * tokens, "train_flops_per_token × tokens")
    put("tokens_per_param", tokens / counts.n(b.param_convention), f"tokens / N_{b.param_convention}")

    # 6. Warmup.
    s = recipe.schedule
    given = [n for n in ("warmup_steps", "warmup_tokens", "warmup_fraction") if getattr(s, n) is not None]
    if transfer is not None and transfer.warmup_tokens is not None:
        if given:
            raise RecipeError(
                f"schedule.{given[0]} is set but scaling law '{recipe.scaling.law.name}' sets the warmup: remove "  # type: ignore[union-attr]
                "it, or let the law take the schedule's warmup (--set scaling.law.params.warmup=schedule)"
            )
        warm = math.ceil(transfer.warmup_tokens.value / batch_tokens)
        rule = (f"ceil(warmup tokens {transfer.warmup_tokens.value:.4g} / global_batch_tokens); "
                f"{transfer.warmup_tokens.rule}")
    elif s.warmup_steps is not None:
        warm, rule = s.warmup_steps, "schedule.warmup_steps"
    elif s.warmup_tokens is not None:
        warm, rule = math.ceil(s.warmup_tokens / batch_tokens), "ceil(schedule.warmup_tokens / global_batch_tokens)"
    elif s.warmup_fraction is not None:
        warm, rule = round(s.warmup_fraction * steps), "round(schedule.warmup_fraction × steps)"
    else:
        warm, rule = 0, "no warmup given"
    if warm and warm >= steps:
        raise RecipeError(
            f"schedule: warmup of {warm} steps is not shorter than the {steps} training steps; shorten the warmup"
        )
    put("warmup_steps", warm, rule)
    put("schedule", s.name, "schedule.name")

    # 7. Learning rate and weight decay: global values, then the parametrization's per-role multipliers.
    opt = recipe.optimizer
    if transfer is not None:
        lr, lr_rule = transfer.lr.value, transfer.lr.rule + "; optimizer.lr is not used"
        wd, wd_rule = transfer.weight_decay.value, transfer.weight_decay.rule + "; optimizer.weight_decay is not used"
    else:
        lr, lr_rule = opt.lr, "optimizer.lr"
        wd, wd_rule = opt.weight_decay, "optimizer.weight_decay"
    put("lr", lr, lr_rule)
    put("weight_decay", wd, wd_rule)
    lr_mult = p.parametrization.lr_multipliers(ctx)
    wd_mult = p.parametrization.weight_decay_multipliers(ctx)
    for role in ("embedding", "head", "matrix", "vector"):
        put(f"lr_{role}", lr * lr_mult[role].value, f"lr × {lr_mult[role].rule} = lr × {lr_mult[role].value:.4g}")
        put(f"wd_{role}", wd * wd_mult[role].value,
            f"weight_decay × {wd_mult[role].rule} = weight_decay × {wd_mult[role].value:g}")

    # 8. Init and forward multipliers (as the built model applies them).
    put("init_std", spec.init_std, "LMSpec.init_std (SP normal init)")
    for kind, r in p.parametrization.init_stds(spec, ctx).items():
        put(f"init_std_{kind}", r.value, r.rule)
    rules = p.forward
    put("logit_multiplier", spec.logit_multiplier,
        rules["logit_multiplier"].rule if "logit_multiplier" in rules else "LMSpec.logit_multiplier")
    put("residual_multiplier", spec.residual_multiplier,
        rules["residual_multiplier"].rule if "residual_multiplier" in rules else "LMSpec.residual_multiplier")
    if len(ctx.head_dims) == 1:  # one softmax-attention head dim: one scale
        hd = next(iter(ctx.head_dims))
        scale = spec.attn_scale if spec.attn_scale is not None else hd**-0.5
        put("attn_scale", scale, rules["attn_scale"].rule if "attn_scale" in rules else f"1/√head_dim (head_dim {hd})")
    return ResolvedRecipe(recipe=recipe, world_size=world_size, values=out)


def _params_at_depth(recipe: Recipe, counts: Any, n_layer: int) -> Any:
    """N(depth, convention) of the recipe's architecture with only its ``depth`` changed (cached)."""
    from archscale.scaling.counting import count_params

    cache: dict[int, Any] = {n_layer: counts}

    def n_params(depth: int, convention: str) -> int:
        if depth not in cache:
            config = recipe.model.config()
            if "depth" not in type(config).model_fields:
                raise ValueError(
                    f"architecture '{recipe.model.name}' has no depth parameter, so the parameter count at the base "
                    "depth is unknown; use a token rule that does not need it (e.g. tokens='budget')"
                )
            other = type(config).model_validate({**config.model_dump(exclude_unset=True), "depth": depth})
            cache[depth] = count_params(recipe.model.entry()(other))
        return int(cache[depth].n(convention))

    return n_params
