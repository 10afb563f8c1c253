"""Run the tiny trainer recipe with a given strategy and device count (executed as a script by the distributed
tests; Fabric's launcher re-runs this same command line for ranks > 0).

    python dist_run.py DATA_DIR OUT_DIR ARCH STRATEGY DEVICES STEPS [KEY=VALUE ...]

``KEY=VALUE`` with a dotted key is a recipe override (``data.varlen=true``, ``optimizer.name=muon``); two plain
keys drive the test: ``fail=RANK:STEP`` raises on that rank after that step, and ``report_mesh=1`` makes every rank
write ``mesh-rank<R>.json`` into OUT_DIR after training: the device mesh and placements of two parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_run import tiny_recipe

from archscale.recipe import apply_overrides
from archscale.train.trainer import Trainer


def describe_param(p: Any) -> dict[str, Any]:
    """Mesh, placements and local shape of a parameter (plain tensors: their shape only)."""
    info: dict[str, Any] = {"type": type(p).__name__, "shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch.")}
    if hasattr(p, "device_mesh"):
        mesh = p.device_mesh
        info.update(
            mesh_shape=list(mesh.shape),
            mesh_dim_names=list(mesh.mesh_dim_names or ()),
            coordinate=mesh.get_coordinate(),
            placements=[repr(pl) for pl in p.placements],
            local_shape=list(p.to_local().shape),
        )
    return info


def main() -> None:
    data, out, arch, strategy, devices, steps = sys.argv[1:7]
    extra = dict(item.split("=", 1) for item in sys.argv[7:])
    overrides = [f"{k}={v}" for k, v in extra.items() if "." in k]
    fail_rank, fail_step = (int(x) for x in extra.get("fail", "-1:-1").split(":"))
    recipe = tiny_recipe(
        Path(data), Path(out), arch, strategy=strategy, num_devices=int(devices), dist_timeout_s=120.0
    )
    recipe = apply_overrides(recipe, [f"budget.steps={int(steps)}", *overrides])
    trainer = Trainer(recipe)

    def hook(step: int) -> None:
        if trainer.fabric.global_rank == fail_rank and step == fail_step:
            raise RuntimeError(f"injected failure at step {step}")

    trainer.after_step_hook = hook
    trainer.fit()
    if extra.get("report_mesh") == "1":
        params = dict(trainer.model.named_parameters())
        report = {name: describe_param(params[name]) for name in ("embed.weight", next(iter(
            n for n in params if n.startswith("blocks.0.") and params[n].ndim == 2)))}
        report["world_size"] = trainer.fabric.world_size
        Path(out, f"mesh-rank{trainer.fabric.global_rank}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
