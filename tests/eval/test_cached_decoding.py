"""Cached incremental decoding equals full recomputation for EVERY registered architecture family.

Prefill a prompt, then feed single tokens and small chunks with the carried per-layer state (KV caches,
window-bounded SWA caches, Mamba/GDN recurrent states, the YOCO cross-decoder's one shared K,V cache, the GMU
memory): the logits must equal one full forward (fp32). The sequence is longer than the sliding windows and spans
several recurrent chunks, so the window trimming and the chunked scans' state hand-off are both exercised.
A family registered later (a plugin, a new hybrid) is enrolled automatically with generic tiny sizes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from archscale.eval.generate import sample
from archscale.models.api import SeqInfo
from archscale.models.lm import build_model
from archscale.registry import architectures

V = 96
TINY: dict[str, Any] = dict(n_embd=32, n_head=4, head_dim=8, n_kv_head=2, vocab_size=V, block_size=64, depth=4)
MAMBA = {"d_state": 4}
MAMBA2 = {"d_state": 8, "head_dim": 16, "chunk_size": 8}
GDN = {"head_dim": 8, "n_heads": 2, "chunk_size": 8}
OVERRIDES: dict[str, dict[str, Any]] = {  # families whose defaults are too big or that need a pattern
    "transformerls": dict(window=4),
    "samba": dict(window=6, recurrent_params=MAMBA),
    "sambay": dict(depth=8, window=4, recurrent_params=MAMBA),
    "sambayda": dict(depth=8, window=4, recurrent_params=MAMBA),
    "sambayoco": dict(depth=8, window=4, recurrent_params=MAMBA),
    "swayoco": dict(depth=8, window=4),
    "mambay": dict(depth=8, recurrent_params=MAMBA),
    "mambay2": dict(depth=8, recurrent_params=MAMBA2),
    "gdny": dict(depth=8, recurrent_params=GDN),
    "sgdny": dict(depth=8, window=4, recurrent_params=GDN),
    "phi4miniflash": dict(depth=8, window=4, recurrent_params=MAMBA),
    "pattern": dict(depth=13, pattern="(M S4)*2 M2 GDN M* dattn* (G dyoco)*2 yoco",
                    mixer_params={"mamba": MAMBA, "mamba2": MAMBA2, "gdn": GDN}),
}


def tiny_model(family: str) -> torch.nn.Module:
    fields = architectures.config_model(family).model_fields
    params = {k: v for k, v in {**TINY, **OVERRIDES.get(family, {})}.items() if k in fields}
    if "window" in fields and "window" not in params:
        params["window"] = 4
    spec = architectures.get(family)(architectures.config_model(family).model_validate(params))
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():  # larger than SP's 0.02 so that every layer visibly changes the logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.15)
    return model.eval()


@pytest.mark.parametrize("family", architectures.names())
def test_cached_decoding_equals_recomputation(family: str) -> None:
    model = tiny_model(family)
    x = torch.randint(0, V, (2, 21))
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :7], use_cache=True)  # batched prefill
        pieces, state, pos = [out.logits], out.state, 7
        for n in (1, 1, 3, 1, 5, 1, 2):  # token by token and chunks, crossing windows (4, 6) and chunks (8)
            step = model(x[:, pos : pos + n], SeqInfo.dense(2, n, offset=pos), state=state)
            pieces.append(step.logits)
            state, pos = step.state, pos + n
    assert pos == 21
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-4)
    # A sliding-window layer's cache never holds more than window - 1 keys: its memory stays bounded.
    for block, layer_state in zip(model.blocks, state):
        window = getattr(block.mixer, "window", None)
        if window is not None and isinstance(layer_state, tuple) and torch.is_tensor(layer_state[0]):
            assert layer_state[0].shape[2] <= window - 1, (family, layer_state[0].shape)


@pytest.mark.parametrize("family", architectures.names())
def test_greedy_sampling_cached_equals_uncached(family: str) -> None:
    model = tiny_model(family)
    x = torch.randint(0, V, (2, 5))
    cached = sample(model, x, 10, temperature=0.0)
    uncached = sample(model, x, 10, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 15)
    assert torch.equal(cached, uncached)
