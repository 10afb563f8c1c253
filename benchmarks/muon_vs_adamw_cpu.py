"""Muon vs AdamW on the default tiny model, on CPU, at equal steps (the comparison quoted in docs/optimizers.md).

The ``default`` recipe (Transformer++, 4 layers, width 128, 8 192-token BPE on the embedded State-of-the-Union
corpus) with a shorter budget, trained by the real Trainer once per (optimizer, LR): same seed, same data order,
same schedule (linear, 10% warmup), weight decay 0.1, gradient clipping 1.0. Muon uses its defaults (ArchScale v1:
Nesterov β 0.95, 5 quintic Newton–Schulz steps in bf16, update scale 0.4·√max(m, n)) on the matrices and AdamW on
embedding/norms, at the same peak LR as AdamW. Prints one JSON line per run and a markdown table::

    python benchmarks/muon_vs_adamw_cpu.py --steps 150 --batch-tokens 1024 --lrs 3e-3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def run(optimizer: str, lr: float, steps: int, batch_tokens: int, micro: int, seed: int, out: Path) -> dict:
    from archscale.recipes import default
    from archscale.train.trainer import Trainer

    base = default()
    recipe = base.model_copy(
        update={
            "name": f"cmp_{optimizer}",
            "optimizer": base.optimizer.model_copy(update={"name": optimizer, "lr": lr}),
            "budget": base.budget.model_copy(
                update={"steps": steps, "global_batch_tokens": batch_tokens, "micro_batch_size": micro}
            ),
            "system": base.system.model_copy(
                update={
                    "device": "cpu",
                    "seed": seed,
                    "progress": False,
                    "log_every": 10,
                    "val_every": steps,
                    "val_batches": 16,
                    "checkpoint_every": steps,
                    "save_final_checkpoint": False,
                }
            ),
        }
    )
    t0 = time.perf_counter()
    result = Trainer(recipe, run_dir=out / f"{optimizer}_{lr:g}").fit()
    rows = [json.loads(line) for line in (out / f"{optimizer}_{lr:g}" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {
        "optimizer": optimizer,
        "lr": lr,
        "steps": steps,
        "batch_tokens": batch_tokens,
        "seed": seed,
        "final_train_loss": round(float(result.final_loss or float("nan")), 4),
        "train_loss_last3_logged": round(sum(losses[-3:]) / len(losses[-3:]), 4),
        "val_loss": round(float(result.final_val_loss or float("nan")), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-tokens", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--lrs", default="3e-3", help="comma-separated peak LRs, each run for both optimizers")
    p.add_argument("--optimizers", default="adamw,muon")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default=None, help="run directories (default: a temporary directory)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="muon_vs_adamw_"))
    results = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        for name in args.optimizers.split(","):
            r = run(name, lr, args.steps, args.batch_tokens, args.micro_batch, args.seed, out)
            print(json.dumps(r), flush=True)
            results.append(r)
    print(f"\n| optimizer | peak LR | steps × tokens | train loss (last 3 logs) | val loss |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['optimizer']} | {r['lr']:g} | {r['steps']} × {r['batch_tokens']} | "
            f"{r['train_loss_last3_logged']:.3f} | {r['val_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
