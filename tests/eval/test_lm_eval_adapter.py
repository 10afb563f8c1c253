"""The lm-eval adapter scores exactly like lm-eval's own Hugging Face model (HFLM) on a Llama imported from
transformers: per example, on local multiple-choice, rolling-perplexity and generation tasks (offline)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from eval_helpers import local_tasks, make_llama_dir, train_tokenizer

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from archscale.data.tokenizers import load_tokenizer

    d = tmp_path_factory.mktemp("llama")
    vocab = load_tokenizer(train_tokenizer(d)).vocab_size
    return make_llama_dir(d, vocab)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return local_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def ours(llama_dir: Path, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    from archscale.eval.lm_eval_model import ArchscaleLM, evaluate

    return evaluate(ArchscaleLM(str(llama_dir), batch_size=3, device="cpu"), tasks, log_samples=True)


def _responses(results: dict[str, Any], task: str) -> list[Any]:
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_per_example_equal_to_hflm(llama_dir: Path, tasks: list[dict[str, Any]], ours: dict[str, Any]) -> None:
    pytest.importorskip("accelerate")  # lm-eval's HFLM imports it
    import lm_eval
    from lm_eval.tasks import TaskManager

    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={llama_dir},dtype=float32,device=cpu", tasks=tasks, batch_size=2,
        task_manager=TaskManager(include_defaults=False), log_samples=True,
    )
    for task in ("tiny_mc", "tiny_ppl"):
        a, b = _responses(ours, task), _responses(theirs, task)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):  # one list of responses per choice (mc) or per document (rolling)
            for x, y in zip(ra, rb):
                x, y = x[0], y[0]
                if isinstance(x, (tuple, list)):  # (logprob, is_greedy)
                    assert x[1] == y[1]
                    x, y = x[0], y[0]
                assert math.isfinite(x) and x < 0
                assert x == pytest.approx(y, rel=1e-5, abs=1e-4), (task, x, y)
    assert _responses(ours, "tiny_gen") == _responses(theirs, "tiny_gen")
    for task in ("tiny_mc", "tiny_ppl", "tiny_gen"):
        metric = next(k for k in ours["results"][task] if "," in k and "stderr" not in k)
        assert ours["results"][task][metric] == pytest.approx(theirs["results"][task][metric], rel=1e-5)


def test_rolling_spans_several_windows(llama_dir: Path, ours: dict[str, Any]) -> None:
    """The long document really is scored in several windows (the equality above would be weak otherwise), and
    the sum of its windows equals the log-likelihood of the whole text computed directly."""
    from archscale.data.tokenizers import load_tokenizer
    from archscale.eval.lm_eval_model import ArchscaleLM

    lm = ArchscaleLM(str(llama_dir), device="cpu")
    doc = sorted(ours["samples"]["tiny_ppl"], key=lambda s: s["doc_id"])[1]
    text = doc["arguments"][0][0] if isinstance(doc["arguments"][0], (list, tuple)) else doc["arguments"][0]
    ids = load_tokenizer(llama_dir / "tokenizer.json").encode(text)
    assert len(ids) > 2 * lm.max_length
    # Direct computation: windows of max_length predicted tokens; the first after EOS, each later one from a
    # full window of inputs ending just before its last token (the last, partial, window has a longer context).
    total, model, L = 0.0, lm.model, lm.max_length
    with torch.no_grad():
        for start in range(0, len(ids), L):
            window = ids[start : start + L]
            end = start + len(window)
            inp = [lm.eot_token_id] + window[:-1] if start == 0 else ids[end - L - 1 : end - 1]
            logp = model(torch.tensor([inp])).logits.log_softmax(-1)[0, -len(window) :]
            total += float(logp.gather(-1, torch.tensor(window)[:, None]).sum())
    assert _responses(ours, "tiny_ppl")[1][0][0] == pytest.approx(total, rel=1e-5)


def test_in_memory_model_and_registry(llama_dir: Path) -> None:
    from lm_eval.api import registry

    from archscale.data.tokenizers import load_tokenizer
    from archscale.eval.lm_eval_model import ArchscaleLM
    from archscale.models.hf import import_llama

    assert registry.get_model("archscale") is ArchscaleLM
    model, tok = import_llama(llama_dir), load_tokenizer(llama_dir / "tokenizer.json")
    lm = ArchscaleLM(model=model, tokenizer=tok, max_length=16, batch_size=2)
    assert lm.max_length == 16 and lm.eot_token_id == tok.eos_id
    with pytest.raises(ValueError, match="either pretrained"):
        ArchscaleLM()
    with pytest.raises(ValueError, match="needs its tokenizer"):
        ArchscaleLM(model=model)
    with pytest.raises(TypeError, match="unknown model_args.*bogus"):
        ArchscaleLM(model=model, tokenizer=tok, bogus=1)
    # Batching and right padding change nothing: scores of a batch of 3 equal scores one at a time.
    reqs = [(None, [0, 5, 9, 11], [12, 7]), (None, [0, 3], [4]), (None, [0, 1, 2, 3, 4, 5, 6], [8, 9, 10])]
    batched = lm._loglikelihood_tokens(reqs)
    single = [ArchscaleLM(model=model, tokenizer=tok, max_length=16, batch_size=1)._loglikelihood_tokens([r])[0]
              for r in reqs]
    for (a, ga), (b, gb) in zip(batched, single):
        assert a == pytest.approx(b, rel=1e-5) and ga == gb
