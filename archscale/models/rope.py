"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer"), rotate-half layout.

Layout: a head vector of size K is split into two halves (x1, x2) = (x[:K/2], x[K/2:]); pair i is
(x1[i], x2[i]) and is rotated by angle pos · base^(-2i/K). This is the layout of GPT-NeoX and of Hugging Face
transformers' Llama (``rotate_half``), so Llama q/k projection weights map to ours without any permutation
(see :mod:`archscale.models.hf`). The other common layout rotates adjacent pairs (x[2i], x[2i+1]) (original
RoFormer / Meta's Llama release); we do not use it.

Positions come from ``SeqInfo.position_ids`` (B, T), which restart at 0 at every document boundary of a packed
varlen batch and start at the cache length when decoding, so this module needs no notion of documents or caches.
The rotation is computed in float32 whatever the autocast dtype: bf16 angles lose the low bits of large
positions (ArchScale applies RoPE in fp32 for stability, too).
"""

from __future__ import annotations

import torch


@torch.library.custom_op("archscale::rope_cos_sin", mutates_args=())
def _rope_table(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    device = position_ids.device
    # inv_freq[i] = base^(-2i/K), computed on the fly (cheap) so that no buffer can be cast to bf16 by .to().
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # (B, T, K/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, K): rotate-half pairs i and i + K/2
    return angles.cos(), angles.sin()


@_rope_table.register_fake
def _(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (*position_ids.shape, head_dim)
    return position_ids.new_empty(shape, dtype=torch.float32), position_ids.new_empty(shape, dtype=torch.float32)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each float32 (B, T, head_dim) with the two halves repeated.

    An opaque custom op, so that ``torch.compile`` computes the table into a buffer (once per step: the layers'
    identical calls are merged) that the rotations read: as plain pointwise code inductor inlined the angles (a
    ``pow``, a ``cos`` and a ``sin``) into every kernel that rotates q or k, per head and element, forward and
    backward (Transformer++ d16 on an H200: elementwise time 33.1 -> 23.8 ms of a ~225 ms step,
    benchmarks/RESULTS.md). Positions are integers, so the op needs no gradient."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    return _rope_table(position_ids, head_dim, float(base))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, K) by the angles behind cos/sin (B, T, K); at least float32 math, result in x's dtype."""
    compute = torch.promote_types(x.dtype, torch.float32)  # bf16 -> fp32; fp64 stays fp64 (tests)
    xf = x.to(compute)
    cos = cos.to(compute).unsqueeze(2)  # (B, T, 1, K): the same rotation for every head
    sin = sin.to(compute).unsqueeze(2)
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
