"""Helpers for trainer tests: a small packed dataset with learnable structure, and tiny recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from archscale.data.packed import PackedWriter
from archscale.recipe import Recipe

VOCAB = 64
EOS = 0


def write_pattern_data(directory: Path, prefix: str = "train", num_docs: int = 400, seed: int = 0) -> Path:
    """Documents that count upward from a random start (mod 63, ids 1..63) and end in EOS: easy to learn, so a
    few steps of training visibly lower the loss."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with PackedWriter(directory, prefix, chunk_size=2048, dtype=np.uint16, eos_id=EOS) as w:
        for _ in range(num_docs):
            length = int(rng.integers(8, 60))
            start = int(rng.integers(0, 63))
            w.write((np.arange(start, start + length) % 63 + 1).astype(np.uint16))
            w.write(np.array([EOS], dtype=np.uint16))
    return directory


TINY_MODELS = {
    "transformer": {"depth": 2, "n_embd": 32, "n_head": 2, "head_dim": 16, "n_kv_head": 1, "vocab_size": VOCAB,
                    "block_size": 32},
    # SambaY at depth 4: Mamba, SWA, Mamba* (memory), full attention (shared K,V), GMU... with tiny widths.
    "sambay": {"depth": 4, "n_embd": 32, "n_head": 2, "head_dim": 16, "n_kv_head": 1, "vocab_size": VOCAB,
               "block_size": 32, "window": 8, "recurrent_params": {"d_state": 4}},
}


def tiny_recipe(data_dir: Path, out_dir: Path, arch: str = "transformer", **system: object) -> Recipe:
    return Recipe(
        name="tiny",
        model={"name": arch, "params": TINY_MODELS[arch]},
        data={"seq_len": 32, "sources": {str(data_dir): 1.0}, "eos_id": EOS, "val_fraction": 0.1},
        optimizer={"name": "adamw", "lr": 1e-2},
        schedule={"name": "linear", "warmup_steps": 2},
        budget={"steps": 12, "global_batch_tokens": 256, "micro_batch_size": 4},
        system={"device": "cpu", "out_dir": str(out_dir), "log_every": 1, "val_every": 4, "val_batches": 2,
                "checkpoint_every": 4, "progress": False, **system},
    )
