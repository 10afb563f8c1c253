"""Short causal depthwise convolution with carried state and document isolation (pure PyTorch reference).

The causal ``conv1d`` of Mamba (Gu & Dao 2023, kernel 4), Mamba-2 and Gated DeltaNet (the "short convolution"
on q, k, v): every channel c is filtered on its own,

    y[t, c] = act( bias[c] + Σ_{j=0}^{W-1} weight[c, j] · x[t - (W-1) + j, c] ),

so ``weight[:, W-1]`` multiplies the current token (the cross-correlation layout of ``nn.Conv1d`` with W-1 zeros
padded on the left). Inputs before a sequence's start come from the state: the last W-1 inputs seen, oldest
first, zeros for a fresh sequence. The sum is written as W shifted multiply-adds over a gathered window: with
W = 4 this is cheaper than a convolution call, needs no padding tricks for varlen, and is elementwise work (not a
matmul; ``FlopCounterMode`` does not count it, and neither do the mixers' FLOP formulas).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from archscale.kernels.varlen import check_cu_seqlens, check_initial_state, compute_dtype


def short_conv_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See :func:`archscale.kernels.short_conv.short_conv` for shapes and semantics."""
    B, T, C = x.shape
    W = weight.shape[-1]
    if weight.shape != (C, W):
        raise ValueError(f"weight must have shape (C={C}, W), got {tuple(weight.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    dtype = compute_dtype(x, weight)
    wf = weight.to(dtype)
    # The source rows (state, then tokens) are joined in x's dtype when the state is zeros, which that dtype holds
    # exactly, and cast to the compute dtype once joined: the same numbers and the same float32 accumulation of
    # the input's gradient, but under torch.compile the backward then keeps the bf16 join and recasts it, instead
    # of a float32 copy of the input (half the bytes). A given state may hold float32 values: then all float32.
    src_dtype = x.dtype if initial_state is None else dtype

    if cu_seqlens is None:
        check_initial_state(initial_state, (B, W - 1, C))
        prev = x.new_zeros(B, W - 1, C, dtype=src_dtype) if initial_state is None else initial_state.to(dtype)
        ext = torch.cat((prev, x.to(src_dtype)), dim=1).to(dtype)  # (B, W-1+T, C)
        # Tap j reads x[t - (W-1) + j], i.e. ext[t + j].
        y = sum(ext[:, j : j + T] * wf[:, j] for j in range(W))
        final = ext[:, T:] if return_final_state else None  # (B, W-1, C): the last W-1 inputs
    else:
        # Boundaries stay on the device (no .tolist(): no host sync, no graph break under torch.compile).
        check_cu_seqlens(cu_seqlens, T, B)
        N = cu_seqlens.shape[0] - 1
        check_initial_state(initial_state, (N, W - 1, C))
        prev = x.new_zeros(N, W - 1, C, dtype=src_dtype) if initial_state is None else initial_state.to(dtype)
        # One flat source: the N states ((W-1) rows each) then the T tokens. Row r of document d at relative
        # position p (p < 0 reaches into the state) lives at index  N(W-1) + start_d + p  if p >= 0, else
        # d(W-1) + (W-1) + p.
        src = torch.cat((prev.reshape(N * (W - 1), C), x[0].to(src_dtype)), dim=0).to(dtype)  # (N(W-1) + T, C)
        cu = cu_seqlens.to(device=x.device, dtype=torch.long)
        starts, lengths = cu[:-1], cu[1:] - cu[:-1]  # (N,)
        t = torch.arange(T, device=x.device)
        doc = torch.searchsorted(cu, t, right=True) - 1  # (T,) document of every token (whole cu: see varlen.py)
        pos = t - starts[doc]  # (T,) position inside the document

        def index(d: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return torch.where(p >= 0, N * (W - 1) + starts[d] + p, d * (W - 1) + (W - 1) + p)

        taps = pos[:, None] - (W - 1) + torch.arange(W, device=x.device)  # (T, W) relative source positions
        window = src[index(doc[:, None].expand(T, W), taps)]  # (T, W, C)
        y = (window * wf.t()).sum(dim=1).unsqueeze(0)  # (1, T, C)
        final = None
        if return_final_state:
            rel = lengths[:, None] - (W - 1) + torch.arange(W - 1, device=x.device)  # (N, W-1)
            final = src[index(torch.arange(N, device=x.device)[:, None].expand(N, W - 1), rel)]  # (N, W-1, C)

    if bias is not None:
        y = y + bias.to(dtype)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), final
