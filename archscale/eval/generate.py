"""Sampling from a :class:`~archscale.models.lm.LanguageModel` with cached (incremental) decoding.

The prompt is run once with ``use_cache=True`` (prefill); then each new token is fed alone with the carried
per-layer state (KV caches for attention, recurrent states for other mixers) and positions continuing from the
prompt, so decoding reuses the training forward. ``use_cache=False`` recomputes the whole sequence every step
(the reference the cached path is tested against).

Prompts of different lengths (:func:`generate_batch`) are grouped by token length and each group is decoded as one
batch. Left-padding, the usual trick for batching ragged prompts, is not valid here: a recurrent layer (Mamba, GDN)
would fold the pad tokens into its state, and a padded row's positions would start late. Equal-length groups keep
every row exact at the cost of smaller batches when lengths differ.

Stop sequences are strings: decoding of a row ends when its decoded continuation contains one, and the returned
text is cut before the first occurrence (lm-eval's ``until`` semantics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
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
    stop_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Continue each row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Returns (B, T + n) int64, the prompt followed by the n generated tokens. A row that emitted ``eos_id`` is
    padded with ``eos_id`` afterwards; generation stops early once every row has. ``temperature=0`` is greedy.
    ``stop_fn(new_tokens (B, n)) -> (B,) bool`` marks further rows as finished (e.g. a stop string was decoded);
    such rows are padded with ``eos_id`` when there is one, and decoding ends once every row is finished.
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
            if stop_fn is not None:
                done = done | stop_fn(tokens[:, T:]).to(device)
            if step == max_new_tokens - 1 or bool(done.all()):
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


def find_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest occurrence in ``text`` of any of the ``stop`` strings (None if none occurs)."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` cut before the earliest stop string (unchanged when none occurs)."""
    cut = find_stop(text, stop)
    return text if cut is None else text[:cut]


def _check_stop(stop: Sequence[str] | str) -> list[str]:
    if isinstance(stop, str):  # a bare string would otherwise be read as a list of one-character stops
        stop = [stop]
    stop = list(stop)
    if any(not isinstance(s, str) or s == "" for s in stop):
        raise ValueError(f"stop sequences must be non-empty strings, got {stop!r}")
    return stop


def generate_batch(
    model: LanguageModel,
    tokenizer: TextTokenizer,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    stop: Sequence[str] = (),
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """The continuation (text after the prompt) of each prompt, cut before the first stop string or EOS.

    ``prompts`` are strings or token-id lists (lm-eval passes already truncated ids). Prompts are grouped by token
    length and each group is decoded in batches of up to ``batch_size`` (see the module docstring for why not
    left-padding). An empty prompt starts from the EOS token. Sampling is reproducible for a given ``seed`` and
    prompt list.
    """
    stop = _check_stop(stop)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eos = tokenizer.eos_id
    encoded: list[list[int]] = []
    for p in prompts:
        ids = tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            if eos is None:
                raise ValueError("generate: a prompt encodes to no tokens and the tokenizer has no EOS to start from")
            ids = [eos]
        encoded.append(ids)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)

    def stop_fn(new: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B,)
        # Decoding the whole continuation each step: a stop string may span several tokens (and bytes).
        return torch.tensor([find_stop(tokenizer.decode(row), stop) is not None for row in new.tolist()])

    results: list[str] = [""] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for _, same_length in groupby(order, key=lambda i: len(encoded[i])):
        group = list(same_length)
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            ids = torch.tensor([encoded[i] for i in rows], dtype=torch.long, device=device)  # (b, T)
            out = sample(model, ids, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                         eos_id=eos, generator=generator, stop_fn=stop_fn if stop else None)
            for i, row in zip(rows, out[:, ids.shape[1] :].tolist()):
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                results[i] = truncate_at_stop(tokenizer.decode(row), stop)
    return results


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
    stop: Sequence[str] = (),
) -> list[str]:
    """``num_samples`` continuations of ``prompt``, each returned as prompt + continuation (up to the EOS token or
    the first of the ``stop`` strings, which is left out).

    An empty prompt starts from the EOS token (training data separates documents with EOS, so it marks a
    document start). Sampling is reproducible for a given ``seed``.
    """
    continuations = generate_batch(model, tokenizer, [prompt] * num_samples, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed,
                                   batch_size=max(num_samples, 1))
    head = tokenizer.decode(tokenizer.encode(prompt))
    return [head + c for c in continuations]
