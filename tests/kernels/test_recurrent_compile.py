"""The recurrent mixers (Mamba-2, Gated DeltaNet) and their chunked scans under torch.compile with inductor (issue #8).

On torch 2.11 with CUDA, inductor failed on both chunked fast paths: the per-chunk ``torch.cumsum`` became a Triton
split scan whose codegen crashed on ``dt · A`` (``TypeError: list indices must be integers or slices, not
NoneType``), and the document layout's ``searchsorted(cu[1:], ...)`` became ``ops.bucketize`` on a slice
(``NotImplementedError: SliceView``). Inductor's C++ backend has neither scans nor bucketize (it falls back to ATen),
so a plain CPU compile never met them. Two checks here:

- the mixers compile with inductor on the CPU, dense and varlen, and match eager (outputs and gradients);
- the chunked scans go through inductor's *Triton* lowering and codegen (the CUDA path), forward and backward, on a
  machine without a GPU: a subprocess sets ``cpu_backend = "triton"``, the H100's SM count (the split heuristics
  read it) and the Triton interpreter, and the check is that both graphs are generated without an inductor error
  (the interpreter may then fail to *run* a kernel: that is the interpreter's limit, not ours). Skipped without
  Triton or where these inductor internals moved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from archscale.models.api import SeqInfo
from archscale.models.mixers.base import MixerContext
from archscale.registry import mixers

D_MODEL = 64
CU = (0, 5, 20, 21, 150, 301)  # five documents, one of a single token, starts inside and at chunk borders


def _mixer(name: str) -> torch.nn.Module:
    config = mixers.config_model(name).model_validate({})
    return mixers.get(name)(MixerContext(d_model=D_MODEL, layer_idx=0, n_layers=2), config)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dense", "varlen"])
@pytest.mark.parametrize("name", ["mamba2", "gdn"])
def test_mixer_compiles_with_inductor(name: str, layout: str) -> None:
    # T spans several chunks (Mamba-2: 256, GDN: 64), so the chunk-to-chunk state pass is exercised.
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    mixer = _mixer(name)
    if layout == "dense":
        B, T = 2, 301
        seq = SeqInfo.dense(B, T)
    else:
        B, T = 1, CU[-1]
        seq = SeqInfo.from_cu_seqlens(torch.tensor(CU, dtype=torch.int32))
    # One graph, dense and varlen: document bounds stay on the device in the short convolution and the scans.
    compiled = torch.compile(mixer, fullgraph=True, backend="inductor")
    x = torch.randn(B, T, D_MODEL)
    grad = torch.randn(B, T, D_MODEL)
    outs, grads = [], []
    for fn in (compiled, mixer):
        xi = x.clone().requires_grad_(True)
        mixer.zero_grad(set_to_none=True)
        y, _ = fn(xi, seq)
        y.backward(grad)
        outs.append(y.detach())
        grads.append([xi.grad, *(p.grad for p in mixer.parameters())])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    for a, b in zip(*grads):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


_TRITON_CODEGEN = textwrap.dedent(
    """
    import sys
    import torch

    generated = []
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        import torch._inductor.graph as inductor_graph
        import torch.utils._triton as torch_triton
        from torch._inductor.runtime import hints
        from triton.backends.compiler import GPUTarget

        assert hasattr(functorch_config, "force_non_lazy_backward_lowering")
        inductor_config.cpu_backend = "triton"  # CUDA's lowering and codegen, for CPU tensors
        functorch_config.force_non_lazy_backward_lowering = True  # generate the backward before running anything
        torch_triton.triton_backend = lambda: GPUTarget("cuda", 90, 32)  # no GPU driver to ask
        torch_triton.triton_hash_with_backend = lambda: "no-driver"
        create = hints.DeviceProperties.create.__func__
        hints.DeviceProperties.create = classmethod(  # an H100's 132 SMs: split scans / reductions decide on them
            lambda cls, d: create(cls, d)._replace(multi_processor_count=132, warp_size=32)
        )
        to_module = inductor_graph.GraphLowering.compile_to_module

        def compile_to_module(self, *a, **k):
            generated.append("backward" if self.is_backward else "forward")
            return to_module(self, *a, **k)

        inductor_graph.GraphLowering.compile_to_module = compile_to_module
    except (AttributeError, ImportError, AssertionError) as e:
        print("SKIP:", repr(e))
        sys.exit(0)

    from archscale.kernels.delta_rule import gated_delta_rule_chunked
    from archscale.kernels.ssd import ssd_chunked

    which, layout = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 20, 21, 300, 600], dtype=torch.int32) if layout == "varlen" else None
    B, T, H = (1 if cu is not None else 4), 600, 4
    if which == "ssd":  # 3 chunks of 256 over 4·3·4 rows: inductor would split the scan
        inp = dict(x=torch.randn(B, T, H, 8), dt=torch.rand(B, T, H), A=-torch.rand(H),
                   B=torch.randn(B, T, 1, 16), C=torch.randn(B, T, 1, 16))
        fn = lambda **kw: ssd_chunked(**kw, chunk_size=256, cu_seqlens=cu, return_final_state=True)
    else:
        k = torch.nn.functional.normalize(torch.randn(B, T, H, 16), dim=-1)
        inp = dict(q=torch.randn(B, T, H, 16), k=k, v=torch.randn(B, T, H, 32), g=-torch.rand(B, T, H),
                   beta=torch.rand(B, T, H))
        fn = lambda **kw: gated_delta_rule_chunked(**kw, chunk_size=64, cu_seqlens=cu, return_final_state=True)
    for t in inp.values():
        t.requires_grad_(True)
    try:
        y, final = torch.compile(fn, fullgraph=True)(**inp)
        (y.sum() + final.sum()).backward()
    except Exception as e:
        # Past codegen, the Triton interpreter may fail to run a kernel (libdevice calls): not an inductor error.
        if type(e).__name__ == "InductorError" or sorted(generated) != ["backward", "forward"]:
            raise
    print("generated:", sorted(generated))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["dense", "varlen"])
@pytest.mark.parametrize("which", ["ssd", "gdn"])
def test_chunked_scans_through_triton_codegen(which: str, layout: str) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _TRITON_CODEGEN, which, layout], env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    if proc.stdout.startswith("SKIP:"):
        pytest.skip(f"inductor internals this check patches moved: {proc.stdout.strip()}")
    assert "generated: ['backward', 'forward']" in proc.stdout
