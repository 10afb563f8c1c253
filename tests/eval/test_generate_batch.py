"""Batched generation of prompts of different lengths, stop sequences, and `archscale generate --stop`."""

from __future__ import annotations

import pytest
import torch

from archscale.eval.generate import (
    find_stop,
    generate_batch,
    generate_text,
    sample,
    truncate_at_stop,
)
from archscale.models.archs import TransformerConfig, transformer
from archscale.models.lm import build_model


class _CharTokenizer:
    """Characters as tokens over a 64-symbol alphabet, id 0 as EOS."""

    eos_id = 0
    ALPHABET = "\0abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?\n0123456789"[:64]

    def encode(self, text: str) -> list[int]:
        return [self.ALPHABET.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.ALPHABET[i] for i in ids)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(transformer(TransformerConfig(depth=2, n_embd=32, n_head=2, head_dim=16, n_kv_head=1,
                                                  vocab_size=64, block_size=64)))
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    return m.eval()


def test_find_and_truncate() -> None:
    assert find_stop("abc.def\n", [".", "\n"]) == 3
    assert find_stop("abc", ["x"]) is None
    assert truncate_at_stop("one two. three", [". ", "two"]) == "one "
    assert truncate_at_stop("nothing", ["z"]) == "nothing"


def test_ragged_batch_equals_one_by_one(model: torch.nn.Module) -> None:
    """Prompts of different lengths batched together give exactly what each gives alone (no padding leaks)."""
    tok = _CharTokenizer()
    prompts = ["the cat", "a", "the dog", "hello world", "", "b"]
    together = generate_batch(model, tok, prompts, max_new_tokens=8, temperature=0.0, batch_size=4)
    alone = [generate_batch(model, tok, [p], max_new_tokens=8, temperature=0.0)[0] for p in prompts]
    assert together == alone
    assert any(len(t) >= 4 for t in together)  # the model produced something to compare
    ids = [tok.encode("the cat"), [3, 4]]  # token ids are accepted too
    assert generate_batch(model, tok, ids, max_new_tokens=8, temperature=0.0)[0] == together[0]


def test_stop_sequences_cut_and_end_early(model: torch.nn.Module) -> None:
    tok = _CharTokenizer()
    full = generate_batch(model, tok, ["the cat", "hello"], max_new_tokens=16, temperature=0.0)
    stop = full[0][2:4]  # a string the first continuation contains
    cut = generate_batch(model, tok, ["the cat", "hello"], max_new_tokens=16, temperature=0.0, stop=[stop])
    assert cut[0] == full[0][: full[0].index(stop)] and stop not in cut[0]
    assert cut[1] == truncate_at_stop(full[1], [stop])
    # Decoding ends as soon as every row has hit a stop string.
    calls = []
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = counting  # type: ignore[method-assign]
    try:
        generate_batch(model, tok, ["the cat"], max_new_tokens=16, temperature=0.0, stop=[full[0][1]])
    finally:
        del model.forward
    assert len(calls) <= 3  # prefill + at most two decode steps, not 16
    with pytest.raises(ValueError, match="non-empty strings"):
        generate_batch(model, tok, ["a"], stop=[""])


def test_generate_text_with_stop_and_sampling(model: torch.nn.Module) -> None:
    tok = _CharTokenizer()
    texts = generate_text(model, tok, "the", max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3, num_samples=3,
                          stop=["\n"])
    assert len(texts) == 3 and all(t.startswith("the") and "\n" not in t for t in texts)
    assert texts == generate_text(model, tok, "the", max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3,
                                  num_samples=3, stop=["\n"])


def test_stop_fn_in_sample(model: torch.nn.Module) -> None:
    x = torch.randint(1, 64, (3, 4))
    out = sample(model, x, 10, temperature=0.0, stop_fn=lambda new: torch.ones(new.shape[0], dtype=torch.bool))
    assert out.shape == (3, 5)  # every row finished after its first token
