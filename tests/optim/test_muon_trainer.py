"""``optimizer.name = "muon"`` through the Trainer: it trains, its checkpoints load with ``weights_only=True`` (via
Fabric), and a run interrupted after a checkpoint resumes to exactly the parameters of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from archscale.data.packed import PackedWriter
from archscale.recipe import Recipe
from archscale.train.checkpoint import latest_checkpoint
from archscale.train.trainer import Trainer

VOCAB, EOS = 64, 0


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Documents counting upward from a random start (ids 1..63), each ending in EOS: quickly learnable."""
    directory = tmp_path_factory.mktemp("counting")
    rng = np.random.default_rng(0)
    with PackedWriter(directory, "train", chunk_size=2048, dtype=np.uint16, eos_id=EOS) as w:
        for _ in range(300):
            start, length = int(rng.integers(0, 63)), int(rng.integers(8, 60))
            w.write((np.arange(start, start + length) % 63 + 1).astype(np.uint16))
            w.write(np.array([EOS], dtype=np.uint16))
    return directory


def recipe(data: Path, out: Path) -> Recipe:
    return Recipe(
        name="tiny_muon",
        model={"name": "transformer", "params": {"depth": 2, "n_embd": 32, "n_head": 2, "head_dim": 16,
                                                 "n_kv_head": 1, "vocab_size": VOCAB, "block_size": 32}},
        data={"seq_len": 32, "sources": {str(data): 1.0}, "eos_id": EOS, "val_fraction": 0.1},
        optimizer={"name": "muon", "lr": 1e-2, "params": {"ns_dtype": "float32"}},
        schedule={"name": "linear", "warmup_steps": 2},
        budget={"steps": 8, "global_batch_tokens": 256, "micro_batch_size": 4},
        system={"device": "cpu", "out_dir": str(out), "log_every": 1, "val_every": 8, "val_batches": 2,
                "checkpoint_every": 4, "keep_checkpoints": 3, "progress": False},
    )


class Interrupt(RuntimeError):
    pass


def test_trainer_with_muon_trains_and_resumes_exactly(counting_data: Path, tmp_path: Path) -> None:
    straight = Trainer(recipe(counting_data, tmp_path / "a"))
    straight.fit()
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").open()) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0  # 4.17 -> 2.80 when written

    interrupted = Trainer(recipe(counting_data, tmp_path / "b"))

    def stop(step: int) -> None:
        if step == 6:  # after the step-4 checkpoint: steps 5 and 6 are redone after the resume
            raise Interrupt

    interrupted.after_step_hook = stop
    with pytest.raises(Interrupt):
        interrupted.fit()
    assert latest_checkpoint(tmp_path / "b").name == "step-00000004.ckpt"
    Trainer(recipe(counting_data, tmp_path / "b")).fit()  # resume="auto"

    a = torch.load(latest_checkpoint(tmp_path / "a"), weights_only=True)
    b = torch.load(latest_checkpoint(tmp_path / "b"), weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    algorithms = [g["algorithm"] for g in a["optimizer"]["param_groups"]]
    assert "muon" in algorithms and "adamw" in algorithms
    assert any("momentum_buffer" in s for s in a["optimizer"]["state"].values())
