"""Helpers the recurrent kernels share: checking packed-varlen boundaries, laying documents out in chunks for the
one-pass chunked scans, choosing the compute dtype, a per-chunk cumulative sum that inductor treats as opaque
(:func:`cumsum`), the intra-chunk decay tile (:func:`decay_tile`), and calling a scan compiled.

Varlen convention (fla / flash-attn): a packed batch has B == 1 and ``cu_seqlens`` (int, (N + 1,)) holds the
cumulative document lengths, starting at 0 and ending at T. Recurrent state must not cross a boundary: every
document starts from its own initial state (zeros unless given, (N, ...)) and reports its own final state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint


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


def check_cu_seqlens(cu_seqlens: torch.Tensor, total: int, batch: int) -> None:
    """Validate packed-varlen boundaries without a host synchronisation (the one-pass chunked forms call this).

    Shapes are checked always. Values (0 = cu[0] < cu[1] < ... < cu[-1] = T) are checked eagerly when the tensor
    lives on the CPU (free) and with a device-side assert on an accelerator (no sync); under ``torch.compile`` the
    value check is skipped: :meth:`archscale.models.api.SeqInfo.from_cu_seqlens` validated them when the batch was
    built, and a check inside the graph would cost a sync or a graph break."""
    if batch != 1:
        raise ValueError(f"varlen input (cu_seqlens given) must have batch size 1, got {batch}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2 or cu_seqlens.is_floating_point():
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor of N_docs + 1 >= 2 entries, got {tuple(cu_seqlens.shape)} "
            f"{cu_seqlens.dtype}"
        )
    if torch.compiler.is_compiling():
        return
    if cu_seqlens.device.type == "cpu":
        doc_bounds(cu_seqlens, total, batch)  # the readable error, with the offending values
        return
    ok = (cu_seqlens[0] == 0) & (cu_seqlens[-1] == total) & (cu_seqlens[1:] > cu_seqlens[:-1]).all()
    torch._assert_async(ok, f"cu_seqlens must strictly increase from 0 to T={total}")


class ChunkLayout(NamedTuple):
    """Where the documents of a packed stream (B == 1, T tokens) sit relative to fixed chunks of Q tokens, so that a
    chunked scan can run over the whole stream at once and cut its recurrence at document starts (no loop over
    documents, no host sync: every field is computed on the device from ``cu_seqlens``).

    The stream is padded to ``n_chunks · Q`` tokens; padding belongs to the last document (the scans give padding
    an identity step, so it changes nothing).

    doc     (n_chunks, Q) int64  document index of each token.
    carry   (n_chunks, Q) bool   the token's document started before its chunk: it reads the state carried into the
                                 chunk. Otherwise the document started inside the chunk, at ``start_local``, from
                                 its own initial state.
    start_local (n_chunks, Q) int64  position inside the chunk where the token's document starts (0 where carry).
    starts  (N_docs,) int64      first token of each document (flat index into the padded stream).
    lasts   (N_docs,) int64      last token of each document.
    """

    doc: torch.Tensor
    carry: torch.Tensor
    start_local: torch.Tensor
    starts: torch.Tensor
    lasts: torch.Tensor


def chunk_layout(cu_seqlens: torch.Tensor, total: int, chunk: int) -> ChunkLayout:
    """The :class:`ChunkLayout` of documents ``cu_seqlens`` (validated by :func:`check_cu_seqlens`) in chunks of
    ``chunk`` tokens over a stream of ``total`` tokens."""
    cu = cu_seqlens.to(torch.long)
    n_chunks = -(-total // chunk)
    pos = torch.arange(n_chunks * chunk, device=cu.device)
    # Document of each position = number of document starts at or before it, minus one; padding (pos >= T) joins
    # the last one. The boundaries are the whole of ``cu``, not the slice ``cu[1:]``: inductor (torch 2.11, Triton
    # backends) lowers searchsorted to ``ops.bucketize``, which reads the strides of its boundaries and raises
    # ``NotImplementedError: SliceView`` on a slice of an unrealised tensor.
    doc = (torch.searchsorted(cu, pos, right=True) - 1).clamp_max(cu.shape[0] - 2)
    start = cu[doc]  # first token of each position's document
    chunk_start = pos - pos % chunk
    carry = start < chunk_start
    start_local = torch.where(carry, 0, start - chunk_start)
    return ChunkLayout(
        doc.view(n_chunks, chunk),
        carry.view(n_chunks, chunk),
        start_local.view(n_chunks, chunk),
        cu[:-1],
        cu[1:] - 1,
    )


@torch.library.custom_op("archscale::cumsum", mutates_args=())
def _cumsum(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    if reverse:
        return torch.cumsum(x.flip(dim), dim).flip(dim).contiguous()
    return torch.cumsum(x.contiguous(), dim)


@_cumsum.register_fake
def _(x: torch.Tensor, dim: int, reverse: bool) -> torch.Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real op returns


def _cumsum_setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    _, ctx.dim, ctx.reverse = inputs


def _cumsum_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
    # d/dx_j of Σ_i y_i g_i with y_i = Σ_{j<=i} x_j is Σ_{i>=j} g_i: the cumulative sum the other way round.
    return _cumsum(grad, ctx.dim, not ctx.reverse), None, None


_cumsum.register_autograd(_cumsum_backward, setup_context=_cumsum_setup_context)


def cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.cumsum(x, dim)`` (same kernel, same values; contiguous output) as an opaque custom op, for the
    per-chunk cumulated log-decays of the chunked scans.

    Why not ``torch.cumsum``: inductor (torch 2.11) lowers it on CUDA to a Triton scan, and to a *split* scan when
    there are few rows for many steps (fewer than 64 rows per SM, as Mamba-2's (B, c, H) rows over Q = 256 at B4
    T4096). The split-scan codegen then fails on any input broadcast along the scanned axis (``dt · A`` with A per
    head: ``TypeError: list indices must be integers or slices, not NoneType`` in ``TritonSymbols.get_block_shape``).
    The op costs one small extra read and write next to the Q × Q work of a chunk; its backward is the reverse
    cumulative sum, the same op."""
    return _cumsum(x, dim % x.dim(), False)


_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def _decay_tile(log_decay: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    seg = log_decay[..., :, None] - log_decay[..., None, :]
    # Mask before exp: above the diagonal the exponent is positive and could overflow, and exp(-inf) = 0 has a zero
    # gradient.
    return torch.exp(torch.where(keep, seg, float("-inf")))


def decay_tile(log_decay: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The intra-chunk decay tile of the chunked scans (Mamba-2's L, Gated DeltaNet's Γ): ``exp(c_i - c_j)`` where
    ``keep`` (j <= i, same document), else 0, from the cumulated log-decays ``log_decay`` (..., Q) of each chunk;
    ``keep`` (Q, Q) or broadcastable to (..., Q, Q). Returns (..., Q, Q).

    Computed inside ``torch.utils.checkpoint``, so the backward recomputes it from the (..., Q) log-decays. Left
    to itself, torch.compile's partitioner keeps the float32 tile in every layer of a model but the first: the
    causal mask and the -inf fill are constants the layers share, and it does not recompute a use of a shared
    value that comes long after the first use. The tile is as large as a layer's attention scores."""
    return checkpoint(_decay_tile, log_decay, keep, use_reentrant=False)


def compiled_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` compiled with ``torch.compile(fullgraph=True)``, built once per function on first use (the "fast"
    CUDA path of the chunked scans). Inside an enclosing ``torch.compile`` (a compiled model) ``fn`` itself is called:
    the outer compiler traces it into its own graph and fuses it with its neighbours. Shapes start static and turn
    dynamic after a recompile (torch.compile's default), so a changing number of documents does not recompile
    forever."""
    if torch.compiler.is_compiling():
        return fn(*args, **kwargs)
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, fullgraph=True)
    return compiled(*args, **kwargs)
