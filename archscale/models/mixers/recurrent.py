"""What the recurrent mixers (Mamba-1, Mamba-2, Gated DeltaNet) share: state type, special inits, FLOP accounting.

- :class:`RecurrentState`: ``(conv, ssm)``, the short convolution's last d_conv-1 inputs and the scan state.
- Inits of the non-matrix parameters (the model's parametrization initialises every matrix afterwards):
  dt bias as the inverse softplus of a log-uniform step size (Gu et al. 2022 / Mamba §3.6), S4D-real A (Gu et al.
  2022, "On the Parameterization and Initialization of Diagonal State Space Models"), and A uniform per head
  (Mamba-2, Gated DeltaNet).
- :func:`chunk_costs`: how many intra-chunk (query, key) pairs and padded tokens a chunked scan computes per
  token, under the :data:`~archscale.models.mixers.base.AttentionFlops` conventions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from archscale.models.api import SeqInfo
from archscale.models.mixers.base import AttentionFlops


class RecurrentState(NamedTuple):
    """A recurrent mixer's state for dense batches (B rows):

    conv: (B, d_conv - 1, C) the last d_conv-1 inputs of the short convolution (oldest first; C its channels);
    ssm: the scan state, whose layout each mixer documents (Mamba-1 (B, D, N); Mamba-2 (B, H, P, N);
        Gated DeltaNet (B, H, K, V)), in fp32 (float64 for a float64 module).
    """

    conv: torch.Tensor
    ssm: torch.Tensor


def split_state(
    name: str, state: RecurrentState | None, seq: SeqInfo
) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """(conv state, ssm state, whether to return a state) for a recurrent mixer's forward.

    Packed varlen batches restart the recurrence at every document, so they neither take nor return a state; nor
    does any batch whose caller drops the states (``seq.return_state`` False: training)."""
    if state is not None and seq.is_varlen:
        raise ValueError(f"{name}: a recurrent state cannot be combined with a packed varlen batch (cu_seqlens)")
    conv_state, ssm_state = (None, None) if state is None else state
    return conv_state, ssm_state, seq.return_state and not seq.is_varlen


def init_dt_bias_(bias: torch.Tensor, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """Set ``bias`` so that softplus(bias) = dt with log dt ~ U[log dt_min, log dt_max] (floored at dt_init_floor).

    The inverse of softplus is dt + log(1 - exp(-dt)) = dt + log(-expm1(-dt)). Mamba §3.6 / Appendix: the initial
    step sizes span the time scales [dt_min, dt_max] = [1e-3, 0.1]."""
    with torch.no_grad():
        u = torch.rand(bias.shape, device=bias.device, dtype=torch.float64)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def init_s4d_real_A_log_(A_log: torch.Tensor) -> None:
    """A_log (D, N) with A = -exp(A_log) = -(1, 2, ..., N) for every channel: S4D-real (Mamba-1's init)."""
    with torch.no_grad():
        n = torch.arange(1, A_log.shape[-1] + 1, device=A_log.device, dtype=torch.float64)
        A_log.copy_(torch.log(n).expand(A_log.shape))


def init_uniform_A_log_(A_log: torch.Tensor, low: float, high: float) -> None:
    """A_log (H,) with A = exp(A_log) ~ U[low, high] per head (Mamba-2: [1, 16]; Gated DeltaNet: [0, 16]).
    A is floored at 1e-4 so that a draw of exactly 0 cannot give log(0)."""
    with torch.no_grad():
        A = torch.empty(A_log.shape, device=A_log.device, dtype=torch.float64).uniform_(low, high)
        A_log.copy_(torch.log(A.clamp(min=1e-4)))


def chunk_costs(seq_len: int, chunk_size: int, attention: AttentionFlops) -> tuple[float, float]:
    """(pairs, tokens) per real token for a scan run in chunks of Q = min(chunk_size, seq_len) tokens.

    pairs: intra-chunk (query, key) products per token, the quadratic "attention inside a chunk" part;
    tokens: tokens processed per real token by the per-token state matmuls.
    "dense" charges what the chunked reference computes: every chunk full (Q keys per query) and the last chunk
    padded to Q (``FlopCounterMode`` sees exactly this). "causal" charges only the j <= i pairs of the real tokens
    (what a causal chunk kernel needs) and no padding.
    """
    if seq_len < 1 or chunk_size < 1:
        raise ValueError(f"seq_len and chunk_size must be >= 1, got {seq_len}, {chunk_size}")
    T = seq_len
    Q = min(chunk_size, T)
    n_chunks = -(-T // Q)
    if attention == "dense":
        return n_chunks * Q * Q / T, n_chunks * Q / T
    if attention == "causal":
        full, last = divmod(T, Q)
        return (full * Q * (Q + 1) / 2 + last * (last + 1) / 2) / T, 1.0
    raise ValueError(f"attention must be 'dense' or 'causal', got {attention!r}")
