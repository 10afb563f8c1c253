"""Architecture entries: a small config (depth and optional overrides) -> a fully sized :class:`LMSpec`.

Registered in ``archscale.registry.architectures``; every entry is ``fn(config) -> LMSpec``.

Transformer++ sizing (ArchScale; REFERENCE §1): one knob, the depth d. Width n_embd = aspect_ratio · d (128 for
the Transformer), d query heads of size 128, d/4 KV heads (GQA, 4 query heads per KV head), SwiGLU hidden
4 · n_embd, RoPE base 10 000, vocab 32 000, context 4096, untied embeddings. Note that heads · head_dim need not
equal n_embd; q/o map n_embd <-> n_head · head_dim.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from archscale.models.spec import LayerSpec, LMSpec
from archscale.registry import architectures


class TransformerConfig(BaseModel):
    """Transformer++ (Llama-style) sized from its depth; any derived width can be overridden."""

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
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")

    @model_validator(mode="after")
    def _check(self) -> TransformerConfig:
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


@architectures.register("transformer", config=TransformerConfig)
def transformer(cfg: TransformerConfig) -> LMSpec:
    """Transformer++: ``depth`` identical blocks of full causal GQA attention with RoPE and a SwiGLU MLP."""
    d = cfg.dims()
    attention = LayerSpec(
        mixer="attention",
        params={"n_head": d["n_head"], "n_kv_head": d["n_kv_head"], "head_dim": d["head_dim"]},
    )
    return LMSpec(
        vocab_size=cfg.vocab_size,
        n_embd=d["n_embd"],
        layers=[attention] * cfg.depth,
        mlp_hidden=d["mlp_hidden"],
        tie_embeddings=cfg.tie_embeddings,
        norm_eps=cfg.norm_eps,
        rope_base=cfg.rope_base,
        block_size=cfg.block_size,
    )
