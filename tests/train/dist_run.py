"""Run the tiny trainer recipe with a given strategy and device count (executed as a script by the distributed
tests; Fabric's launcher re-runs this same command line for ranks > 0).

    python dist_run.py DATA_DIR OUT_DIR ARCH STRATEGY DEVICES STEPS [FAIL_RANK FAIL_STEP]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_run import tiny_recipe  # noqa: E402

from archscale.train.trainer import Trainer  # noqa: E402


def main() -> None:
    data, out, arch, strategy, devices, steps = sys.argv[1:7]
    fail_rank, fail_step = (int(sys.argv[7]), int(sys.argv[8])) if len(sys.argv) > 8 else (-1, -1)
    recipe = tiny_recipe(
        Path(data), Path(out), arch, strategy=strategy, num_devices=int(devices), dist_timeout_s=120.0
    )
    recipe = recipe.model_copy(update={"budget": recipe.budget.model_copy(update={"steps": int(steps)})})
    trainer = Trainer(recipe)

    def hook(step: int) -> None:
        if trainer.fabric.global_rank == fail_rank and step == fail_step:
            raise RuntimeError(f"injected failure at step {step}")

    trainer.after_step_hook = hook
    trainer.fit()


if __name__ == "__main__":
    main()
