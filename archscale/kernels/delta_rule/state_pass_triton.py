"""The chunk-to-chunk recursion of the chunked gated delta rule as two Triton kernels (forward and adjoint),
imported lazily by :mod:`archscale.kernels.delta_rule.state_pass`; needs ``triton``.

Why: in PyTorch the recursion is a Python loop of ~6 (forward) and ~6 (backward) small kernels per chunk. At B1
T16 384 with chunks of 64 that is 256 chunks, ~3 000 launches a layer and step, each carrying PyTorch's per-op
overhead, while the products themselves are tiny (B·H matrices of Q × K by K × V). Here one program owns one
(sequence, head) and a block of BV value columns and walks through the chunks with its (K, BV) block of the state
in registers (fla's ``chunk_gated_delta_rule_fwd_h`` keeps the state on chip the same way); nothing is launched
per chunk. The recursion is independent across value columns (h's columns never mix), so the blocks need no
communication:

    forward, c = 0 … nc-1:    h_in[c] = h;  Δ[c] = U[c] - W[c] h;  h ← a[c] h + K̃[c]ᵀ Δ[c] (+ inject[c])
    adjoint, c = nc-1 … 0:    dh_out[c] = dh;  dΔ = dΔ_o[c] + K̃[c] dh;  dh ← dh_in[c] + a[c] dh - W[c]ᵀ dΔ

The adjoint kernel returns dΔ (= dU) and the gradient reaching each chunk's end state; the gradients that sum over
value columns (dW, dK̃, da) are batched products over all chunks at once, computed by the caller.

On CUDA they run where TF32 is allowed: :data:`archscale.kernels.delta_rule.state_pass.TRITON_ON_CUDA` says
why.

Math in fp32 (the chunked form runs in fp32; float64 stays on the PyTorch loop). The products use TF32 when
``torch.backends.cuda.matmul.allow_tf32`` allows it for PyTorch's own fp32 products, else full fp32 ("ieee"); in
TF32 their inputs are rounded to nearest as cuBLAS rounds them (``_dot``), not truncated as Triton would.
Inputs are read through their strides, so the slices U and W of the solve's output (column-major from LAPACK or
cuBLAS) are not copied; outputs are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "ROUND_TO_TF32", "round_to_tf32", "state_pass_bwd_triton", "state_pass_fwd_triton"]


@triton.jit
def _tile_ptrs(base, c, stride_c, stride_r, stride_x, rows, cols):
    """Pointers of a (rows, cols) tile of chunk c, from the program's (sequence, head) base."""
    return base + c * stride_c + rows[:, None] * stride_r + cols[None, :] * stride_x


@triton.jit
def _program_tiles(n_heads, Q, K, V, BQ: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """This program's (batch row, head), the chunk / key / value indices of its tiles and their masks."""
    bh = tl.program_id(0).to(tl.int64)  # batch offsets can pass 2**31 elements
    q_idx, k_idx = tl.arange(0, BQ), tl.arange(0, BK)
    v_idx = tl.program_id(1) * BV + tl.arange(0, BV)
    mq, mk, mv = q_idx < Q, k_idx < K, v_idx < V
    m_qk, m_qv, m_kv = mq[:, None] & mk[None, :], mq[:, None] & mv[None, :], mk[:, None] & mv[None, :]
    return bh // n_heads, bh % n_heads, q_idx, k_idx, v_idx, m_qk, m_qv, m_kv


@triton.jit
def _dot(tile, state, PRECISION: tl.constexpr, ROUND: tl.constexpr):
    """tile @ state of fp32 operands in PRECISION ("tf32" or "ieee"). With ROUND the state operand (computed here,
    in registers) is rounded to TF32 first; the tiles read from memory were rounded by the launcher
    (:func:`round_to_tf32`): rounding them here would hold two (Q, K) tiles in registers and spill (ptxas, sm_90).
    Why round at all: Triton's TF32 products truncate their inputs, cuBLAS's round them, and truncation is biased;
    through the chunk-to-chunk recursion it gave the kernels ~8x the error of PyTorch's TF32 loop on the H100
    (benchmarks/RESULTS.md, 2026-12-07, fifth session; triton-lang/triton#4574)."""
    if ROUND:  # as round_to_tf32, NaNs kept
        bits = state.to(tl.int32, bitcast=True)
        state = tl.where(state == state, ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True), state)
    return tl.dot(tile, state, input_precision=PRECISION)


@triton.jit
def _state_pass_fwd_kernel(
    U, W, KD, DECAY, H0, INJ, H_IN, DELTA, H_OUT,
    su_b, su_h, su_c, su_q, su_x,  # U (B, H, c, Q, V)
    sw_b, sw_h, sw_c, sw_q, sw_x,  # W (B, H, c, Q, K)
    sk_b, sk_h, sk_c, sk_q, sk_x,  # K̃ (B, H, c, Q, K)
    sa_b, sa_h,  # decay (B, H, c), contiguous along c
    s0_b, s0_h, s0_k, s0_x,  # h0 (B, H, K, V)
    si_b, si_h, si_c, si_k, si_x,  # inject (B, H, c, K, V)
    sh_b, sh_h, sh_c, sh_k, sh_x,  # h_in (B, H, c, K, V)
    sd_b, sd_h, sd_c, sd_q, sd_x,  # Δ (B, H, c, Q, V)
    so_b, so_h, so_k, so_x,  # final state (B, H, K, V)
    n_heads, n_chunks, Q, K, V,
    BQ: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_INJECT: tl.constexpr, PRECISION: tl.constexpr,
    ROUND: tl.constexpr,
):
    b, hd, q_idx, k_idx, v_idx, m_qk, m_qv, m_kv = _program_tiles(n_heads, Q, K, V, BQ, BK, BV)
    U, W, KD = U + b * su_b + hd * su_h, W + b * sw_b + hd * sw_h, KD + b * sk_b + hd * sk_h
    H0, INJ, H_IN = H0 + b * s0_b + hd * s0_h, INJ + b * si_b + hd * si_h, H_IN + b * sh_b + hd * sh_h
    DELTA, H_OUT, DECAY = DELTA + b * sd_b + hd * sd_h, H_OUT + b * so_b + hd * so_h, DECAY + b * sa_b + hd * sa_h

    h = tl.load(_tile_ptrs(H0, 0, 0, s0_k, s0_x, k_idx, v_idx), mask=m_kv, other=0.0).to(tl.float32)
    for c in range(n_chunks):
        tl.store(_tile_ptrs(H_IN, c, sh_c, sh_k, sh_x, k_idx, v_idx), h, mask=m_kv)
        w = tl.load(_tile_ptrs(W, c, sw_c, sw_q, sw_x, q_idx, k_idx), mask=m_qk, other=0.0)
        u = tl.load(_tile_ptrs(U, c, su_c, su_q, su_x, q_idx, v_idx), mask=m_qv, other=0.0)
        delta = u.to(tl.float32) - _dot(w.to(tl.float32), h, PRECISION, ROUND)
        tl.store(_tile_ptrs(DELTA, c, sd_c, sd_q, sd_x, q_idx, v_idx), delta, mask=m_qv)
        kd = tl.load(_tile_ptrs(KD, c, sk_c, sk_q, sk_x, q_idx, k_idx), mask=m_qk, other=0.0)
        a = tl.load(DECAY + c).to(tl.float32)
        h = a * h + _dot(tl.trans(kd.to(tl.float32)), delta, PRECISION, ROUND)
        if HAS_INJECT:
            inj = tl.load(_tile_ptrs(INJ, c, si_c, si_k, si_x, k_idx, v_idx), mask=m_kv, other=0.0)
            h += inj.to(tl.float32)
    tl.store(_tile_ptrs(H_OUT, 0, 0, so_k, so_x, k_idx, v_idx), h, mask=m_kv)


@triton.jit
def _state_pass_bwd_kernel(
    D_H_IN, D_DELTA, D_FINAL, W, KD, DECAY, DU, DH_OUT, DH0,
    sgh_b, sgh_h, sgh_c, sgh_k, sgh_x,  # d_h_in (B, H, c, K, V)
    sgd_b, sgd_h, sgd_c, sgd_q, sgd_x,  # dΔ from the outputs (B, H, c, Q, V)
    sgf_b, sgf_h, sgf_k, sgf_x,  # d_final (B, H, K, V)
    sw_b, sw_h, sw_c, sw_q, sw_x,  # W (B, H, c, Q, K)
    sk_b, sk_h, sk_c, sk_q, sk_x,  # K̃ (B, H, c, Q, K)
    sa_b, sa_h,  # decay (B, H, c), contiguous along c
    su_b, su_h, su_c, su_q, su_x,  # dU (B, H, c, Q, V)
    so_b, so_h, so_c, so_k, so_x,  # gradient reaching each chunk's end state (B, H, c, K, V)
    s0_b, s0_h, s0_k, s0_x,  # dh0 (B, H, K, V)
    n_heads, n_chunks, Q, K, V,
    BQ: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr, ROUND: tl.constexpr,
):
    b, hd, q_idx, k_idx, v_idx, m_qk, m_qv, m_kv = _program_tiles(n_heads, Q, K, V, BQ, BK, BV)
    D_H_IN, D_DELTA = D_H_IN + b * sgh_b + hd * sgh_h, D_DELTA + b * sgd_b + hd * sgd_h
    D_FINAL, W, KD = D_FINAL + b * sgf_b + hd * sgf_h, W + b * sw_b + hd * sw_h, KD + b * sk_b + hd * sk_h
    DU, DH_OUT, DH0 = DU + b * su_b + hd * su_h, DH_OUT + b * so_b + hd * so_h, DH0 + b * s0_b + hd * s0_h
    DECAY = DECAY + b * sa_b + hd * sa_h

    dh = tl.load(_tile_ptrs(D_FINAL, 0, 0, sgf_k, sgf_x, k_idx, v_idx), mask=m_kv, other=0.0)
    dh = dh.to(tl.float32)
    for step in range(n_chunks):
        c = n_chunks - 1 - step
        tl.store(_tile_ptrs(DH_OUT, c, so_c, so_k, so_x, k_idx, v_idx), dh, mask=m_kv)
        kd = tl.load(_tile_ptrs(KD, c, sk_c, sk_q, sk_x, q_idx, k_idx), mask=m_qk, other=0.0)
        gd = tl.load(_tile_ptrs(D_DELTA, c, sgd_c, sgd_q, sgd_x, q_idx, v_idx), mask=m_qv, other=0.0)
        dd = gd.to(tl.float32) + _dot(kd.to(tl.float32), dh, PRECISION, ROUND)
        tl.store(_tile_ptrs(DU, c, su_c, su_q, su_x, q_idx, v_idx), dd, mask=m_qv)
        w = tl.load(_tile_ptrs(W, c, sw_c, sw_q, sw_x, q_idx, k_idx), mask=m_qk, other=0.0)
        gh = tl.load(_tile_ptrs(D_H_IN, c, sgh_c, sgh_k, sgh_x, k_idx, v_idx), mask=m_kv, other=0.0)
        a = tl.load(DECAY + c).to(tl.float32)
        dh = gh.to(tl.float32) + a * dh - _dot(tl.trans(w.to(tl.float32)), dd, PRECISION, ROUND)
    tl.store(_tile_ptrs(DH0, 0, 0, s0_k, s0_x, k_idx, v_idx), dh, mask=m_kv)


INTERPRETED: bool = type(_state_pass_fwd_kernel).__name__ == "InterpretedFunction"


def _blocks(Q: int, K: int, V: int) -> tuple[int, int, int, int]:
    """(BQ, BK, BV, warps): the chunk and the keys whole (tl.dot needs at least 16 along each side), values in
    blocks of at most 8 192 state entries per program. At GDN's K 256, V 512 on the H100 (RESULTS.md, 2026-12-07)
    BV 32 with 8 warps ran the varlen layer in 26.1 ms against 29.5 ms for BV 16 with 4 warps; on an H200
    (2026-12-07, sixth) it beat (16, 4), (32, 4) and (64, 8) on both the varlen and the dense layer."""
    BQ, BK = max(16, triton.next_power_of_2(Q)), max(16, triton.next_power_of_2(K))
    BV = max(16, min(triton.next_power_of_2(V), 8192 // BK, 64))
    return BQ, BK, BV, 8 if BK * BV > 4096 else 4


# Whether TF32 products round their inputs to TF32 first, as cuBLAS does (see _dot). False leaves Triton's
# truncation; kept so that benchmarks/RESULTS.md's comparison can be repeated.
ROUND_TO_TF32: bool = True


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``x`` rounded to TF32's 10 mantissa bits, to nearest with ties away from zero (PTX's
    ``cvt.rna.tf32.f32``), as an fp32 tensor: add half of the 13 dropped bits' range to the magnitude's bits, then
    clear them (a carry into the exponent is the correct rounding up). NaNs are kept as they are: CUDA's own NaN
    (all bits set) would carry into the sign bit and come out as a zero, hiding a diverged run."""
    rounded = (x.view(torch.int32) + 0x1000).bitwise_and_(-0x2000).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded)


def _precision() -> dict[str, object]:
    """The kernels' PRECISION and ROUND: TF32 when PyTorch allows it for its own fp32 products, else full fp32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32 and not INTERPRETED
    return {"PRECISION": "tf32" if tf32 else "ieee", "ROUND": tf32 and ROUND_TO_TF32}


def _rounded_tiles(W: torch.Tensor, k_dec: torch.Tensor, precision: dict[str, object]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """W and K̃, the products' operands read from memory, rounded to TF32 where the kernels round (see _dot): one
    elementwise pass each, transient. Narrower dtypes convert to fp32 exactly within TF32 and are left alone."""
    if not precision["ROUND"]:
        return W, k_dec
    return tuple(round_to_tf32(t) if t.dtype == torch.float32 else t for t in (W, k_dec))  # type: ignore[return-value]


def state_pass_fwd_triton(
    U: torch.Tensor, W: torch.Tensor, k_dec: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor,
    inject: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward recursion (module docstring). Shapes as :func:`archscale.kernels.delta_rule.state_pass.state_pass`
    (decay contiguous along chunks); returns (h_in (B, H, c, K, V), Δ like U, final state (B, H, K, V))."""
    Bsz, H, nc, Q, V = U.shape
    K = W.shape[-1]
    h_in = U.new_empty(Bsz, H, nc, K, V)
    delta = U.new_empty(U.shape)
    final = h0.new_empty(h0.shape)
    inj = inject if inject is not None else h_in  # never read without HAS_INJECT
    BQ, BK, BV, warps = _blocks(Q, K, V)
    grid = (Bsz * H, triton.cdiv(V, BV))
    precision = _precision()
    W, k_dec = _rounded_tiles(W, k_dec, precision)
    _state_pass_fwd_kernel[grid](
        U, W, k_dec, decay, h0, inj, h_in, delta, final,
        *U.stride(), *W.stride(), *k_dec.stride(), *decay.stride()[:2], *h0.stride(),
        *inj.stride(), *h_in.stride(), *delta.stride(), *final.stride(),
        H, nc, Q, K, V,
        BQ=BQ, BK=BK, BV=BV, HAS_INJECT=inject is not None, **precision, num_warps=warps, num_stages=1,
    )
    return h_in, delta, final


def state_pass_bwd_triton(
    d_h_in: torch.Tensor, d_delta: torch.Tensor, d_final: torch.Tensor, W: torch.Tensor, k_dec: torch.Tensor,
    decay: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adjoint recursion (module docstring): returns (dU like d_delta, the gradient reaching each chunk's end
    state (B, H, c, K, V), dh0 (B, H, K, V))."""
    Bsz, H, nc, Q, V = d_delta.shape
    K = W.shape[-1]
    dU = d_delta.new_empty(d_delta.shape)
    dh_out = d_h_in.new_empty(Bsz, H, nc, K, V)
    dh0 = d_final.new_empty(d_final.shape)
    BQ, BK, BV, warps = _blocks(Q, K, V)
    grid = (Bsz * H, triton.cdiv(V, BV))
    precision = _precision()
    W, k_dec = _rounded_tiles(W, k_dec, precision)
    _state_pass_bwd_kernel[grid](
        d_h_in, d_delta, d_final, W, k_dec, decay, dU, dh_out, dh0,
        *d_h_in.stride(), *d_delta.stride(), *d_final.stride(), *W.stride(), *k_dec.stride(),
        *decay.stride()[:2], *dU.stride(), *dh_out.stride(), *dh0.stride(),
        H, nc, Q, K, V,
        BQ=BQ, BK=BK, BV=BV, **precision, num_warps=warps, num_stages=1,
    )
    return dU, dh_out, dh0
