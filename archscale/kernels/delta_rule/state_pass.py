"""The one sequential part of the chunked gated delta rule: passing the state from chunk to chunk.

With the WY form (:mod:`archscale.kernels.delta_rule.reference`), chunk c's state updates depend on the state h_c
entering it, so the chunks are visited in order:

    Δ_c     = U_c - W_c h_c                                 (Q × V; U, W from the chunk's triangular solve)
    h_{c+1} = a_c h_c + K̃_cᵀ Δ_c + inj_c                    (K × V; a_c the chunk decay, K̃ the decayed keys)

Everything else (the solve, the outputs o = Q̃ h_c + (QKᵀ ∘ Γ) Δ_c, the final states) is batched over chunks.

Written as a loop in Python, this recursion is unrolled by ``torch.compile``: at T = 16K and Q = 64 that is 256
copies of the body in the forward graph and again in the backward one, and compile time grows with it. Here it is
one custom op with its own backward op (:func:`torch.library.custom_op`): opaque to the compiler, so a compiled
model keeps one node for it whatever T is. The backward runs the
recursion in reverse (for c = nc-1 … 0, with dh the gradient reaching h_{c+1}):

    dΔ_c = dΔ_c(outputs) + K̃_c dh      dU_c = dΔ_c      dW_c = -dΔ_c h_cᵀ      dK̃_c = Δ_c dhᵀ
    da_c = ⟨h_c, dh⟩                    dinj_c = dh      dh ← dh_c(outputs) + a_c dh - W_cᵀ dΔ_c

The recursions themselves (h forward, dh backward) are the only sequential part; the backward's gradients that
sum over value columns (dW, dK̃, da) are batched products over all chunks once dΔ and each chunk's dh are known.
The recursions are either Triton kernels that keep the state on chip
(:mod:`archscale.kernels.delta_rule.state_pass_triton`; on CUDA when TF32 is allowed, see ``TRITON_ON_CUDA``) or a
Python loop of PyTorch products (the specification the kernels are tested against; float64 and the CPU).
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
from torch.utils.flop_counter import register_flop_formula

__all__ = ["state_pass"]


_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Which path CUDA calls take. None (the default): the Triton kernels when PyTorch allows TF32 for fp32 products
# (torch.backends.cuda.matmul.allow_tf32, which the kernels' products then follow), the loop otherwise. Measured on
# the lent H100 (2026-12-07, benchmarks/RESULTS.md, issue #8), one compiled GDN layer, same process: with TF32 the
# kernels are 2.2x faster than the loop on B1 x T16K of documents (25.2 vs 56.5 ms) and 1.19x on B4 x T4096; with
# full fp32 products they lose on B4 x T4096 (112 vs 37.5 ms), their products then running off the tensor cores.
# True: always the kernels (the GPU tests use it to check them in full fp32); False: always the loop.
TRITON_ON_CUDA: bool | None = None


def _on_triton(t: torch.Tensor) -> bool:
    """Whether the Triton kernels take this call: CUDA tensors below float64 as TRITON_ON_CUDA says, or CPU ones
    when the Triton interpreter runs kernels (``TRITON_INTERPRET=1``, the CPU tests)."""
    if not _HAS_TRITON or t.dtype == torch.float64:
        return False
    if t.is_cuda:
        return torch.backends.cuda.matmul.allow_tf32 if TRITON_ON_CUDA is None else TRITON_ON_CUDA
    return os.environ.get("TRITON_INTERPRET") == "1"


def state_pass_fwd_loop(
    U: torch.Tensor, W: torch.Tensor, k_dec: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor,
    inject: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward recursion, one chunk after another in PyTorch: (h_in, Δ, final state)."""
    nc = U.shape[2]
    h_in = U.new_empty(*U.shape[:3], *h0.shape[-2:])  # (B, H, c, K, V)
    delta = U.new_empty(U.shape)
    h = h0
    for c in range(nc):
        h_in[:, :, c] = h
        d = U[:, :, c] - W[:, :, c] @ h  # (B, H, Q, V)
        delta[:, :, c] = d
        h = decay[:, :, c, None, None] * h + k_dec[:, :, c].transpose(-1, -2) @ d
        if inject is not None:
            h = h + inject[:, :, c]
    # Contiguous, as the fake says; an output must not alias an input.
    return h_in, delta, h.clone(memory_format=torch.contiguous_format) if nc == 0 else h.contiguous()


def state_pass_bwd_loop(
    d_h_in: torch.Tensor, d_delta: torch.Tensor, d_final: torch.Tensor, W: torch.Tensor, k_dec: torch.Tensor,
    decay: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adjoint recursion in PyTorch: (dU, the gradient reaching each chunk's end state, dh0)."""
    nc = W.shape[2]
    dU, dh_out = d_delta.new_empty(d_delta.shape), d_h_in.new_empty(d_h_in.shape)
    dh = d_final  # gradient reaching the state leaving chunk c
    for c in reversed(range(nc)):
        dh_out[:, :, c] = dh
        dd = d_delta[:, :, c] + k_dec[:, :, c] @ dh  # (B, H, Q, V)
        dU[:, :, c] = dd
        dh = d_h_in[:, :, c] + decay[:, :, c, None, None] * dh - W[:, :, c].transpose(-1, -2) @ dd
    return dU, dh_out, dh.clone(memory_format=torch.contiguous_format) if nc == 0 else dh.contiguous()


@torch.library.custom_op("archscale::gated_delta_state_pass", mutates_args=())
def _state_pass(
    U: torch.Tensor,  # (B, H, c, Q, V)
    W: torch.Tensor,  # (B, H, c, Q, K)
    k_dec: torch.Tensor,  # (B, H, c, Q, K)
    decay: torch.Tensor,  # (B, H, c)
    h0: torch.Tensor,  # (B, H, K, V)
    inject: torch.Tensor | None,  # (B, H, c, K, V)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _on_triton(U):
        from archscale.kernels.delta_rule.state_pass_triton import state_pass_fwd_triton

        return state_pass_fwd_triton(U, W, k_dec, decay, h0, inject)
    return state_pass_fwd_loop(U, W, k_dec, decay, h0, inject)


@_state_pass.register_fake
def _(U, W, k_dec, decay, h0, inject):
    return U.new_empty(*U.shape[:3], *h0.shape[-2:]), U.new_empty(U.shape), h0.new_empty(h0.shape)


@torch.library.custom_op("archscale::gated_delta_state_pass_bwd", mutates_args=())
def _state_pass_bwd(
    d_h_in: torch.Tensor,
    d_delta: torch.Tensor,
    d_final: torch.Tensor,
    W: torch.Tensor,
    k_dec: torch.Tensor,
    decay: torch.Tensor,
    h_in: torch.Tensor,
    delta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if _on_triton(W):
        from archscale.kernels.delta_rule.state_pass_triton import state_pass_bwd_triton

        dU, dh_out, dh0 = state_pass_bwd_triton(d_h_in, d_delta, d_final, W, k_dec, decay)
    else:
        dU, dh_out, dh0 = state_pass_bwd_loop(d_h_in, d_delta, d_final, W, k_dec, decay)
    # dW_c = -dΔ_c h_cᵀ, dK̃_c = Δ_c dh_cᵀ and da_c = <h_c, dh_c> for every chunk at once; dh_out is inject's gradient.
    # The last as a batched dot product: h_in * dh_out would be a temporary as large as all the states.
    dW = (dU @ h_in.transpose(-1, -2)).neg_()
    dk = delta @ dh_out.transpose(-1, -2)
    d_decay = (h_in.flatten(-2).unsqueeze(-2) @ dh_out.flatten(-2).unsqueeze(-1))[..., 0, 0]
    return (dU.contiguous(), dW.to(W.dtype).contiguous(), dk.to(k_dec.dtype).contiguous(),
            d_decay.to(decay.dtype).contiguous(), dh0.contiguous(), dh_out)


@_state_pass_bwd.register_fake
def _(d_h_in, d_delta, d_final, W, k_dec, decay, h_in, delta):
    # Every output contiguous (the real ones are fresh products and buffers).
    return (
        d_delta.new_empty(d_delta.shape), W.new_empty(W.shape), k_dec.new_empty(k_dec.shape),
        decay.new_empty(decay.shape), d_final.new_empty(d_final.shape), h_in.new_empty(h_in.shape),
    )


def _setup_context(ctx, inputs, output) -> None:
    _, W, k_dec, decay, _, inject = inputs
    h_in, delta, _ = output
    ctx.save_for_backward(W, k_dec, decay, h_in, delta)
    ctx.has_inject = inject is not None


def _backward(ctx, d_h_in, d_delta, d_final):
    W, k_dec, decay, h_in, delta = ctx.saved_tensors
    # An output nobody used arrives as None: its gradient is zero.
    d_h_in = torch.zeros_like(h_in) if d_h_in is None else d_h_in
    d_delta = torch.zeros_like(delta) if d_delta is None else d_delta
    d_final = h_in.new_zeros(*h_in.shape[:2], *h_in.shape[3:]) if d_final is None else d_final
    dU, dW, dk, d_decay, dh0, d_inject = _state_pass_bwd(d_h_in, d_delta, d_final, W, k_dec, decay, h_in, delta)
    return dU, dW, dk, d_decay, dh0, d_inject if ctx.has_inject else None


_state_pass.register_autograd(_backward, setup_context=_setup_context)


def state_pass(
    U: torch.Tensor,
    W: torch.Tensor,
    k_dec: torch.Tensor,
    decay: torch.Tensor,
    h0: torch.Tensor,
    inject: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the chunk-to-chunk recursion (see the module docstring). Shapes: U (B, H, c, Q, V), W and k_dec
    (B, H, c, Q, K), decay (B, H, c), h0 (B, H, K, V), inject (B, H, c, K, V) or None. Returns (h_in (B, H, c, K, V),
    the state entering each chunk; Δ (B, H, c, Q, V); the state after the last chunk (B, H, K, V))."""
    return _state_pass(U, W, k_dec, decay.expand(U.shape[:3]).contiguous(), h0, inject)


# FlopCounterMode sees a custom op as one opaque call: tell it the op's matmuls, so that the chunked form's FLOP
# count (reference.py's docstring, the GDN mixer's count_flops) stays exact. Forward: W h and K̃ᵀΔ, 2·Q·K·V each per
# chunk and (B, H); backward: K̃ dh, dΔ hᵀ, Wᵀ dΔ and Δ dhᵀ.
@register_flop_formula(torch.ops.archscale.gated_delta_state_pass)
def _state_pass_flops(U_shape, W_shape, *args, **kwargs) -> int:
    *batch, Q, V = U_shape
    K = W_shape[-1]
    return 2 * 2 * math.prod(batch) * Q * K * V


@register_flop_formula(torch.ops.archscale.gated_delta_state_pass_bwd)
def _state_pass_bwd_flops(d_h_in_shape, d_delta_shape, d_final_shape, W_shape, *args, **kwargs) -> int:
    *batch, Q, V = d_delta_shape
    K = W_shape[-1]
    return 4 * 2 * math.prod(batch) * Q * K * V
