"""Helpers shared by the kernel tests (imported as a plain module: tests/kernels is on sys.path under pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence

import pytest
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖ (max with a tiny floor so that two zero tensors compare equal)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def split_cu(lengths: Sequence[int]) -> torch.Tensor:
    """cu_seqlens (int32) of documents of the given lengths."""
    return torch.tensor([0, *torch.tensor(list(lengths)).cumsum(0).tolist()], dtype=torch.int32)


def compare_grads(
    fn_a: Callable[..., Sequence[torch.Tensor]],
    fn_b: Callable[..., Sequence[torch.Tensor]],
    inputs: dict[str, torch.Tensor],
    tol: float,
) -> None:
    """Run both functions on leaf copies of ``inputs``, back-propagate the same random upstream gradients through
    every output, and compare the gradient of each input by name (relative error below ``tol``)."""
    grads = []
    upstream: list[torch.Tensor] | None = None
    for fn in (fn_a, fn_b):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        outs = [o for o in fn(**leaves) if o is not None]
        if upstream is None:
            upstream = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, upstream)
        grads.append({k: v.grad for k, v in leaves.items()})
    for name in inputs:
        ga, gb = grads[0][name], grads[1][name]
        assert ga is not None and gb is not None, f"no gradient for {name}"
        assert torch.isfinite(ga).all(), f"non-finite gradient for {name}"
        assert gb.abs().sum() > 0, f"zero gradient for {name}: the comparison would be vacuous"
        err = rel_err(ga, gb)
        assert err < tol, f"gradient of {name}: relative error {err:.3g} >= {tol}"


# Document layouts that stress the one-pass varlen chunked forms at chunk size VARLEN_CHUNK = 4: documents of one
# token (several in a chunk), chunk-1 / chunk / chunk+1, documents spanning several chunks and starting mid-chunk,
# a single document, a boundary exactly on a chunk edge.
VARLEN_CHUNK = 4
AWKWARD_LENGTHS = [(1, 1, 1, 1, 1, 1, 1), (3, 5, 4, 1, 2), (2, 14, 1, 9), (17,), (4, 4, 1, 7)]


def time_slice(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Tokens [start, stop) of every per-token input (dim 1); per-head parameters (1-D) are kept whole."""
    return {k: (v[:, start:stop] if v.dim() > 1 else v) for k, v in inputs.items()}


def check_state_continuation(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    inputs: dict[str, torch.Tensor],
    split: Sequence[int],
    tol: float = 1e-10,
) -> None:
    """Running ``fn`` piece by piece, each piece starting from the previous final state, equals one full pass."""
    full, full_final = fn(**inputs, return_final_state=True)
    state, start, pieces = None, 0, []
    for n in split:
        y, state = fn(**time_slice(inputs, start, start + n), initial_state=state, return_final_state=True)
        pieces.append(y)
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=tol, atol=tol)
    torch.testing.assert_close(state, full_final, rtol=tol, atol=tol)


def check_varlen_equals_documents(
    fn_packed: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    fn_doc: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    inputs: dict[str, torch.Tensor],
    lengths: Sequence[int],
    h0: torch.Tensor | None,
    tol: float = 1e-10,
) -> None:
    """A packed varlen call of ``fn_packed`` equals ``fn_doc`` run on every document alone (outputs and states)."""
    y, final = fn_packed(**inputs, initial_state=h0, cu_seqlens=split_cu(lengths), return_final_state=True)
    assert final is not None and final.shape[0] == len(lengths)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()  # a forgotten token or state would be NaN
    start = 0
    for i, n in enumerate(lengths):
        s = None if h0 is None else h0[i : i + 1]
        y_doc, f_doc = fn_doc(**time_slice(inputs, start, start + n), initial_state=s, return_final_state=True)
        torch.testing.assert_close(y[:, start : start + n], y_doc, rtol=tol, atol=tol)
        torch.testing.assert_close(final[i : i + 1], f_doc, rtol=tol, atol=tol)
        start += n


def check_varlen_matches_recurrent(
    chunked: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    recurrent: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    inputs: dict[str, torch.Tensor],
    lengths: Sequence[int],
    h0: torch.Tensor | None,
    tol: float = 1e-10,
    grad_tol: float = 1e-9,
) -> None:
    """The one-pass varlen chunked form against the recurrent specification on the same packed call: outputs,
    per-document final states, and the gradient of every input (initial states included) under random upstream
    gradients on both the outputs and the final states."""
    cu = split_cu(lengths)
    kw = {"cu_seqlens": cu, "return_final_state": True}
    y, final = chunked(**inputs, initial_state=h0, chunk_size=VARLEN_CHUNK, **kw)
    y_ref, final_ref = recurrent(**inputs, initial_state=h0, **kw)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(final, final_ref, rtol=tol, atol=tol)
    leaves = dict(inputs) if h0 is None else {**inputs, "initial_state": h0}
    compare_grads(
        lambda **a: chunked(**a, chunk_size=VARLEN_CHUNK, **kw), lambda **a: recurrent(**a, **kw), leaves, grad_tol
    )


def check_compiled_matches_eager(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    inputs: dict[str, torch.Tensor],
    backend: str,
    tol: float,
    layouts: Sequence[Sequence[int]] = ((3, 9, 1, 11), (5, 19)),
) -> None:
    """``torch.compile(fn, fullgraph=True)`` (no graph break allowed) gives the eager outputs and gradients on each
    varlen layout of T = 24 tokens (with two layouts of different document counts, the second call recompiles with
    a dynamic count)."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    for lengths in layouts:
        cu = split_cu(lengths)
        for out, ref in zip(compiled(**inputs, cu_seqlens=cu), fn(**inputs, cu_seqlens=cu)):
            torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        compare_grads(
            lambda cu=cu, **a: compiled(**a, cu_seqlens=cu), lambda cu=cu, **a: fn(**a, cu_seqlens=cu), inputs, tol
        )


def check_layers_keep_what_one_keeps(
    scan: Callable[..., torch.Tensor], x: torch.Tensor, layers: Sequence[dict[str, torch.Tensor]], tile: int
) -> None:
    """``scan(x, **layer) -> y`` (y shaped as x), stacked as two layers with their own parameters in one compiled
    graph, as in a model: the second layer keeps no more (tile, tile)-shaped float tensors for the backward than a
    layer compiled alone (the partitioner once kept the second layer's decay tile because both layers share its
    mask constants). Runs inductor's partitioner without code generation (aot_eager_decomp_partition). Values and
    gradients of the two layers match eager."""

    def stack(x: torch.Tensor, *params: dict[str, torch.Tensor]) -> torch.Tensor:
        for layer in params:
            x = torch.tanh(scan(x, **layer)).to(x.dtype)
        return x

    def compiled(n_layers: int) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
        """The first n_layers compiled: their output, and the (tile, tile)-shaped tensors kept for the backward."""
        fn = torch.compile(stack, backend="aot_eager_decomp_partition", fullgraph=True)
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = fn(x, *layers[:n_layers])
        return y, [tuple(t.shape) for t in saved if t.is_floating_point() and tuple(t.shape[-2:]) == (tile, tile)]

    _, one = compiled(1)
    y, two = compiled(2)
    assert len(two) == 2 * len(one), f"one layer keeps {one}; two layers keep {two}"

    leaves = [x, *(p for layer in layers for p in layer.values())]
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, gy)
    y_eager = stack(x, *layers)
    eager_grads = torch.autograd.grad(y_eager, leaves, gy)
    # The same aten ops run in both (no code generation): equal up to float32 reassociation.
    assert rel_err(y.detach().float(), y_eager.detach().float()) < 1e-6
    for g, r in zip(grads, eager_grads):
        assert rel_err(g.float(), r.float()) < 1e-5


def check_fast_path_on_gpu(
    fast: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    recurrent: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    inputs: dict[str, torch.Tensor],
    lengths: Sequence[int],
    tol: float,
) -> None:
    """A fast path (low-precision inputs, CUDA) against the float64 recurrent specification on the same values:
    outputs and per-document final states by relative error, then the gradients of every input."""
    cu = split_cu(lengths).to(next(iter(inputs.values())).device)
    kw = {"cu_seqlens": cu, "return_final_state": True}

    def ref(**a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, f = recurrent(**{n: t.double() for n, t in a.items()}, **kw)
        assert f is not None
        return y.to(a[next(iter(a))].dtype), f.float()  # the fast path's dtypes: the input's, fp32 states

    with torch.no_grad():
        (y, f), (y_ref, f_ref) = fast(**inputs, **kw), ref(**inputs)
    assert y.dtype == y_ref.dtype and f is not None and f_ref is not None
    assert rel_err(y, y_ref) < tol, f"output: relative error {rel_err(y, y_ref):.3g}"
    assert rel_err(f, f_ref) < tol, f"final states: relative error {rel_err(f, f_ref):.3g}"
    compare_grads(lambda **a: fast(**a, **kw), ref, inputs, tol)


# ------------------------------------------------------------------- Triton interpreter cases, run in a subprocess
# Triton decides when a kernel module is imported whether its kernels compile for the GPU or run in the interpreter
# (TRITON_INTERPRET=1), for the whole process; so a test file runs its CPU cases as a script in a subprocess with the
# variable set, and prints their errors as one JSON line that the tests read.


def case_results(cases: dict[str, Callable[[], dict[str, float]]]) -> dict[str, object]:
    """Every case's result; a case that raises gets {"exception": its traceback}, which its test reports."""
    results: dict[str, object] = {}
    for name, case in cases.items():
        torch.manual_seed(0)
        try:
            results[name] = case()
        except Exception as e:  # noqa: BLE001 - reported to (and failed by) the test of this case
            results[name] = {"exception": "".join(traceback.format_exception(e))[-3000:]}
    return results


def print_results(results: dict[str, object]) -> None:
    print("RESULTS " + json.dumps(results))


def interpreted_results(script: str, timeout: int) -> dict:
    """Run ``script`` on the CPU under TRITON_INTERPRET=1 and return what it passed to :func:`print_results`."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"interpreter subprocess failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULTS "):])
