"""Sampling from a :class:`~archscale.models.lm.LanguageModel` with cached (incremental) decoding.

The prompt is run once with ``use_cache=True`` (prefill); then each new token is fed alone with the carried
per-layer state (KV caches for attention, recurrent states for other mixers) and positions continuing from the
prompt, so decoding reuses the training forward. ``use_cache=False`` recomputes the whole sequence every step
(the reference the cached path is tested against).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from archscale.models.api import SeqInfo
from archscale.models.lm import LanguageModel


class TextTokenizer(Protocol):
    """What :func:`generate_text` needs of a tokenizer (``archscale.data.tokenizers.Tokenizer`` provides it)."""

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row (ties at the threshold kept), the rest -inf."""
    k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens whose probability reaches top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach top_p; the most likely token is always kept.
    drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V): greedy when temperature == 0, else sample. Returns (B,)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = _filter_top_k(logits, top_k)
    if top_p < 1.0:
        logits = _filter_top_p(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample(
    model: LanguageModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue each row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Returns (B, T + n) int64, the prompt followed by the n generated tokens. A row that emitted ``eos_id`` is
    padded with ``eos_id`` afterwards; generation stops early once every row has. ``temperature=0`` is greedy.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    was_training = model.training
    model.eval()
    try:
        B, T = input_ids.shape
        device = input_ids.device
        tokens = input_ids
        done = torch.zeros(B, dtype=torch.bool, device=device)
        state = None
        if max_new_tokens <= 0:
            return tokens
        out = model(tokens, SeqInfo.dense(B, T, device=device), use_cache=use_cache)
        for step in range(max_new_tokens):
            assert out.logits is not None
            nxt = next_token(out.logits[:, -1], temperature=temperature, top_p=top_p, top_k=top_k,
                             generator=generator)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done = done | (nxt == eos_id)
            tokens = torch.cat((tokens, nxt[:, None]), dim=1)  # (B, T + step + 1)
            if step == max_new_tokens - 1 or (eos_id is not None and bool(done.all())):
                break
            if use_cache:
                state = out.state
                seq = SeqInfo.dense(B, 1, device=device, offset=tokens.shape[1] - 1)
                out = model(nxt[:, None], seq, state=state)
            else:
                out = model(tokens)
        return tokens
    finally:
        model.train(was_training)


def generate_text(
    model: LanguageModel,
    tokenizer: TextTokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    num_samples: int = 1,
) -> list[str]:
    """``num_samples`` continuations of ``prompt``, each decoded as prompt + continuation (up to the EOS token).

    An empty prompt starts from the EOS token (training data separates documents with EOS, so it marks a
    document start). Sampling is reproducible for a given ``seed``.
    """
    ids = tokenizer.encode(prompt)
    eos = tokenizer.eos_id
    if not ids:
        if eos is None:
            raise ValueError("generate_text: the prompt encodes to no tokens and the tokenizer has no EOS to start")
        ids = [eos]
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)  # (num_samples, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = sample(model, prompt_ids, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                 eos_id=eos, generator=generator)
    texts = []
    for row in out.tolist():
        new = row[len(ids):]
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        start = 1 if prompt == "" else 0  # drop the EOS that stood in for an empty prompt
        texts.append(tokenizer.decode(row[start : len(ids)] + new))
    return texts
