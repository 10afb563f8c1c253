"""Architecture entries: a small config (depth and optional overrides) -> a fully sized :class:`LMSpec`.

Registered in ``archscale.registry.architectures``; every entry is ``fn(config) -> LMSpec``. A hybrid is data: a
per-layer list of :class:`LayerSpec` built by such a function (REFERENCE §2); this module holds the shared sizing
and the attention-only families, :mod:`archscale.models.archs_hybrid` the hybrids, and
:mod:`archscale.models.patterns` the ``pattern`` entry (any hybrid from a pattern string, no code).

Depth-based sizing (ArchScale; REFERENCE §1): one knob, the depth d. Width n_embd = aspect_ratio · d (the aspect
ratio is per family, chosen so that families match the Transformer in parameters: 128 for the Transformer), d
query heads of size 128, d/4 KV heads (GQA, 4 query heads per KV head), SwiGLU hidden 4 · n_embd, RoPE base
10 000, vocab 32 000, context 4096, untied embeddings. Heads are d of size 128 for every family, as ArchScale's
configs set them (``n_head=d, head_dim=128``), so heads · head_dim = 128·d need not equal n_embd = ar·d; q/o map
n_embd <-> n_head · head_dim.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from archscale.models.spec import LayerSpec, LMSpec
from archscale.registry import architectures


class DepthConfig(BaseModel):
    """What every depth-sized family shares: the depth, optional overrides of the derived widths, and the
    model-wide options. Families subclass it to change defaults (aspect ratio, window, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(ge=1, description="Number of blocks d; also the default number of heads.")
    aspect_ratio: int = Field(128, ge=1, description="n_embd = aspect_ratio · depth (ignored if n_embd is set).")
    n_embd: int | None = Field(None, ge=1, description="Residual width; default aspect_ratio · depth.")
    n_head: int | None = Field(None, ge=1, description="Query heads; default depth.")
    head_dim: int | None = Field(
        None, ge=2, description="Head size; default 128, or n_embd // n_head when n_embd is given explicitly."
    )
    n_kv_head: int | None = Field(
        None, ge=1, description="Key/value heads (GQA); default max(1, n_head // 4) (= depth // 4 by default)."
    )
    mlp_hidden: int | None = Field(None, ge=1, description="SwiGLU hidden width; default 4 · n_embd.")
    vocab_size: int = Field(32000, ge=1, description="Vocabulary size (32 000: the Llama-2 tokenizer).")
    block_size: int = Field(4096, ge=1, description="Training context length.")
    rope_base: float = Field(10000.0, gt=0, description="RoPE base theta (640 000 for long context).")
    tie_embeddings: bool = Field(False, description="Share the input embedding with the output head.")
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="Pre-norms and final norm.")
    norm_eps: float = Field(1e-5, gt=0, description="Norm epsilon.")

    @model_validator(mode="after")
    def _check(self) -> DepthConfig:
        self.dims()  # raises with a message naming the fields
        return self

    def dims(self) -> dict[str, int]:
        """The derived sizes: n_embd, n_head, head_dim, n_kv_head, mlp_hidden."""
        n_embd = self.n_embd if self.n_embd is not None else self.aspect_ratio * self.depth
        n_head = self.n_head if self.n_head is not None else self.depth
        if self.head_dim is not None:
            head_dim = self.head_dim
        elif self.n_embd is not None:
            if n_embd % n_head:
                raise ValueError(
                    f"n_embd={n_embd} is not divisible by n_head={n_head}, so head_dim cannot default to "
                    "n_embd // n_head: set head_dim explicitly or choose n_head dividing n_embd"
                )
            head_dim = n_embd // n_head
        else:
            head_dim = 128
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for RoPE")
        n_kv_head = self.n_kv_head if self.n_kv_head is not None else max(1, n_head // 4)
        if n_kv_head > n_head or n_head % n_kv_head:
            raise ValueError(
                f"n_head={n_head} must be divisible by n_kv_head={n_kv_head} (each key/value head serves the "
                "same number of query heads); set n_kv_head to a divisor of n_head"
            )
        mlp_hidden = self.mlp_hidden if self.mlp_hidden is not None else 4 * n_embd
        return {"n_embd": n_embd, "n_head": n_head, "head_dim": head_dim, "n_kv_head": n_kv_head,
                "mlp_hidden": mlp_hidden}

    def heads(self) -> dict[str, int]:
        """The attention params every attention-family layer of the model gets: n_head, n_kv_head, head_dim."""
        d = self.dims()
        return {"n_head": d["n_head"], "n_kv_head": d["n_kv_head"], "head_dim": d["head_dim"]}

    def spec(self, layers: list[LayerSpec], **extra: Any) -> LMSpec:
        """The :class:`LMSpec` of ``layers`` with this config's widths and model-wide options."""
        d = self.dims()
        return LMSpec(
            vocab_size=self.vocab_size,
            n_embd=d["n_embd"],
            layers=layers,
            mlp_hidden=d["mlp_hidden"],
            tie_embeddings=self.tie_embeddings,
            norm=self.norm,
            norm_eps=self.norm_eps,
            rope_base=self.rope_base,
            block_size=self.block_size,
            **extra,
        )


class TransformerConfig(DepthConfig):
    """Transformer++ (Llama-style) sized from its depth; any derived width can be overridden."""

    aspect_ratio: int = Field(128, ge=1, description="n_embd = aspect_ratio · depth (ignored if n_embd is set).")


@architectures.register("transformer", config=TransformerConfig)
def transformer(cfg: TransformerConfig) -> LMSpec:
    """Transformer++: ``depth`` identical blocks of full causal GQA attention with RoPE and a SwiGLU MLP."""
    attention = LayerSpec(mixer="attention", params=cfg.heads())
    return cfg.spec([attention] * cfg.depth)


class TransformerLSConfig(TransformerConfig):
    """Transformer with local (sliding-window) and global attention: three windowed layers, then a full one."""

    window: int = Field(128, ge=1, description="Sliding window of the local layers.")
    full_every: int = Field(4, ge=1, description="Every full_every-th layer (the last of each group) is full.")


@architectures.register("transformerls", config=TransformerLSConfig)
def transformerls(cfg: TransformerLSConfig) -> LMSpec:
    """S128 S128 S128 F, repeated (ArchScale's ``full_per_layer=4``), RoPE everywhere (REFERENCE §2)."""
    heads = cfg.heads()
    full = LayerSpec(mixer="attention", params=heads)
    local = LayerSpec(mixer="attention", params={**heads, "window": cfg.window})
    return cfg.spec([full if i % cfg.full_every == cfg.full_every - 1 else local for i in range(cfg.depth)])


# The hybrid families and the pattern entry register themselves on import (the registry imports this module).
from archscale.models import archs_hybrid, patterns  # noqa: E402, F401
