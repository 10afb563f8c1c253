"""Mamba-1 selective scan in Triton: forward and backward kernels, wrapped as a ``torch.library`` custom op.

Same functional and layout as :mod:`archscale.kernels.selective_scan` (time-major (B, T, D), A (D, N), B/C (B, T, N),
varlen through ``cu_seqlens`` with B == 1); the sequential reference is the specification.

Decomposition. One program owns one sequence (a batch row, or a document of a packed batch: one launch serves all
documents) and BD channels, and walks through time in chunks of L steps. A chunk is a register tile
(L, BD, N): the per-step decay a_t = exp(Δ_t A) and input b_t = Δ_t B_t u_t are formed for all L steps at once
and combined with a parallel scan over time (Blelloch 1990; the linear recurrence h_t = a_t h_{t-1} + b_t is
associative in the pairs (a, b), Martin & Cundy 2018), then the carried state h enters as h_t = (Πa) h + (scanned b).
This is the time-parallel idea of Mamba's own CUDA kernel (Gu & Dao 2023, §3.3.2: "kernel fusion, parallel scan,
recomputation") with the state (BD, N) kept in registers; loading whole (L, BD) tiles keeps many loads in flight,
which a step-by-step loop over t would not.

Memory. The forward saves the state only every K chunks (every K·L steps: (T / KL) · D · N fp32 numbers per sequence
instead of T · D · N). The backward walks the segments of K chunks from the last to the first: it recomputes the K
chunk-start states of a segment from its saved state (a cheap reduction per chunk, kept in a small per-program
scratch), then processes the chunks in reverse, recomputing the forward states within each chunk and running the
adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} as a reverse scan. As in mamba-ssm, a_t h_{t-1} is taken as
h_t - b_t, so no shifted state is needed for the gradients of Δ and A.

Math in fp32 for every input dtype; float64 is not supported here (the reference is the float64 path).
dB and dC are summed over channel blocks with fp32 atomic adds, so they are not bitwise deterministic run to run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from archscale.kernels.selective_scan.reference import SelectiveScanOutput
from archscale.kernels.varlen import check_cu_seqlens, check_initial_state

__all__ = ["INTERPRETED", "ScanConfig", "selective_scan_triton"]

class ScanConfig(NamedTuple):
    """Tile sizes. ``chunk`` (L) steps per register tile; the state is saved every ``ckpt_chunks`` (K) chunks;
    ``block_d_*`` channels per program (shrunk automatically so that an (L, BD, N) tile stays within
    ``max_tile`` elements); ``warps_*`` warps per program. All sizes are powers of two."""

    # Defaults: the fastest forward and backward tiles of `benchmarks/selective_scan_bench.py --sweep` on an H100
    # (B4 T4096 D4096 N16 bf16, 2026-11-25): forward (16, ·, 16, ·, 4) 3.07 ms, backward with 32 channels 16.6 ms.
    chunk: int = 16
    ckpt_chunks: int = 4
    block_d_fwd: int = 16
    block_d_bwd: int = 32
    warps_fwd: int = 4
    warps_bwd: int = 8
    max_tile: int = 8192


# --------------------------------------------------------------------------------------------------- jit helpers
@triton.jit
def _combine_fwd(a1, b1, a2, b2):
    # (a1, b1) are the earlier steps, (a2, b2) the later ones: h ↦ a2·(a1·h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _combine_bwd(f1, x1, g1, f2, x2, g2):
    # Adjoint g_t = c_t + a_{t+1}·g_{t+1} over a range [t, e): f = a_t (its first decay), x = a_{t+1}···a_{e-1}
    # (the others), g = the range's g_t without what comes after it. In a reverse scan Triton passes the later
    # range first: (f1, x1, g1) is later, (f2, x2, g2) earlier, and the result is the concatenation.
    return f2, x2 * f1 * x1, g2 + x2 * f1 * g1


@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); log1p(w) = log(1 + w)·w / ((1 + w) - 1) keeps full precision for
    # small w (Goldberg 1991, Theorem 4) without libdevice, so that the interpreter runs it too.
    w = tl.exp(-tl.abs(x))
    p = 1.0 + w
    lp = tl.where(p == 1.0, w, tl.log(p) * w / (p - 1.0))
    return tl.maximum(x, 0.0) + lp


@triton.jit
def _chunk_inputs(
    u_ptr, dl_ptr, B_ptr, bias, A2, t, tmask, offs_d, dmask, offs_n, nmask,
    s_ut, s_lt, s_Bt,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Loads one chunk and forms a_t = exp(Δ_t A), b_t = Δ_t B_t u_t. Steps outside the sequence get Δ = 0, so
    a = 1 and b = 0: the identity step, which leaves the state and every gradient untouched."""
    rows = t.to(tl.int64)
    m2 = tmask[:, None] & dmask[None, :]
    u = tl.load(u_ptr + rows[:, None] * s_ut + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
    x = tl.load(dl_ptr + rows[:, None] * s_lt + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + bias[None, :]
    if SOFTPLUS:
        dl = _softplus(x)
    else:
        dl = x
    dl = tl.where(m2, dl, 0.0)  # (L, BD)
    Bt = tl.load(
        B_ptr + rows[:, None] * s_Bt + offs_n[None, :], mask=tmask[:, None] & nmask[None, :], other=0.0
    ).to(tl.float32)  # (L, BN)
    dA = tl.exp2(dl[:, :, None] * A2[None, :, :])  # (L, BD, BN)
    dBu = (dl * u)[:, :, None] * Bt[:, None, :]  # (L, BD, BN)
    return u, x, dl, Bt, dA, dBu, m2


# --------------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(
    u_ptr, dl_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr, cu_ptr,
    out_ptr, y_ptr, hT_ptr, ck_ptr,
    T, DCH, N, CK_PER_SEQ,
    s_ub, s_ut, s_lb, s_lt, s_zb, s_zt, s_Bb, s_Bt, s_Cb, s_Ct,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, STORE_Y: tl.constexpr,
    L: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, K: tl.constexpr,
):
    i_s = tl.program_id(0)  # sequence: batch row, or document of a packed batch
    i_d = tl.program_id(1)  # channel block
    if VARLEN:
        start = tl.load(cu_ptr + i_s).to(tl.int64)
        end = tl.load(cu_ptr + i_s + 1).to(tl.int64)
        slot0 = i_s + start // (K * L)  # injective over documents (see _checkpoint_slots)
    else:
        start = 0
        end = T
        slot0 = i_s * CK_PER_SEQ
        b64 = i_s.to(tl.int64)
        u_ptr += b64 * s_ub
        dl_ptr += b64 * s_lb
        z_ptr += b64 * s_zb
        B_ptr += b64 * s_Bb
        C_ptr += b64 * s_Cb
        out_ptr += b64 * T * DCH
        y_ptr += b64 * T * DCH

    offs_t = tl.arange(0, L)
    offs_d = i_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dmask = offs_d < DCH
    nmask = offs_n < N
    dn = offs_d[:, None] * N + offs_n[None, :]  # (BD, BN) offsets into a (D, N) state
    dn_mask = dmask[:, None] & nmask[None, :]

    A2 = tl.load(A_ptr + dn, mask=dn_mask, other=0.0).to(tl.float32) * 1.4426950408889634  # exp(ΔA) = 2^(Δ·A·log2e)
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    h = tl.zeros([BD, BN], tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + i_s.to(tl.int64) * DCH * N + dn, mask=dn_mask, other=0.0).to(tl.float32)

    for c in range(tl.cdiv(end - start, L)):
        if c % K == 0:  # the state entering every K-th chunk is what the backward restarts from
            tl.store(ck_ptr + (slot0 + c // K).to(tl.int64) * DCH * N + dn, h, mask=dn_mask)
        t = start + c * L + offs_t
        tmask = t < end
        u, _, _, _, dA, dBu, m2 = _chunk_inputs(
            u_ptr, dl_ptr, B_ptr, bias, A2, t, tmask, offs_d, dmask, offs_n, nmask, s_ut, s_lt, s_Bt,
            HAS_BIAS, SOFTPLUS,
        )
        rows = t.to(tl.int64)
        Ct = tl.load(
            C_ptr + rows[:, None] * s_Ct + offs_n[None, :], mask=tmask[:, None] & nmask[None, :], other=0.0
        ).to(tl.float32)
        aa, bb = tl.associative_scan((dA, dBu), 0, _combine_fwd)
        hs = aa * h[None, :, :] + bb  # (L, BD, BN): h_t for every step of the chunk
        y = tl.sum(hs * Ct[:, None, :], axis=2)  # (L, BD)
        if HAS_D:
            y += Dv[None, :] * u
        o_offs = rows[:, None] * DCH + offs_d[None, :]
        if STORE_Y:
            tl.store(y_ptr + o_offs, y, mask=m2)
        if HAS_Z:
            zz = tl.load(z_ptr + rows[:, None] * s_zt + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + o_offs, y, mask=m2)
        # Steps past the end are identity steps, so the last row is the state after the last valid step.
        h = tl.sum(tl.where(offs_t[:, None, None] == L - 1, hs, 0.0), axis=0)

    tl.store(hT_ptr + i_s.to(tl.int64) * DCH * N + dn, h, mask=dn_mask)


# --------------------------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_kernel(
    u_ptr, dl_ptr, z_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, cu_ptr, ck_ptr,
    dout_ptr, dy_ptr, dhT_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, scratch_ptr,
    T, DCH, N, CK_PER_SEQ,
    s_ub, s_ut, s_lb, s_lt, s_zb, s_zt, s_Bb, s_Bt, s_Cb, s_Ct,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARLEN: tl.constexpr, HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr, NEED_DH0: tl.constexpr,
    L: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, K: tl.constexpr,
):
    i_s = tl.program_id(0)
    i_d = tl.program_id(1)
    if VARLEN:
        start = tl.load(cu_ptr + i_s).to(tl.int64)
        end = tl.load(cu_ptr + i_s + 1).to(tl.int64)
        slot0 = i_s + start // (K * L)
    else:
        start = 0
        end = T
        slot0 = i_s * CK_PER_SEQ
        b64 = i_s.to(tl.int64)
        u_ptr += b64 * s_ub
        dl_ptr += b64 * s_lb
        z_ptr += b64 * s_zb
        B_ptr += b64 * s_Bb
        C_ptr += b64 * s_Cb
        dout_ptr += b64 * T * DCH  # dout, dy and every (B, T, D) gradient are contiguous
        dy_ptr += b64 * T * DCH
        du_ptr += b64 * T * DCH
        ddl_ptr += b64 * T * DCH
        dz_ptr += b64 * T * DCH
        dB_ptr += b64 * T * N
        dC_ptr += b64 * T * N

    offs_t = tl.arange(0, L)
    offs_d = i_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dmask = offs_d < DCH
    nmask = offs_n < N
    dn = offs_d[:, None] * N + offs_n[None, :]
    dn_mask = dmask[:, None] & nmask[None, :]
    s64 = i_s.to(tl.int64)

    Af = tl.load(A_ptr + dn, mask=dn_mask, other=0.0).to(tl.float32)
    A2 = Af * 1.4426950408889634
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)

    # carry = a_{t0}·g_{t0} of the chunk after the current one: what its adjoint passes back to h_{t0-1}.
    # At the last step g = C dy + dL/dh_T, so the carry starts as the final state's gradient.
    carry = tl.zeros([BD, BN], tl.float32)
    if HAS_DHT:
        carry = tl.load(dhT_ptr + s64 * DCH * N + dn, mask=dn_mask, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BD, BN], tl.float32)
    dD_acc = tl.zeros([BD], tl.float32)
    dbias_acc = tl.zeros([BD], tl.float32)
    scratch_ptr += ((i_s * tl.num_programs(1) + i_d).to(tl.int64) * K) * BD * BN
    loc = tl.arange(0, BD)[:, None] * BN + offs_n[None, :]  # (BD, BN) offsets into this program's scratch

    n_seg = tl.cdiv(end - start, K * L)
    for seg_rev in range(n_seg):
        seg = n_seg - 1 - seg_rev
        seg_start = start + seg * (K * L)
        n_chunks = tl.minimum(tl.cdiv(end - seg_start, L), K)
        h_seg = tl.load(ck_ptr + (slot0 + seg).to(tl.int64) * DCH * N + dn, mask=dn_mask, other=0.0)
        if K > 1:
            # Chunk-start states of this segment, from its saved state: only the chunk totals are needed.
            hb = h_seg
            tl.store(scratch_ptr + loc, hb)
            for k in range(n_chunks - 1):
                t = seg_start + k * L + offs_t
                _, _, _, _, dA, dBu, _ = _chunk_inputs(
                    u_ptr, dl_ptr, B_ptr, bias, A2, t, t < end, offs_d, dmask, offs_n, nmask, s_ut, s_lt, s_Bt,
                    HAS_BIAS, SOFTPLUS,
                )
                ta, tb = tl.reduce((dA, dBu), 0, _combine_fwd)
                hb = ta * hb + tb
                tl.store(scratch_ptr + (k + 1) * BD * BN + loc, hb)
            tl.debug_barrier()  # the scratch is read back by other threads of this program

        for k_rev in range(n_chunks):
            k = n_chunks - 1 - k_rev
            if K > 1:
                h = tl.load(scratch_ptr + k * BD * BN + loc)
            else:
                h = h_seg
            t = seg_start + k * L + offs_t
            tmask = t < end
            rows = t.to(tl.int64)
            u, x, dl, Bt, dA, dBu, m2 = _chunk_inputs(
                u_ptr, dl_ptr, B_ptr, bias, A2, t, tmask, offs_d, dmask, offs_n, nmask, s_ut, s_lt, s_Bt,
                HAS_BIAS, SOFTPLUS,
            )
            Ct = tl.load(
                C_ptr + rows[:, None] * s_Ct + offs_n[None, :], mask=tmask[:, None] & nmask[None, :], other=0.0
            ).to(tl.float32)
            aa, bb = tl.associative_scan((dA, dBu), 0, _combine_fwd)
            hs = aa * h[None, :, :] + bb  # (L, BD, BN) recomputed forward states

            o_offs = rows[:, None] * DCH + offs_d[None, :]
            dy = tl.load(dout_ptr + o_offs, mask=m2, other=0.0).to(tl.float32)
            if HAS_Z:
                # out = y·SiLU(z): dy = dout·SiLU(z), dz = dout·y·SiLU'(z), SiLU'(z) = σ(z)(1 + z(1 - σ(z))).
                zz = tl.load(z_ptr + rows[:, None] * s_zt + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zz)
                y = tl.sum(hs * Ct[:, None, :], axis=2)
                if HAS_D:
                    y += Dv[None, :] * u
                tl.store(dz_ptr + o_offs, dy * y * sz * (1.0 + zz * (1.0 - sz)), mask=m2)
                dy = dy * zz * sz
            if HAS_DY:
                dy += tl.load(dy_ptr + o_offs, mask=m2, other=0.0).to(tl.float32)  # from the ungated output

            # Adjoint: g_t = C_t·dy_t + a_{t+1}·g_{t+1}, as a reverse scan over (a_t, 1, C_t·dy_t).
            cc = Ct[:, None, :] * dy[:, :, None]
            ones = tl.full([L, BD, BN], 1.0, tl.float32)
            _, xx, gg = tl.associative_scan((dA, ones, cc), 0, _combine_bwd, reverse=True)
            g = tl.where(tmask[:, None, None], gg + xx * carry[None, :, :], 0.0)  # dL/dh_t
            carry = tl.sum(tl.where(offs_t[:, None, None] == 0, dA * g, 0.0), axis=0)

            # h_t = a_t·h_{t-1} + b_t with a_t = exp(Δ_t A), b_t = Δ_t B_t u_t; a_t·h_{t-1} = h_t - b_t.
            w = g * (hs - dBu)  # g_t·a_t·h_{t-1}
            sB = tl.sum(g * Bt[:, None, :], axis=2)  # Σ_n g·B: shared by dΔ (×u) and du (×Δ)
            ddl = u * sB + tl.sum(w * Af[None, :, :], axis=2)  # dL/dΔ
            du = dl * sB
            if HAS_D:
                du += Dv[None, :] * dy
                dD_acc += tl.sum(dy * u, axis=0)
            dA_acc += tl.sum(w * dl[:, :, None], axis=0)
            pmask = tmask[:, None] & nmask[None, :]
            tn = rows[:, None] * N + offs_n[None, :]
            tl.atomic_add(dB_ptr + tn, tl.sum(g * (dl * u)[:, :, None], axis=1), mask=pmask, sem="relaxed")
            tl.atomic_add(dC_ptr + tn, tl.sum(hs * dy[:, :, None], axis=1), mask=pmask, sem="relaxed")
            if SOFTPLUS:
                ddl = ddl * tl.sigmoid(x)  # softplus' = σ
            ddl = tl.where(m2, ddl, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddl, axis=0)
            tl.store(du_ptr + o_offs, du, mask=m2)
            tl.store(ddl_ptr + o_offs, ddl, mask=m2)

    tl.store(dA_ptr + s64 * DCH * N + dn, dA_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_ptr + s64 * DCH + offs_d, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + s64 * DCH + offs_d, dbias_acc, mask=dmask)
    if NEED_DH0:
        tl.store(dh0_ptr + s64 * DCH * N + dn, carry, mask=dn_mask)  # a_{start}·g_{start} = dL/dh_0


#: Whether ``@triton.jit`` built this module's kernels for the interpreter (``TRITON_INTERPRET=1`` when it was
#: imported): then they run on CPU tensors (slowly; tests). Read from the kernel itself, whatever the Triton version.
INTERPRETED: bool = type(_fwd_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------------- launchers
def _tiles(Dch: int, N: int, chunk: int, block_d: int, max_tile: int) -> tuple[int, int]:
    """(BD, BN): N padded to a power of two; BD halved until an (L, BD, BN) tile fits ``max_tile`` elements."""
    BN = triton.next_power_of_2(N)
    BD = min(block_d, triton.next_power_of_2(Dch))
    while BD > 1 and chunk * BD * BN > max_tile:
        BD //= 2
    return BD, BN


def _checkpoint_slots(Bsz: int, T: int, n_docs: int | None, every: int) -> tuple[int, int]:
    """(slots, slots per sequence) of the saved-state buffer. Dense: sequence b, segment s -> b·⌈T/KL⌉ + s.
    Varlen: document i starting at s_i, segment s -> i + ⌊s_i/KL⌋ + s, which is injective because
    ⌊s_i/KL⌋ + ⌈len_i/KL⌉ ≤ ⌊s_{i+1}/KL⌋ + 1, and needs no device-to-host copy of cu_seqlens."""
    if n_docs is None:
        per_seq = triton.cdiv(T, every)
        return Bsz * per_seq, per_seq
    return n_docs + T // every, 0


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch and time strides (views such as in_proj(x).chunk(2, -1) need no copy).
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch_guard(x: torch.Tensor) -> torch.cuda.device | _NullContext:
    return torch.cuda.device(x.device) if x.is_cuda else _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _strides(u: torch.Tensor, delta: torch.Tensor, z: torch.Tensor | None, B: torch.Tensor, C: torch.Tensor):
    zz = z if z is not None else u
    return (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            B.stride(0), B.stride(1), C.stride(0), C.stride(1))


def _n_seqs(u: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


@torch.library.custom_op("archscale::selective_scan_fwd", mutates_args=(), device_types=("cuda", "cpu"))
def _fwd_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    delta_softplus: bool, store_ungated: bool, want_dhT: bool,
    chunk: int, ckpt_chunks: int, block_d_fwd: int, block_d_bwd: int, warps_fwd: int, warps_bwd: int, max_tile: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, final_state fp32, ungated y or an empty tensor, saved states fp32). See :func:`selective_scan_triton`."""
    u, delta, B, C = (_last_dim_contiguous(t) for t in (u, delta, B, C))
    z = None if z is None else _last_dim_contiguous(z)
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    n_docs = None if cu_seqlens is None else cu_seqlens.shape[0] - 1
    nseq = _n_seqs(u, cu_seqlens)
    slots, per_seq = _checkpoint_slots(Bsz, T, n_docs, chunk * ckpt_chunks)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    y = torch.empty_like(out) if store_ungated else u.new_empty(0)
    hT = u.new_empty(nseq, Dch, N, dtype=torch.float32)
    ck = u.new_empty(slots, Dch, N, dtype=torch.float32)
    BD, BN = _tiles(Dch, N, chunk, block_d_fwd, max_tile)
    with _launch_guard(u):
        _fwd_kernel[(nseq, triton.cdiv(Dch, BD))](
            u, delta, z if z is not None else u, A.contiguous(), B, C,
            D.contiguous() if D is not None else u, delta_bias.contiguous() if delta_bias is not None else u,
            initial_state.contiguous() if initial_state is not None else u,
            cu_seqlens if cu_seqlens is not None else u,
            out, y if store_ungated else out, hT, ck,
            T, Dch, N, per_seq, *_strides(u, delta, z, B, C),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            HAS_H0=initial_state is not None, VARLEN=cu_seqlens is not None, STORE_Y=store_ungated,
            L=chunk, BD=BD, BN=BN, K=ckpt_chunks, num_warps=warps_fwd,
        )
    return out, hT, y, ck


@_fwd_op.register_fake
def _fwd_fake(
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_ungated, want_dhT,
    chunk, ckpt_chunks, block_d_fwd, block_d_bwd, warps_fwd, warps_bwd, max_tile,
):  # noqa: ANN001, ANN202
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    n_docs = None if cu_seqlens is None else cu_seqlens.shape[0] - 1
    slots, _ = _checkpoint_slots(Bsz, T, n_docs, chunk * ckpt_chunks)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    y = torch.empty_like(out) if store_ungated else u.new_empty(0)
    return out, u.new_empty(_n_seqs(u, cu_seqlens), Dch, N, dtype=torch.float32), y, \
        u.new_empty(slots, Dch, N, dtype=torch.float32)


@torch.library.custom_op("archscale::selective_scan_bwd", mutates_args=(), device_types=("cuda", "cpu"))
def _bwd_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None, ck: torch.Tensor,
    dout: torch.Tensor, dy: torch.Tensor | None, dhT: torch.Tensor | None,
    delta_softplus: bool, need_dh0: bool, chunk: int, ckpt_chunks: int, block_d: int, num_warps: int, max_tile: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 fp32), empty tensors for absent inputs."""
    u, delta, B, C = (_last_dim_contiguous(t) for t in (u, delta, B, C))
    z = None if z is None else _last_dim_contiguous(z)
    dout = dout.contiguous()
    dy = None if dy is None else dy.contiguous()
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    nseq = _n_seqs(u, cu_seqlens)
    _, per_seq = _checkpoint_slots(Bsz, T, None if cu_seqlens is None else nseq, chunk * ckpt_chunks)
    BD, BN = _tiles(Dch, N, chunk, block_d, max_tile)
    n_db = triton.cdiv(Dch, BD)
    f32 = torch.float32
    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else u.new_empty(0)
    dA = u.new_empty(nseq, Dch, N, dtype=f32)  # per sequence, summed below (deterministic)
    dB = torch.zeros(Bsz, T, N, dtype=f32, device=u.device)  # atomic accumulation over channel blocks
    dC = torch.zeros(Bsz, T, N, dtype=f32, device=u.device)
    dD = u.new_empty(nseq, Dch, dtype=f32) if D is not None else u.new_empty(0)
    dbias = u.new_empty(nseq, Dch, dtype=f32) if delta_bias is not None else u.new_empty(0)
    dh0 = u.new_empty(nseq, Dch, N, dtype=f32) if need_dh0 else u.new_empty(0)
    scratch = u.new_empty(nseq * n_db * ckpt_chunks * BD * BN if ckpt_chunks > 1 else 1, dtype=f32)
    with _launch_guard(u):
        _bwd_kernel[(nseq, n_db)](
            u, delta, z if z is not None else u, A.contiguous(), B, C,
            D.contiguous() if D is not None else u, delta_bias.contiguous() if delta_bias is not None else u,
            cu_seqlens if cu_seqlens is not None else u, ck,
            dout, dy if dy is not None else dout, dhT.contiguous() if dhT is not None else dout,
            du, ddelta, dz if z is not None else du, dA, dB, dC,
            dD if D is not None else dA, dbias if delta_bias is not None else dA, dh0 if need_dh0 else dA, scratch,
            T, Dch, N, per_seq, *_strides(u, delta, z, B, C),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            VARLEN=cu_seqlens is not None, HAS_DY=dy is not None, HAS_DHT=dhT is not None, NEED_DH0=need_dh0,
            L=chunk, BD=BD, BN=BN, K=ckpt_chunks, num_warps=num_warps,
        )
    return (
        du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else dD,
        dz,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else dbias,
        dh0,
    )


@_bwd_op.register_fake
def _bwd_fake(
    u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ck, dout, dy, dhT, delta_softplus, need_dh0,
    chunk, ckpt_chunks, block_d, num_warps, max_tile,
):  # noqa: ANN001, ANN202
    nseq, (_, _, Dch), N = _n_seqs(u, cu_seqlens), u.shape, A.shape[-1]

    def like(x: torch.Tensor | None) -> torch.Tensor:  # every gradient is returned contiguous
        return u.new_empty(0) if x is None else x.new_empty(x.shape)

    return (
        like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias),
        u.new_empty(nseq, Dch, N, dtype=torch.float32) if need_dh0 else u.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    (u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_ungated, want_dhT,
     chunk, ckpt_chunks, _, block_d_bwd, _, warps_bwd, max_tile) = inputs
    ck = output[3]
    ctx.mark_non_differentiable(ck)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ck)
    ctx.opts = (delta_softplus, store_ungated, want_dhT, chunk, ckpt_chunks, block_d_bwd, warps_bwd, max_tile)


def _backward(ctx, dout, dhT, dy, _dck):  # noqa: ANN001, ANN202
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ck = ctx.saved_tensors
    delta_softplus, store_ungated, want_dhT, chunk, ckpt_chunks, block_d, num_warps, max_tile = ctx.opts
    need_dh0 = initial_state is not None and ctx.needs_input_grad[8]
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _bwd_op(
        u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ck,
        dout, dy if store_ungated else None, dhT if want_dhT else None,
        delta_softplus, need_dh0, chunk, ckpt_chunks, block_d, num_warps, max_tile,
    )
    return (
        du, ddelta, dA, dB, dC,
        dD if D is not None else None, dz if z is not None else None,
        dbias if delta_bias is not None else None,
        dh0.to(initial_state.dtype) if need_dh0 else None,
        *([None] * 11),
    )


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------- entry point
def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
    return_ungated: bool = False,
    config: ScanConfig | None = None,
) -> SelectiveScanOutput:
    """The selective scan with the Triton kernels (shapes and semantics: :func:`archscale.kernels.selective_scan.
    selective_scan`). Differentiable in every tensor input; ``torch.compile`` sees one custom op, no graph break.
    ``config`` overrides the tile sizes (benchmarks, tests)."""
    cfg = config or ScanConfig()
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, cfg)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    store_ungated = return_ungated and z is not None  # without a gate, the ungated output is the output
    out, hT, y, _ = _fwd_op(
        u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_ungated,
        return_final_state, cfg.chunk, cfg.ckpt_chunks, cfg.block_d_fwd, cfg.block_d_bwd, cfg.warps_fwd,
        cfg.warps_bwd, cfg.max_tile,
    )
    ungated = (y if store_ungated else out) if return_ungated else None
    return SelectiveScanOutput(out, hT if return_final_state else None, ungated)


def _validate(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, cfg: ScanConfig,
) -> None:
    """Readable errors for what the kernels cannot take (the reference raises the same shape errors)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, T, D), got shape {tuple(u.shape)}")
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    if delta.shape != u.shape or A.shape != (Dch, N) or B.shape != (Bsz, T, N) or C.shape != (Bsz, T, N):
        raise ValueError(
            f"selective_scan shapes: u, delta (B, T, D); A (D, N); B, C (B, T, N); got u {tuple(u.shape)}, "
            f"delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    for name, t, shape in (("z", z, u.shape), ("D", D, (Dch,)), ("delta_bias", delta_bias, (Dch,))):
        if t is not None and t.shape != shape:
            raise ValueError(f"selective_scan: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    if any(t.dtype == torch.float64 for t in tensors):
        raise ValueError("the Triton selective scan computes in fp32 and takes no float64 input; "
                         "use impl='reference' for float64")
    if any(t.device != u.device for t in tensors):
        raise ValueError(f"selective_scan: every tensor must be on {u.device}, got "
                         f"{sorted({str(t.device) for t in tensors})}")
    for name, v in cfg._asdict().items():
        if v < 1 or v & (v - 1):
            raise ValueError(f"ScanConfig.{name} must be a power of two, got {v}")
    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, Dch, N))
        return
    # Shapes always; values eagerly on CPU, by a device-side assert on CUDA (no sync), not under torch.compile.
    check_cu_seqlens(cu_seqlens, T, Bsz)
    check_initial_state(initial_state, (cu_seqlens.numel() - 1, Dch, N))
