"""Mamba-1 selective scan in Triton: forward and backward kernels, wrapped as a ``torch.library`` custom op.

Same functional and layout as :mod:`archscale.kernels.selective_scan` (time-major (B, T, D), A (D, N), B/C (B, T, N),
varlen through ``cu_seqlens`` with B == 1); the sequential reference is the specification.

Decomposition. One program (one warp) owns one sequence (a batch row, or a document of a packed batch: one launch
serves all documents) and BD channels, and walks through time one step after another with its (N, BD) state in
registers: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t is one fused multiply-add per state, so the only serial dependency
is a single FMA per step, while the N exponentials of a step are independent of each other and of the state (Gu &
Dao 2023, §3.3.2: the scan is elementwise over (d, n)). Every input of a step is loaded ``prefetch`` steps ahead
(software pipelining by hand, through tuples of loaded values), so load latency hides behind the arithmetic.

Layout. Each thread holds one channel and N·BD/32 of its states: the (N, BD) tiles use Triton's default layout (32
threads along the channels first), which is also the layout of a (BD,) per-channel vector, so Δ, u, z and y move
between the two without a layout conversion (a conversion costs a shared-memory round trip and a barrier, which
serialised the steps: 4 states x 4 channels per thread measured 2.5 ms forward against 1.7 ms). To keep Triton from
choosing a vectorised layout for the (N, D) arrays (A^T, saved states), their row stride ``s_nd`` is passed
unspecialised. The reductions over n (y = C·h; Σ g·B and Σ g·A·h in the backward) are in-thread or one shuffle; the
reductions over d (dB, dC) are shuffles across the BD channel threads, then one fp32 atomic add per channel block.
Time-parallel scans in registers (tl.associative_scan over chunks of steps, this module's first version) spent most
of their time moving the scan axis between threads: 3x slower end to end (benchmarks/RESULTS.md).

Time chunks. One warp per (sequence, channel block) leaves most of the GPU idle when there are few sequences (B1
T16384 D4096: 128 forward programs for 132 SMs). The recurrence is linear in the state, so time is then cut into
chunks of L steps, each its own program, in two passes (the chunked scan of Blelloch 1990, with Mamba's diagonal
A): first every chunk runs from h = 0 and keeps its final state h_c and Σ Δ over its steps (its transition is
then exp(A Σ Δ)); then each chunk folds the summaries of the chunks before it, h ← exp(A Σ Δ_c)·h + h_c starting
from h0, and runs for real. The backward does the same for the adjoint, from the last chunk back. A chunk's
program is found from its slot: batch row · chunks + chunk, or, packed, document i's chunk c at i + ⌊s_i/L⌋ + c
(found by bisection over cu_seqlens). ``_time_chunk`` picks L per call (no chunks when the sequences already fill
the GPU).

Memory. The forward saves the state every ``ckpt_every`` (S) steps ((T / S) · D · N fp32 numbers per sequence
instead of T · D · N). The backward runs over pieces of ``substeps`` (V) steps from the last to the first. Entering a
segment of S steps (from its end), it recomputes the state at the start of each of its pieces from the segment's
saved state into a small per-program scratch; for each piece it recomputes the V states into registers and runs
the adjoint recurrence g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1} backwards through them, while the inputs of the next
piece are already being loaded. As in mamba-ssm, a_t h_{t-1} is taken as h_t - b_t, so no shifted state is needed
for the gradients of Δ and A.

Math in fp32 for every input dtype; float64 is not supported here (the reference is the float64 path).
dB and dC are summed over channel blocks with fp32 atomic adds, so they are not bitwise deterministic run to run.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from archscale.kernels.selective_scan.reference import SelectiveScanOutput
from archscale.kernels.varlen import check_cu_seqlens, check_initial_state

__all__ = ["INTERPRETED", "ScanConfig", "selective_scan_triton"]

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = 2^(x·log2 e): the hardware has exp2
LN2 = tl.constexpr(0.6931471805599453)


class ScanConfig(NamedTuple):
    """Launch shape. ``block_d_*`` channels per program and ``warps_*`` warps per program (forward, backward);
    ``prefetch`` steps loaded ahead in the forward; the forward saves the state every ``ckpt_every`` steps; the
    backward keeps ``substeps`` recomputed states in registers; ``time_chunk_*`` steps per program along time.
    All are powers of two, ``ckpt_every`` is a multiple of ``prefetch`` and of ``substeps``, and a time chunk
    (unless 0, automatic) a multiple of ``ckpt_every``."""

    # Defaults: the fastest of `benchmarks/selective_scan_bench.py --sweep` on an H200 (B4 T4096 D4096 N16 bf16,
    # 2026-12-04): forward 32 channels 1.68 ms, backward 16 channels 4.7 ms (8 or 32 channels, two warps, other
    # prefetch depths, segment lengths and piece lengths were slower or no faster).
    block_d_fwd: int = 32
    block_d_bwd: int = 16
    warps_fwd: int = 1
    warps_bwd: int = 1
    prefetch: int = 4
    ckpt_every: int = 32
    substeps: int = 2
    # Steps per time chunk (forward, backward): a power of two, a multiple of ckpt_every; 0 = chosen per call by
    # _time_chunk (enough programs to fill the GPU; one chunk per sequence off the GPU).
    time_chunk_fwd: int = 0
    time_chunk_bwd: int = 0


# --------------------------------------------------------------------------------------------------- jit helpers
@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); log1p(w) = log(1 + w)·w / ((1 + w) - 1) keeps full precision for
    # small w (Goldberg 1991, Theorem 4) without libdevice, so that the interpreter runs it too.
    w = tl.exp(-tl.abs(x))
    p = 1.0 + w
    lp = tl.where(p == 1.0, w, tl.log(p) * tl.fdiv(w, p - 1.0))  # fdiv: the 2-ulp division, no IEEE slow path
    return tl.maximum(x, 0.0) + lp


@triton.jit
def _sigmoid(x):
    # 1 / (1 + e^-x) with the 2-ulp division (tl.sigmoid divides IEEE-exactly, a long instruction sequence); e^-x
    # overflowing to inf gives 0.
    return tl.fdiv(1.0, 1.0 + tl.exp(-x))


@triton.jit
def _load_n(ptr, row, stride, offs_n, nmask, ok, EVEN_N: tl.constexpr):
    """One time step of B or C, (BN,) in its own dtype; zeros for a step outside the sequence."""
    if EVEN_N:
        v = tl.load(ptr + row * stride + offs_n, mask=ok, other=0.0)
    else:
        v = tl.load(ptr + row * stride + offs_n, mask=nmask & ok, other=0.0)
    return v


@triton.jit
def _load_d(ptr, row, stride, offs_d, m, PRESENT: tl.constexpr):
    """One time step of a (BD,) input in its own dtype, or a scalar 0 for an absent one."""
    if PRESENT:
        return tl.load(ptr + row * stride + offs_d, mask=m, other=0.0)
    else:
        return 0.0


@triton.jit
def _load_step(
    u_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, B_ptr, C_ptr, t, lo, end, offs_d, dmask, offs_n, nmask,
    s_ut, s_lt, s_zt, s_Bt, s_Ct, s_ot,
    WITH_Z: tl.constexpr, WITH_DOUT: tl.constexpr, WITH_DY: tl.constexpr, WITH_C: tl.constexpr,
    EVEN_N: tl.constexpr, WITH_UB: tl.constexpr,
):
    """The raw inputs of step t, each in its own dtype (u, δ, z, dout, dy (BD,); B, C (BN,)); scalar zeros for
    those not asked for (u and B together, by ``WITH_UB``).
    Issued steps ahead of their use (software pipelining), so they stay compact until used.
    A step outside [lo, end) loads zeros, which the callers turn into Δ = 0: a = 1 and b = 0, the identity step,
    which leaves the state and every gradient untouched."""
    ok = (t >= lo) & (t < end)
    row = t.to(tl.int64)
    m = dmask & ok
    u = _load_d(u_ptr, row, s_ut, offs_d, m, WITH_UB)
    x = tl.load(dl_ptr + row * s_lt + offs_d, mask=m, other=0.0)
    z = _load_d(z_ptr, row, s_zt, offs_d, m, WITH_Z)
    do = _load_d(dout_ptr, row, s_ot, offs_d, m, WITH_DOUT)
    dy = _load_d(dy_ptr, row, s_ot, offs_d, m, WITH_DY)
    Bt = 0.0
    if WITH_UB:
        Bt = _load_n(B_ptr, row, s_Bt, offs_n, nmask, ok, EVEN_N)
    Ct = 0.0
    if WITH_C:
        Ct = _load_n(C_ptr, row, s_Ct, offs_n, nmask, ok, EVEN_N)
    return u, x, z, do, dy, Bt, Ct


@triton.jit
def _delta(x, bias, t, end, dmask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(x = δ + bias, Δ) in fp32: Δ = softplus(x), or x; 0 outside the sequence."""
    x = x.to(tl.float32)
    if HAS_BIAS:
        x = x + bias
    if SOFTPLUS:
        dl = _softplus(x)
    else:
        dl = x
    return x, tl.where(dmask & (t < end), dl, 0.0)


@triton.jit
def _advance(h, u, x, Bt, A2, bias, t, end, dmask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One step of the recurrence from step t's raw inputs: (u, Δ, h_t) in fp32, with
    h_t = exp(Δ_t A)·h_{t-1} + Δ_t B_t u_t and exp(Δ A) = 2^(Δ · A log2 e)."""
    u = u.to(tl.float32)
    _, dl = _delta(x, bias, t, end, dmask, HAS_BIAS, SOFTPLUS)
    return u, dl, tl.exp2(dl[None, :] * A2) * h + Bt.to(tl.float32)[:, None] * (dl * u)[None, :]


@triton.jit
def _rotate(pending, new, P: tl.constexpr):
    """Drop the oldest of P prefetched steps and append the newest."""
    rest = ()
    for i in tl.static_range(1, P):
        rest = rest + (pending[i],)
    return rest + (new,)


# --------------------------------------------------------------------------------------------------- time chunks
@triton.jit
def _locate(q, cu_ptr, n_docs, T, L, N_CHUNKS, N_SEARCH, VARLEN: tl.constexpr):
    """Program q's time chunk: (sequence i, its first step, its end, chunk index c within it, its chunk count).
    Dense: q = i·N_CHUNKS + c. Varlen: chunk c of document i is slot i + ⌊s_i/L⌋ + c (injective, as the saved
    states' slots, see _checkpoint_slots); the document is found by bisection over cu_seqlens (N_SEARCH halvings).
    A slot between two documents' chunks gets c >= its chunk count: that program has nothing to do."""
    if VARLEN:
        lo = q * 0
        hi = lo + n_docs
        for _ in range(N_SEARCH):
            mid = (lo + hi) // 2
            below = mid + tl.load(cu_ptr + mid) // L <= q
            lo = tl.where(below, mid, lo)
            hi = tl.where(below, hi, mid)
        start = tl.load(cu_ptr + lo).to(tl.int64)
        end = tl.load(cu_ptr + lo + 1).to(tl.int64)
        c = q - lo - (start // L).to(tl.int32)
        n_c = tl.maximum(tl.cdiv(end - start, L), 1).to(tl.int32)
        i = lo
    else:
        i = q // N_CHUNKS
        c = q % N_CHUNKS
        start = (q * 0).to(tl.int64)
        end = start + T
        n_c = q * 0 + N_CHUNKS
    return i, start, end, c, n_c


@triton.jit
def _chunk_summary(ptr, sdl_ptr, slot, DCH, N, nd, nd_mask, offs_d, dmask):
    """A chunk's summary: its (N, BD) state (or adjoint carry) from zero, and its Σ Δ (BD,), fp32."""
    sl = slot.to(tl.int64)
    sd = tl.load(sdl_ptr + sl * DCH + offs_d, mask=dmask, other=0.0)
    return tl.load(ptr + sl * DCH * N + nd, mask=nd_mask, other=0.0), sd


# --------------------------------------------------------------------------------------------------- forward
@triton.jit(do_not_specialize=["s_nd"])
def _scan_fwd_kernel(
    u_ptr, dl_ptr, z_ptr, At_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, h0_ptr, cu_ptr,
    out_ptr, y_ptr, hT_ptr, ck_ptr, hc_ptr, sdl_ptr,
    T, DCH, N, CK_PER_SEQ, n_docs, N_CHUNKS, L, N_SEARCH, s_nd,
    s_ub, s_ut, s_lb, s_lt, s_zb, s_zt, s_Bb, s_Bt, s_Cb, s_Ct,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, VARLEN: tl.constexpr, STORE_Y: tl.constexpr, EVEN_N: tl.constexpr,
    STATE_ONLY: tl.constexpr, P: tl.constexpr, S: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):
    """One time chunk of L steps of one sequence, BD channels. With STATE_ONLY (the first of two passes): every
    chunk but a sequence's last runs from h = 0 and stores its final state and Σ Δ (its summary). Otherwise: the
    chunk's entering state is folded from h0 and the summaries of the chunks before it, h ← exp(A Σ Δ_j)·h + h_j
    (the recurrence is linear in h), and the chunk runs for real: outputs, saved states, the final state."""
    q = tl.program_id(0)
    i_d = tl.program_id(1)
    i_s, seq_start, seq_end, c, n_c = _locate(q, cu_ptr, n_docs, T, L, N_CHUNKS, N_SEARCH, VARLEN)
    if VARLEN:
        slot0 = i_s + seq_start // S  # saved-state slots of the document (see _checkpoint_slots)
    else:
        slot0 = i_s * CK_PER_SEQ
        b64 = i_s.to(tl.int64)
        u_ptr += b64 * s_ub
        dl_ptr += b64 * s_lb
        z_ptr += b64 * s_zb
        B_ptr += b64 * s_Bb
        C_ptr += b64 * s_Cb
        out_ptr += b64 * T * DCH
        y_ptr += b64 * T * DCH
    if STATE_ONLY:
        run = c < n_c - 1  # the last chunk's summary is never needed
    else:
        run = c < n_c
    start = seq_start + c * L
    end = tl.where(run, tl.minimum(start + L, seq_end), start)  # no step at all for a program with nothing to do

    offs_d = i_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dmask = offs_d < DCH
    nmask = offs_n < N
    nd = offs_n[:, None] * s_nd + offs_d[None, :]  # (BN, BD) offsets into an (N, D) array: A^T, saved states
    dn = offs_d[None, :] * N + offs_n[:, None]  # (BN, BD) offsets into a (D, N) state: h0, hT
    nd_mask = nmask[:, None] & dmask[None, :]

    A2 = tl.load(At_ptr + nd, mask=nd_mask, other=0.0) * LOG2E
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    h = tl.zeros([BN, BD], tl.float32)
    sdl = tl.zeros([BD], tl.float32)
    if not STATE_ONLY:
        if HAS_H0:
            h = tl.load(h0_ptr + i_s.to(tl.int64) * DCH * N + dn, mask=nd_mask, other=0.0).to(tl.float32)
        for j in range(tl.where(run, c, 0)):  # the chunks before this one, first to last
            hj, sj = _chunk_summary(hc_ptr, sdl_ptr, q - c + j, DCH, N, nd, nd_mask, offs_d, dmask)
            h = tl.exp2(sj[None, :] * A2) * h + hj
        slot0 += c * (L // S)

    # Software pipelining by hand: every step's inputs are loaded P steps before the step runs.
    pending = ()
    for j in tl.static_range(P):
        pending = pending + (_load_step(u_ptr, dl_ptr, z_ptr, u_ptr, u_ptr, B_ptr, C_ptr, start + j, start, end,
                                        offs_d, dmask, offs_n, nmask, s_ut, s_lt, s_zt, s_Bt, s_Ct, 0,
                                        HAS_Z and not STATE_ONLY, False, False, not STATE_ONLY, EVEN_N, True),)
    for g in range(tl.cdiv(end - start, P)):
        t0 = start + g * P
        if not STATE_ONLY:
            if g % (S // P) == 0:  # the state entering every S-th step is what the backward restarts from
                tl.store(ck_ptr + (slot0 + g // (S // P)).to(tl.int64) * DCH * N + nd, h, mask=nd_mask)
        for j in tl.static_range(P):
            t = t0 + j
            u, x, z, _, _, Bt, Ct = pending[0]
            pending = _rotate(pending, _load_step(
                u_ptr, dl_ptr, z_ptr, u_ptr, u_ptr, B_ptr, C_ptr, t + P, start, end, offs_d, dmask, offs_n, nmask,
                s_ut, s_lt, s_zt, s_Bt, s_Ct, 0, HAS_Z and not STATE_ONLY, False, False, not STATE_ONLY, EVEN_N,
                True), P)
            u, dl, h = _advance(h, u, x, Bt, A2, bias, t, end, dmask, HAS_BIAS, SOFTPLUS)
            if STATE_ONLY:
                sdl += dl
            else:
                y = tl.sum(h * Ct.to(tl.float32)[:, None], axis=0)  # (BD,)
                if HAS_D:
                    y += Dv * u
                row = t.to(tl.int64)
                m = dmask & (t < end)
                if STORE_Y:
                    tl.store(y_ptr + row * DCH + offs_d, y, mask=m)
                if HAS_Z:
                    zz = z.to(tl.float32)
                    y = y * zz * _sigmoid(zz)
                tl.store(out_ptr + row * DCH + offs_d, y, mask=m)

    if STATE_ONLY:
        sl = q.to(tl.int64)
        tl.store(hc_ptr + sl * DCH * N + nd, h, mask=nd_mask & run)
        tl.store(sdl_ptr + sl * DCH + offs_d, sdl, mask=dmask & run)
    else:
        tl.store(hT_ptr + i_s.to(tl.int64) * DCH * N + dn, h, mask=nd_mask & run & (c == n_c - 1))


# --------------------------------------------------------------------------------------------------- backward
@triton.jit
def _load_piece(
    u_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, B_ptr, C_ptr, t0, lo, end, offs_d, dmask, offs_n, nmask,
    s_ut, s_lt, s_zt, s_Bt, s_Ct, s_ot, HAS_Z: tl.constexpr, HAS_DY: tl.constexpr, EVEN_N: tl.constexpr,
    V: tl.constexpr,
):
    """Every input of the V steps from t0 that the backward's reverse pass reads."""
    piece = ()
    for j in tl.static_range(V):
        piece = piece + (_load_step(u_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, B_ptr, C_ptr, t0 + j, lo, end, offs_d,
                                    dmask, offs_n, nmask, s_ut, s_lt, s_zt, s_Bt, s_Ct, s_ot,
                                    HAS_Z, True, HAS_DY, True, EVEN_N, True),)
    return piece


@triton.jit(do_not_specialize=["s_nd"])
def _scan_bwd_summary_kernel(
    dl_ptr, z_ptr, At_ptr, C_ptr, bias_ptr, cu_ptr, dout_ptr, dy_ptr, gc_ptr, sdl_ptr,
    T, DCH, N, n_docs, N_CHUNKS, L, N_SEARCH, s_nd, s_lb, s_lt, s_zb, s_zt, s_Cb, s_Ct,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, VARLEN: tl.constexpr,
    HAS_DY: tl.constexpr, EVEN_N: tl.constexpr, P: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):
    """The backward's first pass, for every chunk but a sequence's first: the adjoint g_t = C_t dy_t + a_{t+1}
    g_{t+1} run backwards through the chunk from zero, and the carry a·g it passes to the step before the chunk,
    stored with the chunk's Σ Δ. (The adjoint is linear in the carry entering from later steps, so the backward's
    second pass folds these summaries as the forward folds its states.) Only Δ, C and dy are read."""
    q = tl.program_id(0)
    i_d = tl.program_id(1)
    i_s, seq_start, seq_end, c, n_c = _locate(q, cu_ptr, n_docs, T, L, N_CHUNKS, N_SEARCH, VARLEN)
    if not VARLEN:
        b64 = i_s.to(tl.int64)
        dl_ptr += b64 * s_lb
        z_ptr += b64 * s_zb
        C_ptr += b64 * s_Cb
        dout_ptr += b64 * T * DCH
        dy_ptr += b64 * T * DCH
    run = (c > 0) & (c < n_c)
    start = seq_start + c * L
    end = tl.where(run, tl.minimum(start + L, seq_end), start)

    offs_d = i_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dmask = offs_d < DCH
    nmask = offs_n < N
    nd = offs_n[:, None] * s_nd + offs_d[None, :]
    nd_mask = nmask[:, None] & dmask[None, :]
    A2 = tl.load(At_ptr + nd, mask=nd_mask, other=0.0) * LOG2E
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    carry = tl.zeros([BN, BD], tl.float32)
    sdl = tl.zeros([BD], tl.float32)
    pending = ()
    for j in tl.static_range(P):
        pending = pending + (_load_step(dl_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, C_ptr, C_ptr, end - 1 - j, start,
                                        end, offs_d, dmask, offs_n, nmask, 0, s_lt, s_zt, 0, s_Ct, DCH,
                                        HAS_Z, True, HAS_DY, True, EVEN_N, False),)
    for g in range(tl.cdiv(end - start, P)):
        for j in tl.static_range(P):
            t = end - 1 - (g * P + j)
            _, x, zz, do, dy2, _, Ct = pending[0]
            pending = _rotate(pending, _load_step(
                dl_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, C_ptr, C_ptr, t - P, start, end, offs_d, dmask, offs_n,
                nmask, 0, s_lt, s_zt, 0, s_Ct, DCH, HAS_Z, True, HAS_DY, True, EVEN_N, False), P)
            _, dl = _delta(x, bias, t, end, dmask, HAS_BIAS, SOFTPLUS)
            dl = tl.where(t >= start, dl, 0.0)
            dy = do.to(tl.float32)
            if HAS_Z:
                zz = zz.to(tl.float32)
                dy = dy * zz * _sigmoid(zz)
            if HAS_DY:
                dy += dy2.to(tl.float32)
            carry = tl.exp2(dl[None, :] * A2) * (carry + Ct.to(tl.float32)[:, None] * dy[None, :])
            sdl += dl
    sl = q.to(tl.int64)
    tl.store(gc_ptr + sl * DCH * N + nd, carry, mask=nd_mask & run)
    tl.store(sdl_ptr + sl * DCH + offs_d, sdl, mask=dmask & run)


@triton.jit(do_not_specialize=["s_nd", "s_scr"])
def _scan_bwd_kernel(
    u_ptr, dl_ptr, z_ptr, At_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, cu_ptr, ck_ptr,
    dout_ptr, dy_ptr, dhT_ptr, gc_ptr, sdl_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr, scratch_ptr,
    T, DCH, N, CK_PER_SEQ, n_docs, N_CHUNKS, L, N_SEARCH, s_nd, s_scr,
    s_ub, s_ut, s_lb, s_lt, s_zb, s_zt, s_Bb, s_Bt, s_Cb, s_Ct,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARLEN: tl.constexpr, HAS_DY: tl.constexpr, HAS_DHT: tl.constexpr, NEED_DH0: tl.constexpr,
    EVEN_N: tl.constexpr, P: tl.constexpr, S: tl.constexpr, V: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):
    """The backward of one time chunk (see the module docstring), entering from its end with the carry folded
    from dL/dh_T and the summaries of the later chunks (_scan_bwd_summary_kernel)."""
    q = tl.program_id(0)
    i_d = tl.program_id(1)
    i_s, seq_start, seq_end, c, n_c = _locate(q, cu_ptr, n_docs, T, L, N_CHUNKS, N_SEARCH, VARLEN)
    if VARLEN:
        slot0 = i_s + seq_start // S
    else:
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

    offs_d = i_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    dmask = offs_d < DCH
    nmask = offs_n < N
    nd = offs_n[:, None] * s_nd + offs_d[None, :]
    dn = offs_d[None, :] * N + offs_n[:, None]
    nd_mask = nmask[:, None] & dmask[None, :]
    s64 = i_s.to(tl.int64)
    run = c < n_c
    start = seq_start + c * L
    end = tl.where(run, tl.minimum(start + L, seq_end), start)
    slot0 += c * (L // S)

    A2 = tl.load(At_ptr + nd, mask=nd_mask, other=0.0) * LOG2E
    bias = tl.zeros([BD], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)

    # carry = a_{t+1}·g_{t+1}: what the adjoint of the later steps passes back to h_t. At the last step
    # g = C dy + dL/dh_T, so the carry starts as the final state's gradient.
    carry = tl.zeros([BN, BD], tl.float32)
    if HAS_DHT:
        carry = tl.load(dhT_ptr + s64 * DCH * N + nd, mask=nd_mask, other=0.0).to(tl.float32)
    for jj in range(tl.where(run, n_c - 1 - c, 0)):  # the chunks after this one, last to first
        gj, sj = _chunk_summary(gc_ptr, sdl_ptr, q + n_c - 1 - c - jj, DCH, N, nd, nd_mask, offs_d, dmask)
        carry = gj + tl.exp2(sj[None, :] * A2) * carry
    dA_acc = tl.zeros([BN, BD], tl.float32)
    dD_acc = tl.zeros([BD], tl.float32)
    dbias_acc = tl.zeros([BD], tl.float32)
    scratch_ptr += (q * tl.num_programs(1) + i_d).to(tl.int64) * ((S // V) * BN * BD)
    loc = offs_n[:, None] * s_scr + tl.arange(0, BD)[None, :]  # (BN, BD) offsets into one scratch state

    # The sequence is cut into pieces of V steps, processed from the last to the first; the pieces of a segment of
    # S steps share the segment's saved state. Each piece's inputs are loaded while the piece after it is processed
    # (software pipelining; one flat loop, so that the prefetched values keep their layout).
    K: tl.constexpr = S // V  # pieces per segment
    n_pieces = tl.cdiv(end - start, V)
    piece = _load_piece(u_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, B_ptr, C_ptr, start + (n_pieces - 1) * V, start,
                        end, offs_d, dmask, offs_n, nmask, s_ut, s_lt, s_zt, s_Bt, s_Ct, DCH, HAS_Z, HAS_DY, EVEN_N, V)
    for i in range(n_pieces):
        p = n_pieces - 1 - i
        k = p % K
        if (k == K - 1) | (i == 0):
            # Entering segment p // K from its end: the states at the start of each of its pieces, recomputed from
            # the segment's saved state into the scratch (inputs loaded P steps ahead).
            seg = p // K
            s0 = start + seg * S
            h = tl.load(ck_ptr + (slot0 + seg).to(tl.int64) * DCH * N + nd, mask=nd_mask, other=0.0)
            tl.debug_barrier()  # the previous segment has read its scratch
            tl.store(scratch_ptr + loc, h)
            pending = ()
            for j in tl.static_range(P):
                pending = pending + (_load_step(u_ptr, dl_ptr, u_ptr, u_ptr, u_ptr, B_ptr, B_ptr, s0 + j, start, end,
                                                offs_d, dmask, offs_n, nmask, s_ut, s_lt, 0, s_Bt, 0, 0,
                                                False, False, False, False, EVEN_N, True),)
            for kk in range(1, k + 1):
                for j in tl.static_range(V):
                    t = s0 + (kk - 1) * V + j
                    u, x, _, _, _, Bt, _ = pending[0]
                    pending = _rotate(pending, _load_step(
                        u_ptr, dl_ptr, u_ptr, u_ptr, u_ptr, B_ptr, B_ptr, t + P, start, end, offs_d, dmask, offs_n,
                        nmask, s_ut, s_lt, 0, s_Bt, 0, 0, False, False, False, False, EVEN_N, True), P)
                    _, _, h = _advance(h, u, x, Bt, A2, bias, t, end, dmask, HAS_BIAS, SOFTPLUS)
                tl.store(scratch_ptr + kk * (BN * BD) + loc, h)
            tl.debug_barrier()

        t0 = start + p * V
        nxt = _load_piece(u_ptr, dl_ptr, z_ptr, dout_ptr, dy_ptr, B_ptr, C_ptr, t0 - V, start, end, offs_d, dmask,
                          offs_n, nmask, s_ut, s_lt, s_zt, s_Bt, s_Ct, DCH, HAS_Z, HAS_DY, EVEN_N, V)
        # The V states of this piece, recomputed into registers.
        h = tl.load(scratch_ptr + k * (BN * BD) + loc)
        hs = ()
        for j in tl.static_range(V):
            u, x, _, _, _, Bt, _ = piece[j]
            _, _, h = _advance(h, u, x, Bt, A2, bias, t0 + j, end, dmask, HAS_BIAS, SOFTPLUS)
            hs = hs + (h,)
        for j in tl.static_range(V - 1, -1, -1):
            t = t0 + j
            row = t.to(tl.int64)
            m = dmask & (t < end)
            u, x, zz, dy, dy2, Bt, Ct = piece[j]
            u = u.to(tl.float32)
            Bt = Bt.to(tl.float32)
            Ct = Ct.to(tl.float32)
            x, dl = _delta(x, bias, t, end, dmask, HAS_BIAS, SOFTPLUS)
            ht = hs[j]
            o_offs = row * DCH + offs_d
            dy = dy.to(tl.float32)
            if HAS_Z:
                # out = y·SiLU(z): dy = dout·SiLU(z), dz = dout·y·SiLU'(z), SiLU'(z) = σ(z)(1 + z(1 - σ(z))).
                zz = zz.to(tl.float32)
                sz = _sigmoid(zz)
                y = tl.sum(ht * Ct[:, None], axis=0)
                if HAS_D:
                    y += Dv * u
                tl.store(dz_ptr + o_offs, dy * y * sz * (1.0 + zz * (1.0 - sz)), mask=m)
                dy = dy * zz * sz
            if HAS_DY:
                dy += dy2.to(tl.float32)  # from the ungated output

            dlu = dl * u
            g = carry + Ct[:, None] * dy[None, :]  # dL/dh_t
            # h_t = a_t·h_{t-1} + b_t with a_t = exp(Δ_t A), b_t = Δ_t B_t u_t; a_t·h_{t-1} = h_t - b_t.
            w = g * (ht - Bt[:, None] * dlu[None, :])  # g_t·a_t·h_{t-1}
            sB = tl.sum(g * Bt[:, None], axis=0)  # Σ_n g·B: shared by dΔ (×u) and du (×Δ)
            ddl = u * sB + tl.sum(w * A2, axis=0) * LN2  # dL/dΔ; A = A2·ln 2
            du = dl * sB
            if HAS_D:
                du += Dv * dy
                dD_acc += dy * u
            dA_acc += w * dl[None, :]
            pmask = nmask & (t < end)
            tl.atomic_add(dB_ptr + row * N + offs_n, tl.sum(g * dlu[None, :], axis=1), mask=pmask, sem="relaxed")
            tl.atomic_add(dC_ptr + row * N + offs_n, tl.sum(ht * dy[None, :], axis=1), mask=pmask, sem="relaxed")
            carry = tl.exp2(dl[None, :] * A2) * g  # a_t·g_t (a_t recomputed: registers are the scarcer)
            if SOFTPLUS:
                ddl = ddl * _sigmoid(x)  # softplus' = σ
            ddl = tl.where(m, ddl, 0.0)
            if HAS_BIAS:
                dbias_acc += ddl
            tl.store(du_ptr + o_offs, du, mask=m)
            tl.store(ddl_ptr + o_offs, ddl, mask=m)
        piece = nxt

    # dA, dD and d bias: one partial sum per chunk (slot q), summed by the launcher (deterministic).
    q64 = q.to(tl.int64)
    tl.store(dA_ptr + q64 * DCH * N + dn, dA_acc, mask=nd_mask & run)
    if HAS_D:
        tl.store(dD_ptr + q64 * DCH + offs_d, dD_acc, mask=dmask & run)
    if HAS_BIAS:
        tl.store(dbias_ptr + q64 * DCH + offs_d, dbias_acc, mask=dmask & run)
    if NEED_DH0:  # a_{start}·g_{start} = dL/dh_0, from the first chunk
        tl.store(dh0_ptr + s64 * DCH * N + dn, carry, mask=nd_mask & run & (c == 0))


#: Whether ``@triton.jit`` built this module's kernels for the interpreter (``TRITON_INTERPRET=1`` when it was
#: imported): then they run on CPU tensors (slowly; tests). Read from the kernel itself, whatever the Triton version.
INTERPRETED: bool = type(_scan_fwd_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------------- launchers
def _block_d(Dch: int, block_d: int) -> int:
    return min(block_d, triton.next_power_of_2(Dch))


def _checkpoint_slots(Bsz: int, T: int, n_docs: int | None, every: int) -> tuple[int, int]:
    """(slots, slots per sequence) of the saved-state buffer. Dense: sequence b, segment s -> b·⌈T/S⌉ + s.
    Varlen: document i starting at s_i, segment s -> i + ⌊s_i/S⌋ + s, which is injective because
    ⌊s_i/S⌋ + ⌈len_i/S⌉ ≤ ⌊s_{i+1}/S⌋ + 1, and needs no device-to-host copy of cu_seqlens."""
    if n_docs is None:
        per_seq = triton.cdiv(T, every)
        return Bsz * per_seq, per_seq
    return n_docs + T // every, 0


#: At most this many time chunks per sequence: a chunk folds the summaries of all the chunks before (after) it.
MAX_TIME_CHUNKS = 64
#: One-warp programs resident per SM: the kernels use ~255 registers per thread (sm_90, triton 3.6), and
#: 65 536 registers / (255 · 32) = 8.
WARPS_PER_SM = 8
#: When time is chunked, enough chunks for this many waves of resident programs: short programs balance uneven
#: documents and the last wave.
CHUNK_WAVES = 8


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _time_chunk(requested: int, T: int, rows: int, n_db: int, warps: int, every: int, device: torch.device) -> int:
    """Steps per time chunk. A program is one warp walking its steps one after another, so a step's latency is
    hidden only by other warps on its SM. With fewer (row, channel block) programs than a quarter of the SMs'
    resident slots (WARPS_PER_SM each), time is cut into chunks for about CHUNK_WAVES waves of programs (at least
    ckpt_every steps, at most MAX_TIME_CHUNKS chunks); with more, not at all: the first pass is extra work. H200,
    D 4096 (benchmarks/RESULTS.md): at B1 T16384 (128 forward, 256 backward programs) 2.6x faster chunked; at B4
    T4096 (512 forward, 1024 backward programs) no faster forward, 18% slower backward. Off CUDA (the
    interpreter) the whole sequence is one chunk. ``requested`` > 0 is taken as it is."""
    if requested:
        return requested
    whole = max(every, triton.next_power_of_2(max(T, 1)))
    if device.type != "cuda":
        return whole
    slots = WARPS_PER_SM * _sm_count(device) // warps
    programs = rows * n_db
    if 4 * programs >= slots:
        return whole
    chunk = triton.next_power_of_2(triton.cdiv(T * programs, CHUNK_WAVES * slots))
    return min(whole, max(chunk, every, triton.next_power_of_2(triton.cdiv(T, MAX_TIME_CHUNKS))))


class _Chunks(NamedTuple):
    """A launch's time chunks: L steps each, ``per_seq`` chunk slots per dense sequence, ``slots`` in all (grid
    axis 0), bisection steps over cu_seqlens, and whether there is more than one chunk anywhere."""

    L: int
    per_seq: int
    slots: int
    search: int
    split: bool


def _chunks(Bsz: int, T: int, n_docs: int | None, L: int) -> _Chunks:
    slots, per_seq = _checkpoint_slots(Bsz, T, n_docs, L)  # chunk slots follow the saved states' numbering
    return _Chunks(L, max(per_seq, 1), slots, (n_docs or 1).bit_length(), T > L)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch and time strides (views such as in_proj(x).chunk(2, -1) need no copy).
    return x if x.stride(-1) == 1 else x.contiguous()


def _packed_rows(x: torch.Tensor) -> torch.Tensor:
    """B and C (B, T, N) with rows N apart. Every thread loads a whole (N,) row each step; rows of a view into
    the mixer's x_proj output (dt_rank + 2N apart, e.g. 156 bf16 = 312 bytes) are not 16-byte aligned, which
    measured 5% slower (H200, B4 T4096 D3968 bf16, forward+backward 7.27 vs 6.88 ms; benchmarks/RESULTS.md),
    presumably as the loads cannot be vectorised. The copy is small (T·N per sequence)."""
    return x.contiguous()


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


def _A_t(A: torch.Tensor) -> torch.Tensor:
    """A^T (N, D) in fp32: the kernels' state tiles are (N, BD), channels contiguous."""
    return A.t().float().contiguous()


@torch.library.custom_op("archscale::selective_scan_fwd", mutates_args=(), device_types=("cuda", "cpu"))
def _fwd_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    delta_softplus: bool, store_ungated: bool, want_dhT: bool, config: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, final_state fp32, ungated y or an empty tensor, saved states fp32). See :func:`selective_scan_triton`."""
    cfg = ScanConfig(*config)
    u, delta = _last_dim_contiguous(u), _last_dim_contiguous(delta)
    B, C = _packed_rows(B), _packed_rows(C)
    z = None if z is None else _last_dim_contiguous(z)
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    n_docs = None if cu_seqlens is None else cu_seqlens.shape[0] - 1
    nseq = _n_seqs(u, cu_seqlens)
    slots, per_seq = _checkpoint_slots(Bsz, T, n_docs, cfg.ckpt_every)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    y = torch.empty_like(out) if store_ungated else u.new_empty(0)
    hT = u.new_empty(nseq, Dch, N, dtype=torch.float32)
    ck = u.new_empty(slots, N, Dch, dtype=torch.float32)
    BD, BN = _block_d(Dch, cfg.block_d_fwd), triton.next_power_of_2(N)
    n_db = triton.cdiv(Dch, BD)
    ch = _chunks(Bsz, T, n_docs, _time_chunk(cfg.time_chunk_fwd, T, Bsz, n_db, cfg.warps_fwd, cfg.ckpt_every,
                                             u.device))
    # Chunk summaries (final state from zero, Σ Δ), written by the first pass when a sequence spans chunks;
    # without chunks the kernel never reads them and hT stands in for both pointers.
    hc = u.new_empty(ch.slots, N, Dch, dtype=torch.float32) if ch.split else hT
    sdl = u.new_empty(ch.slots, Dch, dtype=torch.float32) if ch.split else hT
    At = _A_t(A)
    with _launch_guard(u):
        for state_only in (True, False) if ch.split else (False,):
            _scan_fwd_kernel[(ch.slots, n_db)](
                u, delta, z if z is not None else u, At, B, C,
                D.contiguous() if D is not None else u, delta_bias.contiguous() if delta_bias is not None else u,
                initial_state.contiguous() if initial_state is not None else u,
                cu_seqlens if cu_seqlens is not None else u,
                out, y if store_ungated else out, hT, ck, hc, sdl,
                T, Dch, N, per_seq, n_docs or 0, ch.per_seq, ch.L, ch.search, Dch, *_strides(u, delta, z, B, C),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                HAS_H0=initial_state is not None, VARLEN=cu_seqlens is not None, STORE_Y=store_ungated,
                EVEN_N=N == BN, STATE_ONLY=state_only, P=cfg.prefetch, S=cfg.ckpt_every, BD=BD, BN=BN,
                num_warps=cfg.warps_fwd,
            )
    return out, hT, y, ck


@_fwd_op.register_fake
def _fwd_fake(
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, store_ungated, want_dhT, config,
):  # noqa: ANN001, ANN202
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    n_docs = None if cu_seqlens is None else cu_seqlens.shape[0] - 1
    slots, _ = _checkpoint_slots(Bsz, T, n_docs, ScanConfig(*config).ckpt_every)
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    y = torch.empty_like(out) if store_ungated else u.new_empty(0)
    return out, u.new_empty(_n_seqs(u, cu_seqlens), Dch, N, dtype=torch.float32), y, \
        u.new_empty(slots, N, Dch, dtype=torch.float32)


@torch.library.custom_op("archscale::selective_scan_bwd", mutates_args=(), device_types=("cuda", "cpu"))
def _bwd_op(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None, ck: torch.Tensor,
    dout: torch.Tensor, dy: torch.Tensor | None, dhT: torch.Tensor | None,
    delta_softplus: bool, need_dh0: bool, config: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 fp32), empty tensors for absent inputs."""
    cfg = ScanConfig(*config)
    u, delta = _last_dim_contiguous(u), _last_dim_contiguous(delta)
    B, C = _packed_rows(B), _packed_rows(C)
    z = None if z is None else _last_dim_contiguous(z)
    dout = dout.contiguous()
    dy = None if dy is None else dy.contiguous()
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    nseq = _n_seqs(u, cu_seqlens)
    n_docs = None if cu_seqlens is None else nseq
    _, per_seq = _checkpoint_slots(Bsz, T, n_docs, cfg.ckpt_every)
    BD, BN = _block_d(Dch, cfg.block_d_bwd), triton.next_power_of_2(N)
    n_db = triton.cdiv(Dch, BD)
    ch = _chunks(Bsz, T, n_docs, _time_chunk(cfg.time_chunk_bwd, T, Bsz, n_db, cfg.warps_bwd, cfg.ckpt_every,
                                             u.device))
    f32 = torch.float32
    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else u.new_empty(0)
    # dA, dD, d bias: one partial per chunk slot, summed below (deterministic); slots between documents stay 0.
    dA = u.new_zeros(ch.slots, Dch, N, dtype=f32)
    dB = torch.zeros(Bsz, T, N, dtype=f32, device=u.device)  # atomic accumulation over channel blocks
    dC = torch.zeros(Bsz, T, N, dtype=f32, device=u.device)
    dD = u.new_zeros(ch.slots, Dch, dtype=f32) if D is not None else u.new_empty(0)
    dbias = u.new_zeros(ch.slots, Dch, dtype=f32) if delta_bias is not None else u.new_empty(0)
    dh0 = u.new_empty(nseq, Dch, N, dtype=f32) if need_dh0 else u.new_empty(0)
    # Per program: the states at every V-th step of one segment (S/V · BN · BD fp32, written and soon read back).
    scratch = u.new_empty(ch.slots * n_db * (cfg.ckpt_every // cfg.substeps) * BN * BD, dtype=f32)
    # Chunk summaries of the adjoint (carry from zero, Σ Δ), when a sequence spans chunks; without chunks the
    # kernel never reads them and dout stands in for both pointers.
    gc = u.new_empty(ch.slots, N, Dch, dtype=f32) if ch.split else dout
    sdl = u.new_empty(ch.slots, Dch, dtype=f32) if ch.split else dout
    At = _A_t(A)
    bias_arg = delta_bias.contiguous() if delta_bias is not None else u
    cu_arg = cu_seqlens if cu_seqlens is not None else u
    dy_arg = dy if dy is not None else dout
    with _launch_guard(u):
        if ch.split:
            zz = z if z is not None else u
            _scan_bwd_summary_kernel[(ch.slots, n_db)](
                delta, zz, At, C, bias_arg, cu_arg, dout, dy_arg, gc, sdl,
                T, Dch, N, n_docs or 0, ch.per_seq, ch.L, ch.search, Dch,
                delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1), C.stride(0), C.stride(1),
                HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
                VARLEN=cu_seqlens is not None, HAS_DY=dy is not None, EVEN_N=N == BN, P=cfg.prefetch, BD=BD, BN=BN,
                num_warps=cfg.warps_bwd,
            )
        _scan_bwd_kernel[(ch.slots, n_db)](
            u, delta, z if z is not None else u, At, B, C,
            D.contiguous() if D is not None else u, bias_arg, cu_arg, ck,
            # dL/dh_T as (nseq, N, D), the layout of the kernel's state tiles: loaded as (nseq, D, N), the carry took
            # the load's layout through the loop and the kernel spilled registers (H100, Triton 3.6: 255 registers,
            # 140 bytes of spill stores; transposed here: 250, none).
            dout, dy_arg, dhT.transpose(1, 2).contiguous() if dhT is not None else dout,
            gc, sdl,
            du, ddelta, dz if z is not None else du, dA, dB, dC,
            dD if D is not None else dA, dbias if delta_bias is not None else dA, dh0 if need_dh0 else dA, scratch,
            T, Dch, N, per_seq, n_docs or 0, ch.per_seq, ch.L, ch.search, Dch, BD, *_strides(u, delta, z, B, C),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            VARLEN=cu_seqlens is not None, HAS_DY=dy is not None, HAS_DHT=dhT is not None, NEED_DH0=need_dh0,
            EVEN_N=N == BN, P=cfg.prefetch, S=cfg.ckpt_every, V=cfg.substeps, BD=BD, BN=BN,
            num_warps=cfg.warps_bwd,
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
    u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ck, dout, dy, dhT, delta_softplus, need_dh0, config,
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
     config) = inputs
    ck = output[3]
    ctx.mark_non_differentiable(ck)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ck)
    ctx.opts = (delta_softplus, store_ungated, want_dhT, config)


def _backward(ctx, dout, dhT, dy, _dck):  # noqa: ANN001, ANN202
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, ck = ctx.saved_tensors
    delta_softplus, store_ungated, want_dhT, config = ctx.opts
    need_dh0 = initial_state is not None and ctx.needs_input_grad[8]
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _bwd_op(
        u, delta, A, B, C, D, z, delta_bias, cu_seqlens, ck,
        dout, dy if store_ungated else None, dhT if want_dhT else None,
        delta_softplus, need_dh0, config,
    )
    return (
        du, ddelta, dA, dB, dC,
        dD if D is not None else None, dz if z is not None else None,
        dbias if delta_bias is not None else None,
        dh0.to(initial_state.dtype) if need_dh0 else None,
        *([None] * 5),
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
        return_final_state, list(cfg),
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
        if (v < 1 or v & (v - 1)) and not (name.startswith("time_chunk") and v == 0):
            raise ValueError(f"ScanConfig.{name} must be a power of two, got {v}")
    if cfg.ckpt_every < max(cfg.prefetch, cfg.substeps):
        raise ValueError(f"ScanConfig.ckpt_every ({cfg.ckpt_every}) must be a multiple of prefetch ({cfg.prefetch}) "
                         f"and of substeps ({cfg.substeps})")
    for name in ("time_chunk_fwd", "time_chunk_bwd"):
        v = getattr(cfg, name)
        if 0 < v < cfg.ckpt_every:
            raise ValueError(f"ScanConfig.{name} ({v}) must be 0 (automatic) or a multiple of ckpt_every "
                             f"({cfg.ckpt_every}): the backward restarts from states saved every ckpt_every steps")
    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, Dch, N))
        return
    # Shapes always; values eagerly on CPU, by a device-side assert on CUDA (no sync), not under torch.compile.
    check_cu_seqlens(cu_seqlens, T, Bsz)
    check_initial_state(initial_state, (cu_seqlens.numel() - 1, Dch, N))
