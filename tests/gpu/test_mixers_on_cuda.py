"""On a CUDA device: every registered token mixer, run as training runs it (bf16 autocast over float32 weights,
eager and compiled, dense batches and packed documents), matches the same mixer in float64 on the CPU.

The kernel tests check each fast kernel against its reference; this checks the mixers that call them, with the
paths only the card takes: SDPA's cuDNN and FlexAttention dispatch, the Triton selective scan, the SSD and delta
rule fast paths, the float32 weight gradient of :class:`~archscale.models.linear.Linear`, the stacked q/k/v and
gate/up products. Every registered mixer enrols (a third-party mixer too), and the output, the input's gradient,
the gradient of every parameter and of the shared values it reads are compared.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))

from kernel_helpers import rel_err, split_cu  # type: ignore[import-not-found]  # noqa: E402

from archscale.models.api import CrossLayer, SeqInfo  # noqa: E402
from archscale.models.mixers.base import MixerContext  # noqa: E402
from archscale.registry import mixers  # noqa: E402

pytestmark = pytest.mark.gpu

D_MODEL = 128
DOCUMENTS = [100, 37, 119]  # awkward lengths, none a multiple of a kernel's tile, 256 tokens in all
BATCH, SEQ = 2, 256
# Relative error (Frobenius norm of the difference over the reference's) allowed for a bf16 forward and
# backward through a few products and a recurrence (bf16 autocast on the CPU gives up to 1.3e-2); float32 rounding
# alone would be ~1e-6. The gradient of a parameter of a few numbers (Mamba-2's per-head dt_bias: 4) is a sum over
# every token with cancellations, so its relative error is larger (3.6e-2 on the CPU): such small tensors get
# SMALL_TOLERANCE. A wrong document boundary or a dropped gradient term is off by O(1).
TOLERANCE = 3e-2
SMALL_TENSOR, SMALL_TOLERANCE = 64, 1e-1


def build_mixer(name: str) -> torch.nn.Module:
    """The mixer at D_MODEL in float64 on the CPU, matrices drawn N(0, 1/fan_in) so that no projection is zero."""
    cls = mixers.get(name)
    config = mixers.config_model(name).model_validate(cls.example_params(D_MODEL))
    torch.manual_seed(0)
    mixer = cls(MixerContext(d_model=D_MODEL, layer_idx=1, n_layers=4), config)
    with torch.no_grad():
        for p in mixer.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))
    return mixer.double()


def leaves_of(shared: CrossLayer | None) -> list[torch.Tensor]:
    if shared is None:
        return []
    return ([] if shared.memory is None else [shared.memory]) + ([] if shared.kv is None else list(shared.kv))


def with_leaves(shared: CrossLayer | None, leaves: list[torch.Tensor]) -> CrossLayer | None:
    """``shared`` with its tensors replaced, in order, by ``leaves``."""
    if shared is None:
        return None
    it = iter(leaves)
    memory = None if shared.memory is None else next(it)
    kv = None if shared.kv is None else tuple(next(it) for _ in shared.kv)
    return CrossLayer(memory=memory, kv=kv)


def run(mixer: torch.nn.Module, x: torch.Tensor, info: SeqInfo, shared: CrossLayer | None,
        grad_out: torch.Tensor, *, autocast: bool, compiled: bool) -> dict[str, torch.Tensor]:
    """Output and gradients (of x, of every parameter, of the shared values) as float64 CPU tensors."""
    device = x.device.type
    x = x.detach().requires_grad_(True)
    leaves = [t.detach().requires_grad_(True) for t in leaves_of(shared)]
    mixer.zero_grad(set_to_none=True)
    fn = torch.compile(mixer) if compiled else mixer
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        y, _ = fn(x, info, shared=with_leaves(shared, leaves))
    (y.float() * grad_out.to(y.device, torch.float32)).sum().backward()
    out = {"output": y, "grad x": x.grad}
    out.update({f"grad shared[{i}]": leaf.grad for i, leaf in enumerate(leaves)})
    out.update({f"grad {n}": p.grad for n, p in mixer.named_parameters()})
    return {k: v.detach().double().cpu() for k, v in out.items() if v is not None}


def relative_errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    assert got.keys() == want.keys(), f"gradients missing on one side: {set(got) ^ set(want)}"
    return {k: rel_err(got[k], ref) for k, ref in want.items()}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("layout", ["dense", "documents"])
@pytest.mark.parametrize("name", mixers.names())
def test_mixer_on_cuda_matches_float64_cpu(name: str, layout: str, compiled: bool) -> None:
    reference = build_mixer(name)
    on_card = build_mixer(name).float().cuda()
    gen = torch.Generator().manual_seed(1)
    if layout == "dense":
        batch, seq = BATCH, SEQ
        info = SeqInfo.dense(batch, seq)
    else:
        batch, seq = 1, sum(DOCUMENTS)
        info = SeqInfo.from_cu_seqlens(split_cu(DOCUMENTS))
    x = torch.randn(batch, seq, D_MODEL, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(batch, seq, D_MODEL, generator=gen, dtype=torch.float64)
    shared = type(reference).example_shared(reference.ctx, reference.config, batch, seq, generator=gen,
                                            dtype=torch.float64)
    want = run(reference, x, info, shared, grad_out, autocast=False, compiled=False)
    shared_card = with_leaves(shared, [t.float().cuda() for t in leaves_of(shared)])
    got = run(on_card, x.float().cuda(), info.to("cuda"), shared_card, grad_out, autocast=True, compiled=compiled)
    errors = relative_errors(got, want)
    table = ", ".join(f"{k} {e:.1e}" for k, e in sorted(errors.items(), key=lambda kv: -kv[1]))
    print(f"{name} {layout} {'compiled' if compiled else 'eager'}: {table}")  # shown with -s: the margins
    over = {k: e for k, e in errors.items()
            if e > (SMALL_TOLERANCE if want[k].numel() < SMALL_TENSOR else TOLERANCE)}
    assert not over, f"{name} ({layout}): off by more than the tolerance: {over}; all: {table}"
