"""Mamba-1 selective scan (Gu & Dao 2023): public functional, shapes, and implementation choice.

Layout: time-major, channels last (fla's B, T, ... convention; mamba-ssm uses (B, D, T)):

    u, delta, z   (B, T, D)     D = d_inner channels
    A             (D, N)        real, negative (A = -exp(A_log)), N = d_state
    B, C          (B, T, N)     input-dependent, shared by all channels
    D             (D,)          skip connection, or None
    delta_bias    (D,)          added to delta before the softplus, or None
    initial_state (B, D, N)     h_0, or (N_docs, D, N) with cu_seqlens; None = zeros
    cu_seqlens    (N_docs + 1,) packed varlen with B == 1: the state restarts at every document start

Returns :class:`SelectiveScanOutput` ``(out, final_state, ungated)``: out (B, T, D) is y·SiLU(z) (y when z is
None); final_state (B, D, N) / (N_docs, D, N) when ``return_final_state``; ungated y = SSM(u) + D⊙u (before the
gate; SambaY's GMU memory, REFERENCE §3) when ``return_ungated``. Math in fp32; out in u's dtype.
See :mod:`archscale.kernels.selective_scan.reference` for the recurrence.

impl:
    "reference"  the sequential pure-PyTorch specification (any device, float64 kept).
    "triton"     our Triton kernels (:mod:`.triton_scan`): every option, varlen in one launch, a custom op that
                 ``torch.compile`` keeps in one graph. CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``
                 (set before the kernels are first imported; tests). No float64.
    "mamba_ssm"  mamba-ssm's ``selective_scan_fn`` (CUDA, when installed). Dense only: no ``cu_seqlens``, no
                 ``initial_state``, and no ``return_ungated`` together with ``z`` (it returns only the gated
                 output). Its autograd.Function is a graph break under ``torch.compile``.
    "auto"       mamba-ssm when importable and the call is one it supports, else Triton for CUDA tensors when
                 triton is installed, else the reference. CPU tensors and float64 always take the reference.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal

import torch

from archscale.kernels.selective_scan.reference import SelectiveScanOutput, selective_scan_reference
from archscale.kernels.varlen import fp32_region

__all__ = ["SelectiveScanImpl", "SelectiveScanOutput", "selective_scan", "selective_scan_reference"]

SelectiveScanImpl = Literal["auto", "reference", "triton", "mamba_ssm"]
_IMPLS = ("auto", "reference", "triton", "mamba_ssm")

# Looked up once, without importing (importing triton costs a second; mamba-ssm pulls in much more). Plain module
# constants, so that torch.compile traces the dispatch below without a graph break.
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
_mamba_ssm_fn: dict[str, Callable | Exception] = {}


def selective_scan(
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
    impl: SelectiveScanImpl = "auto",
) -> SelectiveScanOutput:
    """The selective scan (see the module docstring for shapes and for the choice of ``impl``)."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = _auto_impl(u, (delta, A, B, C, D, z, delta_bias, initial_state), z, initial_state, cu_seqlens,
                          return_ungated)
    if impl == "triton":
        return _triton_impl(u)(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens,
            return_final_state, return_ungated,
        )
    if impl == "mamba_ssm":
        why = _mamba_ssm_unsupported(z, initial_state, cu_seqlens, return_ungated)
        if why:
            raise ValueError(f"impl='mamba_ssm' cannot take this call: {why}; use impl='triton' or 'auto'")
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_final_state,
                               return_ungated)
    with fp32_region(u):
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens,
            return_final_state, return_ungated,
        )


def _auto_impl(
    u: torch.Tensor,
    others: tuple[torch.Tensor | None, ...],
    z: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    return_ungated: bool,
) -> Literal["reference", "triton", "mamba_ssm"]:
    if not u.is_cuda or u.dtype == torch.float64 or any(t is not None and t.dtype == torch.float64 for t in others):
        return "reference"
    if (
        _HAS_MAMBA_SSM
        and not _mamba_ssm_unsupported(z, initial_state, cu_seqlens, return_ungated)
        and not isinstance(_load_mamba_ssm(), Exception)
    ):
        return "mamba_ssm"
    return "triton" if _HAS_TRITON else "reference"


def _triton_impl(u: torch.Tensor) -> Callable[..., SelectiveScanOutput]:
    if not _HAS_TRITON:
        raise ValueError("impl='triton' needs the triton package (pip install 'archscale[gpu]'), which is not "
                         "installed; use impl='reference' (or 'auto')")
    from archscale.kernels.selective_scan import triton_scan

    if not u.is_cuda and not triton_scan.INTERPRETED:
        raise ValueError(
            f"impl='triton' runs on CUDA tensors, got tensors on {u.device}; on CPU it needs TRITON_INTERPRET=1 "
            "set before archscale's Triton kernels are first imported (for tests); use impl='reference' on CPU"
        )
    return triton_scan.selective_scan_triton


def _mamba_ssm_unsupported(
    z: torch.Tensor | None, initial_state: torch.Tensor | None, cu_seqlens: torch.Tensor | None, return_ungated: bool
) -> str:
    """Why mamba-ssm's ``selective_scan_fn`` cannot serve a call ('' when it can)."""
    if cu_seqlens is not None:
        return "it has no varlen (cu_seqlens) support"
    if initial_state is not None:
        return "it takes no initial_state"
    if return_ungated and z is not None:
        return "with z it returns only the gated output, not the ungated one"
    return ""


def _load_mamba_ssm() -> Callable | Exception:
    """mamba-ssm's selective_scan_fn, or the exception importing it raised (cached either way)."""
    if "fn" not in _mamba_ssm_fn:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            _mamba_ssm_fn["fn"] = selective_scan_fn
        except Exception as e:  # noqa: BLE001 - a broken CUDA extension must not break auto
            _mamba_ssm_fn["fn"] = e
    return _mamba_ssm_fn["fn"]


def _mamba_ssm_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_final_state: bool,
    return_ungated: bool,
) -> SelectiveScanOutput:
    fn = _load_mamba_ssm() if _HAS_MAMBA_SSM else ModuleNotFoundError("No module named 'mamba_ssm'")
    if isinstance(fn, Exception):
        raise ValueError(f"impl='mamba_ssm' needs mamba-ssm (pip install 'archscale[mamba]'), which is not "
                         f"importable ({fn}); use impl='triton' or 'auto'") from fn

    def cm(x: torch.Tensor) -> torch.Tensor:  # (B, T, X) -> mamba-ssm's channel-major (B, X, T)
        return x.transpose(1, 2)

    # Its CUDA kernels want fp32 A, D and delta_bias (the weights); they copy inputs whose last stride is not 1.
    res = fn(
        cm(u), cm(delta), A.float(), cm(B), cm(C), None if D is None else D.float(), None if z is None else cm(z),
        None if delta_bias is None else delta_bias.float(), delta_softplus, return_final_state,
    )
    out, final = res if return_final_state else (res, None)
    out = cm(out)
    return SelectiveScanOutput(out, final, out if return_ungated else None)
