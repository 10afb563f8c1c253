"""The language model: forward/backward, loss, roles, init, varlen, autocast, compile, architecture configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_specs import tiny_spec
from pydantic import ValidationError

from archscale.models.api import SeqInfo
from archscale.models.archs import TransformerConfig, transformer
from archscale.models.lm import LanguageModel, LMOutput, build_model
from archscale.registry import architectures


def test_forward_backward_and_loss() -> None:
    model = build_model(tiny_spec())
    x = torch.randint(0, 512, (3, 20))
    targets = torch.randint(0, 512, (3, 20))
    targets[0, :5] = -100
    out = model(x, targets=targets, return_logits=True)
    assert isinstance(out, LMOutput) and out.state is None
    assert out.logits.shape == (3, 20, 512) and out.logits.dtype == torch.float32
    keep = targets != -100
    manual = F.cross_entropy(out.logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model(x).loss is None


def test_overfits_a_batch() -> None:
    model = build_model(tiny_spec())
    x = torch.randint(0, 512, (4, 32))
    targets = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(x, SeqInfo.dense(4, 32), targets=targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(512), rel=0.05)  # SP init: near-uniform predictions
    assert losses[-1] < 0.5 * losses[0]


def test_seq_on_another_device_is_named() -> None:
    model = build_model(tiny_spec())
    x = torch.randint(0, 512, (2, 8))
    with pytest.raises(ValueError, match=r"seq is on meta but input_ids are on cpu.*seq\.to\(input_ids\.device\)"):
        model(x, SeqInfo.dense(2, 8, device="meta"))


@pytest.mark.parametrize("tied", [False, True])
def test_param_roles_cover_every_parameter_once(tied: bool) -> None:
    model = build_model(tiny_spec(tie_embeddings=tied))
    roles = model.param_roles()
    names = [n for n, _ in model.named_parameters()]
    assert sorted(roles) == sorted(names) and len(names) == len(set(names))
    assert roles["embed.weight"] == "embedding"
    assert ("head.weight" in roles) == (not tied)
    assert list(roles.values()).count("head") == (0 if tied else 1)
    for name, p in model.named_parameters():
        assert (roles[name] == "matrix") == (p.ndim == 2 and name not in ("embed.weight", "head.weight"))
    assert model.output_projections() == {
        f"blocks.{i}.{p}" for i in range(2) for p in ("mixer.o_proj.weight", "mlp.down_proj.weight")
    }


def test_tied_head_is_the_embedding() -> None:
    model = build_model(tiny_spec(tie_embeddings=True))
    assert model.head is None
    x = torch.randint(0, 512, (1, 5))
    with torch.no_grad():
        model.embed.weight[:, 0] += 1.0
    hidden = {}
    model.final_norm.register_forward_hook(lambda m, i, o: hidden.update(h=o))
    logits = model(x).logits
    torch.testing.assert_close(logits, hidden["h"] @ model.embed.weight.T)


def test_init_stds() -> None:
    spec = tiny_spec(depth=4, n_embd=128, n_head=4, head_dim=32, n_kv_head=2, vocab_size=1024)
    model = build_model(spec)
    out_std = 0.02 / math.sqrt(2 * 4)
    outputs = model.output_projections()
    for name, p in model.named_parameters():
        role = model.param_roles()[name]
        if role == "vector":
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        expected = out_std if name in outputs else 0.02
        assert p.mean().abs().item() < 3 * expected / math.sqrt(p.numel()) + 1e-6, name
        assert p.std().item() == pytest.approx(expected, rel=0.05), name


def test_custom_init_rule() -> None:
    model = build_model(tiny_spec())
    seen = []

    def rule(name: str, p: torch.nn.Parameter, role: str, is_out: bool) -> None:
        seen.append((name, role, is_out))
        if role == "matrix":
            torch.nn.init.zeros_(p)

    model.reset_parameters(rule)
    assert len(seen) == len(list(model.parameters()))
    assert ("blocks.0.mixer.o_proj.weight", "matrix", True) in seen
    assert torch.count_nonzero(model.blocks[1].mlp.up_proj.weight) == 0


def test_varlen_equals_documents_alone() -> None:
    model = build_model(tiny_spec()).double()
    lengths = [7, 1, 12, 4]
    x = torch.randint(0, 512, (1, sum(lengths)))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    packed = model(x, SeqInfo.from_cu_seqlens(cu)).logits
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(packed[:, a:b], model(x[:, a:b]).logits, rtol=1e-10, atol=1e-10)


def test_state_continuation_model() -> None:
    model = build_model(tiny_spec())
    x = torch.randint(0, 512, (2, 24))
    full = model(x).logits
    first = model(x[:, :10], use_cache=True)
    assert first.state is not None and len(first.state) == 2
    second = model(x[:, 10:], SeqInfo.dense(2, 14, offset=10), state=first.state)
    torch.testing.assert_close(torch.cat((first.logits, second.logits), 1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="offset"):
        model(x[:, 10:], state=first.state)


def test_multipliers() -> None:
    spec = tiny_spec()
    base = build_model(spec)
    x = torch.randint(0, 512, (1, 8))
    scaled = LanguageModel(spec.model_copy(update={"logit_multiplier": 2.5}))
    scaled.load_state_dict(base.state_dict())
    torch.testing.assert_close(scaled(x).logits, 2.5 * base(x).logits)
    for update in ({"residual_multiplier": 0.5}, {"attn_scale": 0.01}):
        other = LanguageModel(spec.model_copy(update=update))
        other.load_state_dict(base.state_dict())
        assert not torch.allclose(other(x).logits, base(x).logits)
    assert scaled.blocks[0].mixer.scale == 0.25  # 1/√16 by default
    assert LanguageModel(spec.model_copy(update={"attn_scale": 0.01})).blocks[0].mixer.scale == 0.01


def test_autocast_keeps_fp32_residual() -> None:
    model = build_model(tiny_spec())
    dtypes = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: dtypes.append((o[0].dtype, m.mixer.q_proj(i[0]).dtype)))
    x = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, targets=x, return_logits=True)
    assert dtypes == [(torch.float32, torch.bfloat16)] * 2  # residual fp32 while matmuls run in bf16
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


def test_compile_fullgraph() -> None:
    # aot_eager traces forward and backward through dynamo/AOTAutograd without a C++ build; fullgraph=True fails
    # on any graph break in the dense path.
    model = build_model(tiny_spec())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randint(0, 512, (2, 16))
    loss = compiled(x, SeqInfo.dense(2, 16), targets=x).loss
    loss.backward()
    torch.testing.assert_close(loss, model(x, targets=x).loss)


def test_meta_build() -> None:
    model = build_model(transformer(TransformerConfig(depth=16)), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 973_146_112 + 2 * 32000 * 2048


def test_transformer_sizing() -> None:
    spec = transformer(TransformerConfig(depth=8))
    assert (spec.n_embd, spec.mlp_hidden, spec.vocab_size, spec.n_layers) == (1024, 4096, 32000, 8)
    assert spec.layers[0].params == {"n_head": 8, "n_kv_head": 2, "head_dim": 128}
    assert not spec.tie_embeddings and spec.rope_base == 10000.0 and spec.norm_eps == 1e-5
    assert architectures.get("transformer") is transformer
    assert architectures.config_model("transformer") is TransformerConfig
    small = TransformerConfig(depth=2, n_embd=64, n_head=4)
    assert small.dims() == {"n_embd": 64, "n_head": 4, "head_dim": 16, "n_kv_head": 1, "mlp_hidden": 256}
    assert TransformerConfig(depth=3).dims()["n_kv_head"] == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(depth=0), "depth"),
        (dict(depth=16, n_kv_head=3), "n_kv_head"),
        (dict(depth=2, n_embd=100, n_head=3), "head_dim"),
        (dict(depth=2, n_head=2, n_kv_head=4), "n_kv_head"),
        (dict(depth=2, head_dim=15), "head_dim"),
        (dict(depth=2, widht=3), "widht"),
    ],
)
def test_bad_transformer_config(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TransformerConfig(**kwargs)


@pytest.mark.slow
def test_compile_inductor_autocast_and_varlen() -> None:
    # The real compiler (C++ codegen on CPU, ~1 min): dense under bf16 autocast, then the varlen (masked) path.
    model = build_model(tiny_spec())
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(x, SeqInfo.dense(2, 16), targets=x).loss
        expected = model(x, targets=x).loss
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)
    seq = SeqInfo.from_cu_seqlens(torch.tensor([0, 5, 16], dtype=torch.int32))
    loss = compiled(x[:1], seq, targets=x[:1]).loss
    torch.testing.assert_close(loss, model(x[:1], seq, targets=x[:1]).loss, rtol=1e-4, atol=1e-4)
