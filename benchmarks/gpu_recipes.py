"""Recipes for the GPU suite: Transformer++ at ArchScale's d8 and d16 dimensions (REFERENCE §1: width 128·d,
d heads of 128, d/4 KV heads, SwiGLU 4·width, vocab 32 000, context 4096) trained by the Trainer with bf16-mixed
and torch.compile on the embedded corpus. Short runs: they show the training path works on CUDA and measure
its tok/s and MFU; the model-only comparison with a plain PyTorch baseline is train_throughput.py."""

from __future__ import annotations

from archscale.recipe import Recipe


def _tfpp(depth: int, micro_batch: int, steps: int, arch: str = "transformer") -> Recipe:
    return Recipe(
        name=f"{'tfpp' if arch == 'transformer' else arch}-d{depth}-gpu",
        model={"name": arch, "params": {"depth": depth, "vocab_size": 32000, "block_size": 4096}},
        data={"seq_len": 4096},
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.1},
        schedule={"name": "linear", "warmup_fraction": 0.1},
        budget={"steps": steps, "global_batch_tokens": 4 * micro_batch * 4096, "micro_batch_size": micro_batch},
        system={"device": "cuda", "precision": "bf16-mixed", "compile": True, "log_every": 5, "val_every": steps,
                "val_batches": 4, "checkpoint_every": 10_000, "save_final_checkpoint": False, "progress": True},
    )


def tfpp_d8() -> Recipe:
    return _tfpp(8, micro_batch=8, steps=40)


def tfpp_d16() -> Recipe:
    return _tfpp(16, micro_batch=4, steps=30)


def sambay_d16() -> Recipe:
    """SambaY at d16 with the same data, batch and optimizer as tfpp_d16 (multi-GPU checks, issue #11)."""
    return _tfpp(16, micro_batch=4, steps=30, arch="sambay")
