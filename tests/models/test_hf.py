"""Interop with transformers' LlamaForCausalLM: import, export, round trip (fp32, CPU, tiny random models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_specs import tiny_spec

from archscale.models.hf import export_llama, import_llama
from archscale.models.lm import build_model

transformers = pytest.importorskip("transformers")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny_llama(tied: bool) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=tied,
        max_position_embeddings=256, attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF inits norms to 1; randomise them too so that a swapped norm cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [False, True])
def test_import_matches_transformers(tied: bool) -> None:
    hf = tiny_llama(tied)
    ours = import_llama(hf)
    assert ours.spec.tie_embeddings == tied and ours.spec.rope_base == 5000.0 and ours.spec.norm_eps == 1e-6
    assert ours.spec.vocab_size == 257 and ours.spec.mlp_hidden == 96 and ours.spec.block_size == 256
    x = torch.randint(0, 257, (2, 33))
    with torch.no_grad():
        expected = hf(x).logits
        got = ours(x).logits
    assert rel_err(got, expected) < 1e-4
    # Imported weights are copies, never views of the HF tensors.
    assert ours.embed.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("tied", [False, True])
def test_export_loads_in_transformers(tied: bool, tmp_path: Path) -> None:
    ours = build_model(tiny_spec(tie_embeddings=tied, vocab_size=257)).eval()
    with torch.no_grad():
        for block in ours.blocks:
            block.mixer_norm.weight.uniform_(0.5, 1.5)
    export_llama(ours, tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert hf.config.tie_word_embeddings == tied and hf.config.num_key_value_heads == 2
    x = torch.randint(0, 257, (2, 29))
    with torch.no_grad():
        assert rel_err(ours(x).logits, hf(x).logits) < 1e-4
    # Round trip: directory -> ours gives identical weights.
    back = import_llama(tmp_path)
    assert back.spec == ours.spec
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_export_folds_multipliers(tmp_path: Path) -> None:
    spec = tiny_spec(vocab_size=257).model_copy(
        update={"logit_multiplier": 0.7, "residual_multiplier": 0.4, "attn_scale": 0.11}
    )
    ours = build_model(spec).eval()
    export_llama(ours, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = torch.randint(0, 257, (1, 21))
    with torch.no_grad():
        assert rel_err(ours(x).logits, hf(x).logits) < 1e-4


def test_export_rejects_windows(tmp_path: Path) -> None:
    spec = tiny_spec()
    layers = [layer.model_copy(update={"params": {**layer.params, "window": 4}}) for layer in spec.layers]
    model = build_model(spec.model_copy(update={"layers": layers}))
    with pytest.raises(ValueError, match="window"):
        export_llama(model, tmp_path)
