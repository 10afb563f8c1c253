"""Helpers the recurrent kernels share: checking packed-varlen boundaries and choosing the compute dtype.

Varlen convention (fla / flash-attn): a packed batch has B == 1 and ``cu_seqlens`` (int, (N + 1,)) holds the
cumulative document lengths, starting at 0 and ending at T. Recurrent state must not cross a boundary: every
document starts from its own initial state (zeros unless given, (N, ...)) and reports its own final state.
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp32 math for half-precision inputs; float64 stays float64 (the tests compare in double)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def doc_bounds(cu_seqlens: torch.Tensor, total: int, batch: int) -> list[tuple[int, int]]:
    """Validated ``[(start, end), ...]`` of every document of a packed batch of ``total`` tokens."""
    if batch != 1:
        raise ValueError(f"varlen input (cu_seqlens given) must have batch size 1, got {batch}")
    cu = [int(c) for c in cu_seqlens.tolist()]
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != total or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must strictly increase from 0 to T={total}, got {cu}")
    return list(zip(cu[:-1], cu[1:]))


def check_initial_state(
    initial_state: torch.Tensor | None, expected: tuple[int, ...], name: str = "initial_state"
) -> None:
    """Raise a readable error when a given state has the wrong shape."""
    if initial_state is not None and tuple(initial_state.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(initial_state.shape)}")


def fp32_region(x: torch.Tensor) -> torch.autocast:
    """A context in which autocast is off: the references promise fp32 math, and under a bf16 autocast region their
    einsums and matmuls would otherwise run in bf16."""
    return torch.autocast(device_type=x.device.type, enabled=False)
