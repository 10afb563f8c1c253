"""Fused linear cross-entropy vs the naive reference: loss, cross-entropy, gradients of hidden and weight (random
upstream gradient), ignored rows, z-loss, logit multiplier, awkward N/V/chunk sizes, all targets ignored, autocast,
torch.compile(fullgraph) of a model, the language model's loss (tied and untied) and the recipe's loss section.
The Triton row kernel runs on CPU in a subprocess under TRITON_INTERPRET=1; CUDA tests are marked ``gpu``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from kernel_helpers import rel_err
from pydantic import ValidationError
from torch.utils._python_dispatch import TorchDispatchMode

from archscale.kernels.cross_entropy import (
    CrossEntropyOutput,
    auto_chunk_size,
    cross_entropy_reference,
    linear_cross_entropy,
)
from archscale.kernels.cross_entropy.chunked import chunked_linear_cross_entropy
from archscale.models.archs import TransformerConfig, transformer
from archscale.models.lm import build_model
from archscale.models.spec import LMSpec


def make_inputs(
    n: int, v: int, d: int, dtype: torch.dtype = torch.float64, device: str = "cpu", ignore_every: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden = torch.randn(n, d, dtype=dtype, device=device)
    weight = torch.randn(v, d, dtype=dtype, device=device) / math.sqrt(d) * 3  # logits of O(3): a peaked softmax
    targets = torch.randint(0, v, (n,), device=device)
    if ignore_every:
        targets[1::ignore_every] = -100
    return hidden, weight, targets


def run(fn, hidden, weight, targets, upstream: float = 0.73, **kw) -> dict[str, torch.Tensor]:
    """Loss, cross-entropy and the gradients of ``upstream · loss`` w.r.t. fresh leaf copies of hidden and weight."""
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    out = fn(h, w, targets, **kw)
    assert isinstance(out, CrossEntropyOutput)
    (out.loss * upstream).backward()
    return {"loss": out.loss.detach(), "ce": out.cross_entropy.detach(), "grad_hidden": h.grad, "grad_weight": w.grad}


def assert_close_by_name(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float) -> None:
    for name, expected in want.items():
        assert got[name] is not None and torch.isfinite(got[name]).all(), f"{name}: missing or not finite"
        assert expected.abs().sum() > 0, f"{name} is zero: the comparison would be vacuous"
        err = rel_err(got[name], expected)
        assert err < tol, f"{name}: relative error {err:.3g} >= {tol}"


# (N, V, d, chunk): one token; N a multiple of the chunk; N not divisible; chunk > N; odd vocabularies.
SIZES = [(1, 7, 3, 1), (37, 53, 16, 8), (64, 130, 8, 64), (63, 257, 12, 100), (100, 31, 5, 7)]


@pytest.mark.parametrize(("n", "v", "d", "chunk"), SIZES)
@pytest.mark.parametrize(("z_loss", "multiplier"), [(0.0, 1.0), (1e-2, 0.37)])
def test_matches_reference_float64(n: int, v: int, d: int, chunk: int, z_loss: float, multiplier: float) -> None:
    hidden, weight, targets = make_inputs(n, v, d)
    kw = {"z_loss": z_loss, "logit_multiplier": multiplier}
    got = run(linear_cross_entropy, hidden, weight, targets, chunk_size=chunk, **kw)
    want = run(cross_entropy_reference, hidden, weight, targets, **kw)
    assert got["loss"].dtype == torch.float64
    assert_close_by_name(got, want, 1e-10)
    ignored = targets == -100
    assert (got["grad_hidden"][ignored] == 0).all()  # an ignored token gets no gradient at all


def test_matches_reference_float32() -> None:
    hidden, weight, targets = make_inputs(203, 1001, 24, dtype=torch.float32)
    kw = {"z_loss": 1e-3, "logit_multiplier": 1.7}
    got = run(linear_cross_entropy, hidden, weight, targets, chunk_size=64, **kw)
    want = run(cross_entropy_reference, hidden, weight, targets, **kw)
    assert got["loss"].dtype == torch.float32 and got["grad_weight"].dtype == torch.float32
    assert_close_by_name(got, want, 2e-5)


def test_chunk_size_does_not_change_the_result() -> None:
    hidden, weight, targets = make_inputs(50, 40, 6)
    results = [run(linear_cross_entropy, hidden, weight, targets, chunk_size=c) for c in (1, 3, 16, 50, 1000, None)]
    for other in results[1:]:
        assert_close_by_name(other, results[0], 1e-12)


def test_z_loss_is_palm_formula() -> None:
    """loss - cross_entropy = z · mean over kept tokens of logsumexp², computed here from explicit logits."""
    hidden, weight, targets = make_inputs(29, 45, 8)
    z, m = 0.05, 0.8
    out = linear_cross_entropy(hidden, weight, targets, z_loss=z, logit_multiplier=m, chunk_size=4)
    keep = targets != -100
    logits = m * hidden[keep] @ weight.t()
    ce = F.cross_entropy(logits, targets[keep])
    torch.testing.assert_close(out.cross_entropy, ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, ce + z * torch.logsumexp(logits, -1).square().mean(), rtol=1e-12, atol=1e-12)
    # The z-loss has its own gradient: with z > 0 the gradients differ from the plain cross-entropy's.
    plain = run(linear_cross_entropy, hidden, weight, targets, logit_multiplier=m)
    with_z = run(linear_cross_entropy, hidden, weight, targets, logit_multiplier=m, z_loss=z)
    assert rel_err(with_z["grad_weight"], plain["grad_weight"]) > 1e-3


def test_sum_reduction() -> None:
    hidden, weight, targets = make_inputs(40, 33, 7)
    got = run(linear_cross_entropy, hidden, weight, targets, chunk_size=9, reduction="sum", z_loss=1e-2)
    want = run(cross_entropy_reference, hidden, weight, targets, reduction="sum", z_loss=1e-2)
    assert_close_by_name(got, want, 1e-10)
    mean = linear_cross_entropy(hidden, weight, targets, z_loss=1e-2).loss
    torch.testing.assert_close(got["loss"], mean * (targets != -100).sum())


@pytest.mark.parametrize("fn", [linear_cross_entropy, cross_entropy_reference])
def test_all_targets_ignored_give_zero_not_nan(fn) -> None:
    # F.cross_entropy returns NaN (0/0) here; a fully padded micro-batch must add nothing instead.
    hidden, weight, _ = make_inputs(10, 20, 4)
    targets = torch.full((10,), -100)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out = fn(h, w, targets, z_loss=1e-3)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.cross_entropy.item() == 0.0
    assert (h.grad == 0).all() and (w.grad == 0).all()


def test_no_tokens_give_zero_gradients() -> None:
    """N = 0: no chunk runs, so nothing initialises the weight gradient's buffer from a product; it must be zero."""
    weight = torch.randn(7, 4, dtype=torch.float64)
    got = run(linear_cross_entropy, torch.randn(0, 4, dtype=torch.float64), weight, torch.zeros(0, dtype=torch.long))
    assert got["loss"] == 0 and got["grad_hidden"].shape == (0, 4)
    assert torch.equal(got["grad_weight"], torch.zeros_like(weight))


def test_custom_ignore_index() -> None:
    hidden, weight, targets = make_inputs(30, 25, 4, ignore_every=0)
    targets[::4] = 7  # class 7 is the padding id here
    got = run(linear_cross_entropy, hidden, weight, targets, ignore_index=7, chunk_size=6)
    want = run(cross_entropy_reference, hidden, weight, targets, ignore_index=7)
    assert_close_by_name(got, want, 1e-10)


def test_without_grad_only_computes_the_loss() -> None:
    hidden, weight, targets = make_inputs(21, 30, 5)
    with torch.no_grad():
        out = linear_cross_entropy(hidden.requires_grad_(True), weight, targets, chunk_size=4)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, cross_entropy_reference(hidden, weight, targets).loss.detach())
    frozen = linear_cross_entropy(hidden.detach(), weight, targets)  # nothing requires grad
    assert not frozen.loss.requires_grad
    torch.testing.assert_close(frozen.loss, out.loss)


def test_readable_errors() -> None:
    hidden, weight, targets = make_inputs(6, 9, 4)
    with pytest.raises(ValueError, match="same d"):
        linear_cross_entropy(hidden, weight[:, :3], targets)
    with pytest.raises(ValueError, match="flatten"):
        linear_cross_entropy(hidden[None], weight, targets)
    with pytest.raises(ValueError, match=r"targets must have shape \(6,\)"):
        linear_cross_entropy(hidden, weight, targets[:5])
    with pytest.raises(ValueError, match="z_loss must be >= 0"):
        linear_cross_entropy(hidden, weight, targets, z_loss=-1.0)
    with pytest.raises(ValueError, match="reduction must be"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        linear_cross_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="impl='torch' for float64"):
        linear_cross_entropy(hidden, weight, targets, impl="triton")


@pytest.mark.parametrize("grad", [True, False])
def test_flop_counter_sees_the_naive_matmul_flops(grad: bool) -> None:
    """FlopCounterMode (MFU) counts the fused op like the naive head: 2NVd forward, +4NVd with gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    hidden, weight, targets = make_inputs(12, 17, 5, dtype=torch.float32)
    for fn in (linear_cross_entropy, cross_entropy_reference):
        h, w = hidden.clone().requires_grad_(grad), weight.clone().requires_grad_(grad)
        with FlopCounterMode(display=False) as counter:
            loss = fn(h, w, targets).loss
            if grad:
                loss.backward()
        assert counter.get_total_flops() == (6 if grad else 2) * 12 * 17 * 5, fn.__name__


def test_auto_chunk_size() -> None:
    """512 tokens per byte of the weight gradient's element, independent of d (see auto_chunk_size)."""
    assert auto_chunk_size(torch.bfloat16) == auto_chunk_size(torch.float16) == 1024
    assert auto_chunk_size(torch.float32) == 2048


def test_bf16_weights_accumulate_in_bf16_within_a_bounded_error() -> None:
    """16-bit weights: the weight gradient is summed in bf16 (rounded once per chunk, 32 chunks here), with no
    float32 (V, d) buffer; its error against float64 stays within a small factor of the naive bf16 path's."""
    hidden, weight, targets = make_inputs(512, 600, 64, dtype=torch.float64)
    exact = run(cross_entropy_reference, hidden, weight, targets, z_loss=1e-3)
    low = hidden.bfloat16(), weight.bfloat16()
    naive = run(cross_entropy_reference, *low, targets, z_loss=1e-3)
    created: list[tuple[torch.dtype, int]] = []

    class RecordOutputs(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            created.extend((t.dtype, t.numel()) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with RecordOutputs():  # the implementation itself: the mode does not see inside the custom op
        chunked_linear_cross_entropy(*low, targets, ignore_index=-100, z_loss=1e-3, logit_multiplier=1.0,
                                     chunk_size=16, compute_dtype=torch.bfloat16, mean=True, with_grad=True,
                                     use_triton=False)
    assert (torch.bfloat16, weight.numel()) in created, "the recording missed the weight gradient"
    assert (torch.float32, weight.numel()) not in created, "a float32 weight-sized accumulator was allocated"
    got = run(linear_cross_entropy, *low, targets, z_loss=1e-3, chunk_size=16)
    assert got["grad_weight"].dtype == torch.bfloat16
    for name in ("grad_weight", "grad_hidden"):
        err, naive_err = rel_err(got[name], exact[name]), rel_err(naive[name], exact[name])
        assert 0 < err < 1e-2, (name, err)
        assert err < 2 * naive_err, (name, err, naive_err)


def test_bf16_autocast_on_cpu() -> None:
    """Under autocast the matmuls run in bf16 (as F.linear would) and the gradients keep the inputs' float32."""
    hidden, weight, targets = make_inputs(70, 300, 32, dtype=torch.float32)
    exact = run(cross_entropy_reference, hidden, weight, targets, z_loss=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(linear_cross_entropy, hidden, weight, targets, z_loss=1e-3, chunk_size=16)
        naive = run(cross_entropy_reference, hidden, weight, targets, z_loss=1e-3)
    assert got["grad_hidden"].dtype == torch.float32 and got["grad_weight"].dtype == torch.float32
    assert_close_by_name(got, naive, 2e-2)
    assert_close_by_name(got, exact, 2e-2)
    assert rel_err(got["grad_weight"], exact["grad_weight"]) > 1e-6  # the matmuls really ran in bf16


# ---------------------------------------------------------------------------------------- the language model
def tiny_lm_spec(tied: bool, **update: object) -> LMSpec:
    spec = transformer(TransformerConfig(depth=1, n_embd=32, n_head=2, head_dim=16, n_kv_head=1, vocab_size=97,
                                         block_size=64, tie_embeddings=tied))
    return spec.model_copy(update=update)


def lm_loss_and_grads(spec: LMSpec, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    model = build_model(spec).double()
    out = model(x, targets=targets)
    assert out.logits is None or spec.loss_impl == "naive"
    out.loss.backward()
    return out.loss.detach(), out.ce_loss, *(p.grad for _, p in sorted(model.named_parameters()))


@pytest.mark.parametrize("tied", [False, True])
def test_language_model_fused_equals_naive(tied: bool) -> None:
    """Same weights, same batch: the fused and naive losses agree, and so does every parameter's gradient
    (with tied embeddings the head's gradient adds to the embedding's)."""
    x = torch.randint(0, 97, (2, 13))
    targets = torch.randint(0, 97, (2, 13))
    targets[0, :4] = -100
    common = {"z_loss": 1e-2, "logit_multiplier": 0.6}
    fused = lm_loss_and_grads(tiny_lm_spec(tied, loss_impl="fused", loss_chunk_size=5, **common), x, targets)
    naive = lm_loss_and_grads(tiny_lm_spec(tied, loss_impl="naive", **common), x, targets)
    assert len(fused) == len(naive)
    for i, (a, b) in enumerate(zip(fused, naive)):
        assert b.abs().sum() > 0, i
        # The naive path's logits are float32 (LMOutput's contract), the fused path computes in float64.
        assert rel_err(a, b) < 1e-5, f"output {i}: relative error {rel_err(a, b):.3g}"
    assert fused[0] > fused[1]  # loss includes the z-loss, ce_loss does not


def test_language_model_return_logits() -> None:
    model = build_model(tiny_lm_spec(False))
    x = torch.randint(0, 97, (2, 9))
    plain = model(x, targets=x)
    both = model(x, targets=x, return_logits=True)
    assert plain.logits is None and both.logits.shape == (2, 9, 97)
    torch.testing.assert_close(plain.loss, both.loss)
    torch.testing.assert_close(both.loss, F.cross_entropy(both.logits.flatten(0, 1), x.flatten()))
    assert model(x).logits is not None and model(x).loss is None


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_fullgraph_matches_eager(backend: str) -> None:
    """The whole model under torch.compile(fullgraph=True): no graph break, same loss and gradients as the eager
    naive path (the fused op is one opaque custom op with a registered backward). aot_eager runs dynamo and
    AOTAutograd (where a custom op could break) in seconds; inductor takes ~30 s on 2 CPU cores."""
    torch.manual_seed(0)
    model = build_model(tiny_lm_spec(True, z_loss=1e-3, loss_chunk_size=7))
    naive = build_model(tiny_lm_spec(True, z_loss=1e-3, loss_impl="naive"))
    naive.load_state_dict(model.state_dict())
    x = torch.randint(0, 97, (2, 12))
    targets = torch.roll(x, -1, 1)
    targets[:, -1] = -100
    explanation = torch._dynamo.explain(model)(x, targets=targets)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss = compiled(x, targets=targets).loss
    loss.backward()
    expected = naive(x, targets=targets).loss
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    grads = dict(naive.named_parameters())
    for name, p in model.named_parameters():
        assert rel_err(p.grad, grads[name].grad) < 1e-4, name


# ---------------------------------------------------------------------------------------- the recipe
def test_recipe_loss_section_round_trip() -> None:
    from archscale.recipe import Recipe, apply_overrides, build_recipe
    from archscale.scaling.parametrization import build_model_for, model_spec_for

    model = {"name": "transformer", "params": {"depth": 1, "n_embd": 32, "vocab_size": 64, "block_size": 16}}
    recipe = Recipe(model=model, budget={"steps": 1}, loss={"z_loss": 1e-4, "impl": "naive", "chunk_size": 128})
    again = build_recipe(recipe.model_dump(mode="json"))
    assert again.loss == recipe.loss and again.loss.z_loss == 1e-4
    spec = model_spec_for(again)
    assert (spec.z_loss, spec.loss_impl, spec.loss_chunk_size) == (1e-4, "naive", 128)
    assert build_model_for(again).spec.z_loss == 1e-4
    changed = apply_overrides(recipe, ["loss.z_loss=0.001", "loss.impl=fused"])
    assert (changed.loss.z_loss, changed.loss.impl) == (1e-3, "fused")
    default = Recipe(model=model, budget={"steps": 1})
    assert (default.loss.z_loss, default.loss.impl, default.loss.chunk_size) == (0.0, "fused", None)
    for bad, field in (({"z_los": 1e-4}, "z_los"), ({"impl": "liger"}, "impl"), ({"z_loss": -1.0}, "z_loss"),
                       ({"chunk_size": 0}, "chunk_size")):
        with pytest.raises(ValidationError, match=field):
            Recipe(model=model, budget={"steps": 1}, loss=bad)


# ---------------------------------------------------------------------------------------- Triton (interpreted)
_INTERPRETED_SCRIPT = textwrap.dedent(
    """
    import torch
    from archscale.kernels.cross_entropy import linear_cross_entropy, cross_entropy_reference
    from archscale.kernels.cross_entropy.chunked import rows_torch
    from archscale.kernels.cross_entropy.triton import rows_triton

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm())

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        logits = (torch.randn(11, 300) * 3).to(dtype)
        targets = torch.randint(0, 300, (11,))
        targets[2] = -100
        targets[5] = 299  # the last column, in the partial last block
        scale = torch.tensor(0.25)
        outs = []
        for fn, kw in ((rows_triton, {"block": 64}), (rows_torch, {})):
            ce, lse = torch.full((11,), float("nan")), torch.full((11,), float("nan"))
            grad = fn(logits.clone(), targets, ce, lse, scale, ignore_index=-100, logit_multiplier=0.7,
                      z_loss=0.01, with_grad=True, **kw)
            outs.append((ce, lse, grad))
        for name, a, b in zip(("ce", "lse", "grad"), *outs):
            assert torch.isfinite(a).all(), name
            assert rel(a, b) < tol, (dtype, name, rel(a, b))
        assert (outs[0][2][2] == 0).all()

    hidden = torch.randn(37, 16)
    weight = torch.randn(130, 16) / 2
    targets = torch.randint(0, 130, (37,))
    targets[::4] = -100
    got, want = [], []
    for fn, kw, acc in ((linear_cross_entropy, {"impl": "triton", "chunk_size": 8}, got),
                        (cross_entropy_reference, {}, want)):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = fn(h, w, targets, z_loss=1e-3, logit_multiplier=1.3, **kw)
        out.loss.backward()
        acc.extend([out.loss.detach(), out.cross_entropy.detach(), h.grad, w.grad])
    errors = [rel(a, b) for a, b in zip(got, want)]
    assert max(errors) < 1e-5, errors

    # float32 weights under 16-bit autocast: the Triton products round the head's tiles themselves (no copy of
    # the head); same rounding as the torch path's copy, so only the order of float32 sums differs. fp16, since
    # the interpreter multiplies bf16 tiles wrongly (tests/kernels/test_cast_matmul.py).
    import archscale.kernels.cross_entropy.cast_matmul as cm
    calls = []
    original = cm.cast_matmul
    cm.cast_matmul = lambda *a, **k: calls.append(k["dot_dtype"]) or original(*a, **k)
    results = []
    for impl in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.float16):
            out = linear_cross_entropy(h, w, targets, z_loss=1e-3, impl=impl, chunk_size=8)
        out.loss.backward()
        results.append([out.loss.detach(), h.grad, w.grad])
    assert calls == [torch.float16] * 10, calls  # 5 chunks, two products each, only on the Triton path
    errors16 = [rel(a, b) for a, b in zip(*results)]
    assert max(errors16) < 2e-3, errors16

    # bf16, which the interpreter cannot multiply: the Triton path keeps its row kernel and copies the head.
    calls.clear()
    results = []
    for impl in ("triton", "torch"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear_cross_entropy(h, w, targets, impl=impl, chunk_size=8)
        out.loss.backward()
        results.append([out.loss.detach(), h.grad, w.grad])
    assert calls == [], calls
    errors_bf16 = [rel(a, b) for a, b in zip(*results)]
    assert max(errors_bf16) < 1e-2, errors_bf16
    try:
        original(hidden, weight.t(), torch.empty(37, 130), dot_dtype=torch.bfloat16)
    except ValueError as e:
        assert "interpreter multiplies bfloat16 tiles wrongly" in str(e), e
    else:
        raise AssertionError("cast_matmul accepted bf16 under the interpreter")
    print("OK", errors, errors16, errors_bf16)
    """
)


def test_triton_kernel_interpreted_on_cpu() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_cuda_bf16_autocast_vs_fp32_naive(impl: str) -> None:
    hidden, weight, targets = make_inputs(1000, 32003, 256, dtype=torch.float32, device="cuda", ignore_every=7)
    exact = run(cross_entropy_reference, hidden, weight, targets, z_loss=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = run(linear_cross_entropy, hidden, weight, targets, z_loss=1e-4, chunk_size=384, impl=impl)
    assert got["grad_weight"].dtype == torch.float32
    assert_close_by_name(got, exact, 2e-2)
    assert (got["grad_hidden"][targets == -100] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_triton_rows_match_torch_rows(dtype: torch.dtype) -> None:
    from archscale.kernels.cross_entropy.chunked import rows_torch
    from archscale.kernels.cross_entropy.triton import rows_triton

    logits = (torch.randn(257, 50001, device="cuda") * 4).to(dtype)
    targets = torch.randint(0, 50001, (257,), device="cuda")
    targets[::5] = -100
    targets[3] = 50000
    scale = torch.tensor(1 / 200, device="cuda")
    outs = []
    for fn in (rows_triton, rows_torch):
        ce = torch.full((257,), float("nan"), device="cuda")
        lse = torch.full((257,), float("nan"), device="cuda")
        grad = fn(logits.clone(), targets, ce, lse, scale, ignore_index=-100, logit_multiplier=0.5, z_loss=1e-3,
                  with_grad=True)
        outs.append({"ce": ce, "lse": lse, "grad": grad})
    assert_close_by_name(outs[0], outs[1], 1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
def test_cuda_compiled_model_matches_eager_naive() -> None:
    torch.manual_seed(0)
    spec = transformer(TransformerConfig(depth=2, n_embd=128, n_head=4, head_dim=32, n_kv_head=2,
                                         vocab_size=50257, block_size=256, tie_embeddings=True))
    model = build_model(spec.model_copy(update={"z_loss": 1e-4}), device="cuda")
    naive = build_model(spec.model_copy(update={"z_loss": 1e-4, "loss_impl": "naive"}), device="cuda")
    naive.load_state_dict(model.state_dict())
    x = torch.randint(0, 50257, (4, 255), device="cuda")
    targets = torch.roll(x, -1, 1)
    targets[:, -1] = -100
    compiled = torch.compile(model, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(x, targets=targets).loss
        expected = naive(x, targets=targets).loss
    loss.backward()
    expected.backward()
    assert abs(loss.item() - expected.item()) < 1e-2 * expected.item()
    grads = dict(naive.named_parameters())
    for name, p in model.named_parameters():
        assert rel_err(p.grad, grads[name].grad) < 3e-2, name


@pytest.mark.gpu
def test_cuda_fused_uses_a_fraction_of_the_naive_memory() -> None:
    hidden, weight, targets = make_inputs(8192, 32000, 512, dtype=torch.float32, device="cuda")
    peaks = {}
    for name, fn in (("naive", cross_entropy_reference), ("fused", linear_cross_entropy)):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fn(h, w, targets).loss.backward()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    assert peaks["fused"] < 0.25 * peaks["naive"], peaks


@pytest.mark.gpu
def test_cuda_compiled_bf16_weights_hold_one_chunk_of_logits_beyond_the_gradients() -> None:
    """Compiled, 16-bit weights: beyond the inputs and the two returned gradients the fused loss holds one chunk
    of logits (plus cuBLAS workspace), with no weight-sized accumulator and no copy in the backward."""
    n, v, d, chunk = 8192, 32000, 512, 1024
    hidden, weight, targets = make_inputs(n, v, d, dtype=torch.bfloat16, device="cuda")
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    loss_fn = torch.compile(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=chunk).loss, fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # compile, then fill cuBLAS' workspace outside the measurement
            h.grad = w.grad = None
            loss_fn(h, w, targets).backward()
    # The import probe is cached with functools.cache; traced by dynamo it would warn (it runs inside the op now).
    assert not [m for m in caught if "lru_cache" in str(m.message)]
    h.grad = w.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss_fn(h, w, targets).backward()
    torch.cuda.synchronize()
    grads = sum(g.numel() * g.element_size() for g in (h.grad, w.grad))
    beyond = torch.cuda.max_memory_allocated() - base - grads
    logits_chunk = chunk * v * 2
    assert beyond <= 1.1 * logits_chunk + 2**22, (beyond / logits_chunk, beyond)


@pytest.mark.gpu
def test_cuda_compiled_fp32_weights_under_autocast_hold_no_copy_of_the_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiled, float32 weights under bf16 autocast (the Trainer's setting), with the in-product rounding on: the
    products round the head's tiles on chip, so beyond the gradients the loss holds one chunk of logits, not also
    a bf16 (V, d) copy of the head (which at these sizes would be 1.0 chunk more)."""
    import archscale.kernels.cross_entropy as ce_module

    monkeypatch.setattr(ce_module, "CAST_IN_PRODUCT_ON_CUDA", True)
    n, v, d, chunk = 8192, 32000, 1024, 1024
    hidden, weight, targets = make_inputs(n, v, d, dtype=torch.float32, device="cuda")
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)

    def loss_fn(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return linear_cross_entropy(h, w, t, chunk_size=chunk).loss

    compiled = torch.compile(loss_fn, fullgraph=True)
    for _ in range(2):
        h.grad = w.grad = None
        compiled(h, w, targets).backward()
    h.grad = w.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = compiled(h, w, targets)
    loss.backward()
    torch.cuda.synchronize()
    grads = sum(g.numel() * g.element_size() for g in (h.grad, w.grad))
    beyond = torch.cuda.max_memory_allocated() - base - grads
    logits_chunk = chunk * v * 2
    assert beyond <= 1.1 * logits_chunk + 2**22, (beyond / logits_chunk, beyond)
    exact = run(cross_entropy_reference, hidden.detach(), weight.detach(), targets, upstream=1.0)
    assert abs(loss.item() - exact["loss"].item()) < 1e-2 * exact["loss"].item()
    assert rel_err(w.grad, exact["grad_weight"]) < 2e-2 and rel_err(h.grad, exact["grad_hidden"]) < 2e-2
