"""Tiny specs for the model tests (a uniquely named module: test files import it, never ``conftest``)."""

from __future__ import annotations

from archscale.models.archs import TransformerConfig, transformer
from archscale.models.spec import LMSpec


def tiny_spec(**overrides: object) -> LMSpec:
    """Transformer++ at toy width: 2 layers, d 64, 4 heads of 16, 2 KV heads, vocab 512."""
    cfg: dict[str, object] = dict(
        depth=2, n_embd=64, n_head=4, head_dim=16, n_kv_head=2, vocab_size=512, block_size=128
    )
    cfg.update(overrides)
    return transformer(TransformerConfig(**cfg))
