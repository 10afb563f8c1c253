"""Parameter and FLOP counts of an :class:`~archscale.models.spec.LMSpec`, by formula (nothing is built).

Parameters are counted by role (embedding, head, matrix, vector; the roles the optimizer router uses). Each
mixer reports its own counts (``count_params``/``count_flops`` class methods, see
:mod:`archscale.models.mixers.base`); the MLP, norms, embedding and head are counted here.

Counting conventions for N (:meth:`ParamCounts.n`):

- ``"all"``: every parameter (a tied table once).
- ``"non_embedding"``: all minus the input embedding and the head (Kaplan et al. 2020). **This is the convention
  of ArchScale's published Transformer++ sizes** (REFERENCE §1): d8/d12/d16/d20/d24 give 121.65M, 410.5M,
  973.1M, 1.901B, 3.284B, i.e. ≈ 122M, 411M, 973M, 1.90B, 3.28B (norm gains included; vocab 32 000 excluded).
- ``"no_input_embedding"``: all but the input embedding; the head counts (a tied table counts once, as the
  head). The convention of the MFU formula in docs/GPU.md and of nanochat.

FLOPs (forward, per token, 2 FLOPs per multiply-add): 2 · (matrix parameters + head) plus attention scores and
weighted values (4 · H · K per attended key), see :data:`~archscale.models.mixers.base.AttentionFlops`:
by default ("dense") attention is charged for the full T x T score matrix (min(T, W) keys per query for a
sliding window W), which is what ``FlopCounterMode`` reports for SDPA and the PaLM/litgpt/nanochat convention;
``attention="causal"`` charges only the causal half ((T+1)/2 keys per query on average). The embedding lookup,
norms, activations, softmax and residual adds are not counted. Training = 3 x forward (backward ≈ 2 x forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archscale.models.api import ParamRole
from archscale.models.mixers.base import AttentionFlops, MixerContext, resolve_mixer
from archscale.models.mlp import SwiGLU
from archscale.models.spec import LMSpec

CountConvention = Literal["all", "non_embedding", "no_input_embedding"]


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by role. ``head`` is 0 when the embedding is tied (the table is counted once, as embedding)."""

    embedding: int
    head: int
    matrix: int
    vector: int
    tied: bool = False

    @property
    def total(self) -> int:
        return self.embedding + self.head + self.matrix + self.vector

    @property
    def non_embedding(self) -> int:
        """All minus the input embedding and the head (the convention of ArchScale's published sizes)."""
        return self.matrix + self.vector

    def n(self, convention: CountConvention = "all") -> int:
        """N under a counting convention (see the module docstring)."""
        if convention == "all":
            return self.total
        if convention == "non_embedding":
            return self.non_embedding
        if convention == "no_input_embedding":
            # Tied: the shared table is the head's weight too, so it stays (counted once).
            return self.total if self.tied else self.total - self.embedding
        raise ValueError(f"Unknown counting convention {convention!r}; use 'all', 'non_embedding' or "
                         "'no_input_embedding'")

    def by_role(self) -> dict[ParamRole, int]:
        return {"embedding": self.embedding, "head": self.head, "matrix": self.matrix, "vector": self.vector}


def count_params(spec: LMSpec) -> ParamCounts:
    """Parameters of the model ``build_model(spec)`` would build, by role, from formulas."""
    d = spec.n_embd
    norm = 2 * d if spec.norm == "layernorm" else d  # gain (and LayerNorm's bias) of one norm
    counts: dict[ParamRole, int] = {"embedding": spec.vocab_size * d, "head": 0, "matrix": 0, "vector": norm}
    if not spec.tie_embeddings:
        counts["head"] = spec.vocab_size * d
    for i, layer in enumerate(spec.layers):
        cls, config = resolve_mixer(layer)
        for role, n in cls.count_params(MixerContext.from_spec(spec, i), config).items():
            counts[role] += n
        for role, n in SwiGLU.count_params(d, spec.mlp_hidden).items():
            counts[role] += n
        counts["vector"] += 2 * norm  # the two pre-norms of the block
    return ParamCounts(tied=spec.tie_embeddings, **counts)


def forward_flops_per_token(spec: LMSpec, seq_len: int, *, attention: AttentionFlops = "dense") -> float:
    """Forward FLOPs per token at context ``seq_len``: every mixer's ``count_flops`` + MLPs + head.

    Attention convention: ``"dense"`` (default) counts the full T x T scores (min(T, W) keys per query for a
    window W); ``"causal"`` counts the causal half. See the module docstring.
    """
    flops = 2.0 * spec.n_embd * spec.vocab_size  # head (tied or not, the matmul is done)
    for i, layer in enumerate(spec.layers):
        cls, config = resolve_mixer(layer)
        flops += cls.count_flops(MixerContext.from_spec(spec, i), config, seq_len, attention)
        flops += SwiGLU.count_flops(spec.n_embd, spec.mlp_hidden)
    return flops


def training_flops_per_token(spec: LMSpec, seq_len: int, *, attention: AttentionFlops = "dense") -> float:
    """Forward + backward FLOPs per token: 3 x forward (the backward pass costs about twice the forward)."""
    return 3.0 * forward_flops_per_token(spec, seq_len, attention=attention)
