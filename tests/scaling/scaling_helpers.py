"""Helpers for the scaling tests: small packed data with learnable structure and tiny recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from archscale.data.packed import PackedWriter
from archscale.recipe import Recipe

VOCAB = 64
EOS = 0


def write_counting_data(directory: Path, num_docs: int = 400, seed: int = 0) -> Path:
    """Documents counting upward from a random start (ids 1..63, mod 63), each ending in EOS."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with PackedWriter(directory, "train", chunk_size=2048, dtype=np.uint16, eos_id=EOS) as w:
        for _ in range(num_docs):
            length = int(rng.integers(8, 60))
            start = int(rng.integers(0, 63))
            w.write((np.arange(start, start + length) % 63 + 1).astype(np.uint16))
            w.write(np.array([EOS], dtype=np.uint16))
    return directory


def tiny_recipe(data_dir: Path, out_dir: Path, *, parametrization: str = "mup++", depth: int = 2,
                n_embd: int = 32, steps: int = 6, lr: float = 1e-2, **scaling: Any) -> Recipe:
    return Recipe(
        name="tiny-scaling",
        model={"name": "transformer", "params": {"depth": depth, "n_embd": n_embd, "n_head": n_embd // 16,
                                                 "head_dim": 16, "n_kv_head": 1, "vocab_size": VOCAB,
                                                 "block_size": 32}},
        data={"seq_len": 32, "sources": {str(data_dir): 1.0}, "eos_id": EOS, "val_fraction": 0.1},
        parametrization=parametrization,
        optimizer={"name": "adamw", "lr": lr},
        schedule={"name": "linear", "warmup_steps": 1},
        budget={"steps": steps, "global_batch_tokens": 128, "micro_batch_size": 4},
        scaling=scaling or {"base": {"depth": 2, "width": 32, "head_dim": 16}},
        system={"device": "cpu", "out_dir": str(out_dir), "log_every": 1, "val_every": steps, "val_batches": 1,
                "checkpoint_every": steps, "progress": False},
    )
