"""lm-evaluation-harness adapter: an archscale model as the lm-eval model ``archscale``.

    lm_eval --model archscale --model_args pretrained=runs/d4,batch_size=8 --tasks lambada_openai
    archscale eval lm-eval runs/d4 --tasks lambada_openai,arc_easy      # the same, results to JSON

Importing this module registers the model (lm-eval's registry has no entry-point discovery); ``archscale eval``
imports it for you. ``ArchscaleLM(model=..., tokenizer=...)`` wraps a model in memory (pass the instance to
``lm_eval.simple_evaluate(model=...)``).

Scoring follows lm-eval's own Hugging Face model (``HFLM``) token for token, so that numbers are comparable
(tests/eval/test_lm_eval_adapter.py checks per-example equality on a Llama imported from transformers):
- loglikelihood: the context and continuation are encoded together and split (``TemplateLM._encode_pair``); the
  input is the last ``max_length + 1`` tokens minus the final one; the continuation's log-probabilities are summed
  and ``is_greedy`` says whether argmax decoding reproduces it. An empty context conditions on EOS.
- loglikelihood_rolling: disjoint windows of ``max_length`` tokens, each predicted after an EOS or the previous
  token (``lm_eval.utils.get_rolling_token_windows`` with context_len 1).
- generate_until: the context is left-truncated to ``max_length - max_gen_toks``; decoding stops at the ``until``
  strings, EOS, or ``max_gen_toks``.

Batches for scoring are right-padded: in a causal model (attention or a recurrent scan alike) a token never sees
later ones, so padding after a row's last token changes none of its logits. Generation groups prompts by length
(see :mod:`archscale.eval.generate`). ``max_length`` defaults to the training context (``spec.block_size``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    import lm_eval.api.registry as _registry
    import lm_eval.models  # noqa: F401  (0.4.13: registers the built-in models; importing later would not)
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"the lm-eval adapter needs lm-evaluation-harness ({exc}): pip install 'archscale[eval]'"
    ) from exc

from archscale.eval.generate import generate_batch

MODEL_NAME = "archscale"

Request = tuple[Any, list[int], list[int]]  # (key, context ids, continuation ids)


class ArchscaleLM(TemplateLM):
    """An archscale :class:`~archscale.models.lm.LanguageModel` behind lm-eval's model interface."""

    def __init__(
        self,
        pretrained: str | Path | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        checkpoint: str | Path | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        **unused: Any,
    ) -> None:
        """``pretrained``: a run directory, a checkpoint file or a Llama directory
        (:func:`archscale.eval.loading.load_model_and_tokenizer`); or ``model`` and ``tokenizer`` in memory.
        ``dtype``: "float32", or "bfloat16" / "float16" for autocast on CUDA."""
        super().__init__()
        unused.pop("max_batch_size", None)  # passed by simple_evaluate; batches here have a fixed size
        if unused:
            raise TypeError(f"ArchscaleLM: unknown model_args {sorted(unused)}; known: pretrained, checkpoint, "
                            "batch_size, max_length, device, dtype")
        if (pretrained is None) == (model is None):
            raise ValueError("ArchscaleLM: pass either pretrained=PATH or model=... with tokenizer=...")
        if model is None:
            from archscale.eval.loading import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(pretrained, checkpoint=checkpoint, device=device)  # type: ignore[arg-type]
        elif tokenizer is None:
            raise ValueError("ArchscaleLM: a model passed in memory needs its tokenizer (tokenizer=...)")
        elif device is not None:
            model = model.to(device)
        if tokenizer.eos_id is None:
            raise ValueError(f"ArchscaleLM: tokenizer {tokenizer!r} has no EOS token, which lm-eval needs as prefix")
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"ArchscaleLM: batch_size must be >= 1, got {batch_size}")
        self._max_length = int(max_length) if max_length is not None else int(model.spec.block_size)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"ArchscaleLM: dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.dtype = dtype

    # ------------------------------------------------------------------ what TemplateLM needs
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # archscale tokenizers never add special tokens, matching HFLM's default for causal models.
        return list(self.tok.encode(string))

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tok.decode(list(tokens))

    # ------------------------------------------------------------------ scoring
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == "float32" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, self.dtype))

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding gives the continuation, per request."""
        prepared = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("loglikelihood: the continuation encodes to no tokens")
            inp = (list(context) + list(continuation))[-(self.max_length + 1) :][:-1]
            # A continuation longer than the window is scored on the tokens the window can predict.
            prepared.append((inp, list(continuation)[-len(inp) :]))
        results: list[tuple[float, bool] | None] = [None] * len(prepared)
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))  # similar lengths per batch
        for rows in _chunks(order, self.batch_size):
            lengths = [len(prepared[i][0]) for i in rows]
            batch = torch.zeros(len(rows), max(lengths), dtype=torch.long)  # right padding (any id would do)
            for b, i in enumerate(rows):
                batch[b, : lengths[b]] = torch.tensor(prepared[i][0])
            with self._autocast():
                logits = self.model(batch.to(self.device)).logits  # (b, T, V) float32
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for b, i in enumerate(rows):
                cont = prepared[i][1]
                n, end = len(cont), lengths[b]
                lp = logprobs[b, end - n : end]  # (n, V): the positions that predict the continuation
                target = torch.tensor(cont, device=lp.device)
                greedy = bool((lp.argmax(dim=-1) == target).all())
                results[i] = (float(lp.gather(-1, target[:, None]).sum()), greedy)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each whole text, scored in disjoint windows of ``max_length`` tokens."""
        windows: list[Request] = []
        owner: list[int] = []
        for r, req in enumerate(requests):
            (text,) = req.args
            for context, pred in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, pred))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[r] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) continuations, cut at the ``until`` strings."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.pop("max_gen_toks", 256))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 1.0 if do_sample else 0.0))
            top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
            top_k = kwargs.pop("top_k", None)
            if not do_sample:
                temperature = 0.0
            budget = max(self.max_length - max_gen, 1)
            prompts = [self.tok_encode(requests[i].args[0])[-budget:] for i in indices]
            texts = generate_batch(self.model, self.tok, prompts, max_new_tokens=max_gen, temperature=temperature,
                                   top_p=top_p, top_k=None if top_k is None else int(top_k), stop=until,
                                   batch_size=self.batch_size)
            for i, text in zip(indices, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def register() -> None:
    """Register :class:`ArchscaleLM` as lm-eval's ``archscale`` model (idempotent)."""
    if MODEL_NAME not in _registry.MODEL_REGISTRY:
        _registry.register_model(MODEL_NAME)(ArchscaleLM)


register()


def evaluate(
    lm: ArchscaleLM,
    tasks: Sequence[str | dict[str, Any]],
    *,
    num_fewshot: int | None = None,
    limit: float | None = None,
    include_path: str | None = None,
    log_samples: bool = False,
    seed: int = 1234,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks`` (names, or task configs as dicts) with ``lm``; its results dict.

    ``include_path``: a directory of extra task YAML files. Built-in tasks are indexed only when a task is named
    by string and no ``include_path`` covers it (indexing all of lm-eval's tasks takes seconds)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    only_dicts = all(isinstance(t, dict) for t in tasks)
    manager = TaskManager(include_path=include_path, include_defaults=not only_dicts)
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
        log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
