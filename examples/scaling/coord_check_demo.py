"""Coordinate check of a tiny Transformer++ under SP and μP++ on CPU (docs/scaling.md).

    python examples/scaling/coord_check_demo.py [OUT_DIR]

Writes coord_check_sp.png and coord_check_mupp.png: mean |activation| per layer type against width after 0-3
AdamW steps at one base learning rate. Under SP the token-mixer and MLP outputs grow with width (about ∝ width per
step taken); under μP++ they stay flat.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from archscale.recipe import Recipe
from archscale.scaling.coord_check import coord_check

WIDTHS = [32, 64, 128, 256, 512]


def recipe(parametrization: str) -> Recipe:
    return Recipe(
        name=f"coord-{parametrization}",
        model={"name": "transformer", "params": {"depth": 2, "n_embd": 32, "n_head": 2, "head_dim": 16,
                                                 "n_kv_head": 1, "vocab_size": 128, "block_size": 32}},
        data={"seq_len": 32},
        parametrization=parametrization,
        optimizer={"lr": 1e-2},
        budget={"steps": 3},
        scaling={"base": {"depth": 2, "width": 32, "head_dim": 16}},
    )


def main(out_dir: str | Path = "docs/images") -> None:
    torch.set_num_threads(1)  # tiny matmuls: threads only add overhead
    for p, name in (("sp", "sp"), ("mup++", "mupp")):
        result = coord_check(recipe(p), WIDTHS, steps=3)
        path = result.plot(Path(out_dir) / f"coord_check_{name}.png",
                           title=f"coordinate check, {p}: mean |activation| vs width (AdamW, lr 1e-2)")
        slopes = ", ".join(f"{k} {v:+.2f}" for k, v in result.slopes().items())
        print(f"{p}: log-log slopes after 3 steps: {slopes}  -> {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
