"""Every registered family as a tiny model: it trains, decodes with its cache exactly, respects documents, and
compiles without graph breaks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from archscale.models.api import SeqInfo
from archscale.models.lm import build_model
from archscale.models.spec import LMSpec
from archscale.registry import architectures

V = 96
TINY: dict[str, Any] = dict(n_embd=32, n_head=4, head_dim=8, n_kv_head=2, vocab_size=V, block_size=64)
RECURRENT = {  # small state sizes and chunks, so that a 24-token sequence spans several chunks
    "mamba": {"d_state": 4},
    "mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 8},
    "gdn": {"head_dim": 8, "n_heads": 2, "chunk_size": 8},
}
FAMILIES: dict[str, dict[str, Any]] = {
    "transformer": dict(depth=4),
    "transformerls": dict(depth=4, window=4),
    "samba": dict(depth=4, window=6, recurrent_params=RECURRENT["mamba"]),
    "sambay": dict(depth=8, window=4, recurrent_params=RECURRENT["mamba"]),
    "sambayda": dict(depth=8, window=4, recurrent_params=RECURRENT["mamba"]),
    "sambayoco": dict(depth=8, window=4, recurrent_params=RECURRENT["mamba"]),
    "swayoco": dict(depth=8, window=4),
    "mambay": dict(depth=8, recurrent_params=RECURRENT["mamba"]),
    "mambay2": dict(depth=8, recurrent_params=RECURRENT["mamba2"]),
    "gdny": dict(depth=8, recurrent_params=RECURRENT["gdn"]),
    "sgdny": dict(depth=8, window=4, recurrent_params=RECURRENT["gdn"]),
    "phi4miniflash": dict(depth=8, window=4, recurrent_params=RECURRENT["mamba"]),
    "pattern": dict(pattern="(M S4)*2 M* dattn* (G dyoco)*2 yoco", mixer_params={"mamba": RECURRENT["mamba"]}),
}
YOCO = ["sambay", "sambayda", "sambayoco", "swayoco", "mambay", "mambay2", "gdny", "sgdny", "phi4miniflash",
        "pattern"]


def tiny_spec(family: str) -> LMSpec:
    params = {**TINY, **FAMILIES[family]}
    return architectures.get(family)(architectures.config_model(family).model_validate(params))


def tiny_model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny_spec(family)).to(dtype)
    # Larger than SP's 0.02 so that every layer visibly matters in the comparisons below.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.15)
    return model


def test_every_family_is_covered() -> None:
    assert set(FAMILIES) == set(architectures.names())


@pytest.mark.parametrize("family", FAMILIES)
def test_trains(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_spec(family))
    x = torch.randint(0, V, (2, 20))
    targets = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(x, SeqInfo.dense(2, 20), targets=targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.75 * losses[0], losses


@pytest.mark.parametrize("family", YOCO)
def test_cached_decoding_equals_recomputation(family: str) -> None:
    """Prefill, then tokens one by one and a chunk, with every layer's state (F's KV cache is the cross-decoder's
    only cache; X and G layers keep none): the logits equal a full forward."""
    model = tiny_model(family)
    model.eval()
    x = torch.randint(0, V, (2, 17))
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :9], use_cache=True)
        pieces, state, pos = [out.logits], out.state, 9
        for n in (1, 3, 4):
            step = model(x[:, pos : pos + n], SeqInfo.dense(2, n, offset=pos), state=state)
            pieces.append(step.logits)
            state, pos = step.state, pos + n
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-4)
    # The cross-decoder keeps exactly one KV cache: the F layer's, holding every token.
    layers = model.spec.layers
    f = next(i for i, layer in enumerate(layers) if layer.params.get("share_kv"))
    assert state[f][0].shape[2] == 17
    assert all(state[i] is None for i in range(f + 1, len(layers)))
    assert {layer.mixer for layer in layers[f + 1 :]} <= {"gmu", "yoco_cross"}


@pytest.mark.parametrize(("family", "module", "kernel"), [
    ("mambay", "mamba", "selective_scan"), ("mambay2", "mamba2", "ssd"), ("gdny", "gated_deltanet", "gated_delta_rule"),
])
def test_final_state_only_when_the_caller_keeps_it(
    family: str, module: str, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training drops the mixers' states, so the recurrent kernels are not asked for a final state (whose zero
    gradient would select a slower scan backward); prefill with ``use_cache`` and continuing from a state are."""
    import importlib

    mod = importlib.import_module(f"archscale.models.mixers.{module}")
    real, asked = getattr(mod, kernel), []

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["return_final_state"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, kernel, spy)
    model = tiny_model(family)
    x = torch.randint(0, V, (2, 12))
    model(x, SeqInfo.dense(2, 12), targets=x).loss.backward()
    n = len(asked)
    assert n > 0 and asked == [False] * n
    state = model(x, use_cache=True).state
    assert asked[n:] == [True] * n
    model(x[:, :1], SeqInfo.dense(2, 1, offset=12), state=state)
    assert asked[2 * n:] == [True] * n


@pytest.mark.parametrize("family", ["sambay", "sambayda", "mambay2", "swayoco"])
def test_varlen_documents_are_isolated(family: str) -> None:
    model = tiny_model(family, torch.float64)
    lengths = [7, 1, 12]
    x = torch.randint(0, V, (1, sum(lengths)))
    cu = torch.tensor([0, 7, 8, 20], dtype=torch.int32)
    packed = model(x, SeqInfo.from_cu_seqlens(cu)).logits
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(packed[:, a:b], model(x[:, a:b]).logits, rtol=1e-9, atol=1e-9)


def test_memory_and_kv_reach_the_consumers() -> None:
    """The G and X layers really read what M* and F wrote in the same forward (zeroing them changes the output)."""
    model = tiny_model("sambay")
    x = torch.randint(0, V, (1, 10))
    base = model(x).logits
    h = model.spec.n_layers // 2
    for i, attr in ((h, "memory"), (h + 1, "kv")):
        mixer = model.blocks[i].mixer

        def zero_shared(module, args, kwargs, output, attr=attr):  # noqa: ANN001
            shared = kwargs["shared"]
            value = getattr(shared, attr)
            setattr(shared, attr, tuple(torch.zeros_like(v) for v in value) if attr == "kv" else value * 0)

        handle = mixer.register_forward_hook(zero_shared, with_kwargs=True)
        changed = model(x).logits
        handle.remove()
        assert not torch.allclose(changed[:, :, :], base), attr


def test_layernorm_and_biases_of_phi4() -> None:
    model = tiny_model("phi4miniflash")
    roles = model.param_roles()
    assert roles["final_norm.bias"] == "vector" and roles["blocks.0.mixer_norm.bias"] == "vector"
    assert isinstance(model.final_norm, torch.nn.LayerNorm) and model.head is None
    assert model.blocks[1].mixer.q_proj.bias is not None and model.blocks[1].mixer.k_proj.bias is None
    fresh = build_model(tiny_spec("phi4miniflash"))
    assert torch.count_nonzero(fresh.blocks[1].mixer.o_proj.bias) == 0  # biases start at zero
    assert torch.count_nonzero(fresh.blocks[0].mixer_norm.bias) == 0


def test_compile_fullgraph_with_shared_values() -> None:
    """The per-forward CrossLayer (written by M* and F, read by G and X) traces without graph breaks."""
    cfg = architectures.config_model("pattern").model_validate(
        {**TINY, "pattern": "M* dattn* G dyoco", "mixer_params": {"mamba": RECURRENT["mamba"]}}
    )
    model = build_model(architectures.get("pattern")(cfg))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randint(0, V, (2, 8))
    loss = compiled(x, SeqInfo.dense(2, 8), targets=x).loss
    loss.backward()
    torch.testing.assert_close(loss, model(x, targets=x).loss)


# Families whose CPU path reads document boundaries as Python ints: Mamba-1's reference scan walks the documents one
# by one (archscale.kernels.varlen.doc_bounds), a data-dependent loop that torch.compile cannot trace. On CUDA the
# scan is one opaque custom op instead (tests/gpu/test_models_on_cuda.py checks those families there).
MAMBA1 = {family for family in FAMILIES if any(layer.mixer == "mamba" for layer in tiny_spec(family).layers)}
# Document layouts of one packed row: the second makes dynamo treat the document count as dynamic, after which no
# layout may compile again.
DOCUMENT_LAYOUTS = [[24], [3, 10, 11], [1, 5, 2, 16], [10, 14]]


@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_whole_without_graph_breaks(family: str) -> None:
    """``torch.compile(fullgraph=True)`` (dynamo only: graph breaks are its business) of the whole model, forward
    and backward, equal to eager: on dense batches for every family; on packed documents, where the CPU paths
    allow it, without compiling again once the document count has turned dynamic (the steady state of training)."""
    model = tiny_model(family)
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (2, 24), generator=gen), SeqInfo.dense(2, 24))]
    if family not in MAMBA1:
        for lengths in DOCUMENT_LAYOUTS:
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
            batches.append((torch.randint(0, V, (1, 24), generator=gen), SeqInfo.from_cu_seqlens(cu)))
    frames = []
    for tokens, seq in batches:
        targets = torch.roll(tokens, -1, dims=1)
        model.zero_grad(set_to_none=True)
        loss = compiled(tokens, seq, targets=targets).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        expected = model(tokens, seq, targets=targets).loss
        expected.backward()
        torch.testing.assert_close(loss, expected)
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(grads[name], p.grad, msg=lambda m, name=name: f"{name}: {m}")
        frames.append(counter.frame_count)
    if family not in MAMBA1:
        assert frames[-1] == frames[2], f"compiled again after the document count turned dynamic: {frames}"
