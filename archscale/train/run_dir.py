"""The run directory: what a run writes so that its results can be reproduced and reused.

    run_dir/
      recipe.resolved.json   the recipe and every derived number (archscale.recipe.ResolvedRecipe)
      environment.json       versions of python, torch, archscale and plugins used; git SHA; devices
      tokenizer.*            a copy of the tokenizer (so that `archscale generate` needs nothing else)
      metrics.jsonl          one JSON object per logged step (archscale.train.metrics)
      loss.png               loss curve at the end of training
      checkpoints/step-XXXXXXXX.ckpt
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from archscale.recipe import Recipe, ResolvedRecipe

RESOLVED_FILE = "recipe.resolved.json"
ENV_FILE = "environment.json"


class RunDirError(RuntimeError):
    pass


def default_run_dir(recipe: Recipe) -> Path:
    return Path(recipe.system.out_dir) if recipe.system.out_dir else Path("runs") / recipe.name


def check_compatible(run_dir: Path, resolved: ResolvedRecipe) -> None:
    """Refuse to resume a run directory that holds a different experiment (system settings may differ)."""
    path = run_dir / RESOLVED_FILE
    if not path.exists():
        return
    old = ResolvedRecipe.from_json(path.read_text())
    old_core = old.recipe.model_dump(mode="json", exclude={"system"})
    new_core = resolved.recipe.model_dump(mode="json", exclude={"system"})
    if old_core != new_core:
        diff = sorted(_diff(old_core, new_core))
        raise RunDirError(
            f"{run_dir} holds a run of a different recipe (differs in: {', '.join(diff[:8])}). "
            "Choose another --out directory, or delete that one to start over."
        )
    # Another world size is fine (the data stream and checkpoints are world-size independent) as long as the
    # global batch, and so every step, stays the same.
    for key in ("global_batch_tokens", "steps"):
        if old[key] != resolved[key]:
            raise RunDirError(
                f"{run_dir} was trained with {key}={old[key]} (world size {old.world_size}); on world size "
                f"{resolved.world_size} it would be {resolved[key]}. Adjust budget.micro_batch_size or the number "
                "of devices so that they match."
            )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in set(a) | set(b):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def write_run_files(run_dir: Path, resolved: ResolvedRecipe, devices: list[str], tokenizer_path: str | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / RESOLVED_FILE, resolved.to_json())
    _atomic_write(run_dir / ENV_FILE, json.dumps(environment_info(devices), indent=2))
    if tokenizer_path:
        src = Path(tokenizer_path)
        dst = run_dir / ("tokenizer" + "".join(src.suffixes[-1:]))
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def environment_info(devices: list[str]) -> dict[str, Any]:
    import torch

    from archscale import __version__

    plugins = {}
    for dist in metadata.distributions():
        groups = {ep.group for ep in dist.entry_points if ep.group.startswith("archscale.")}
        if groups and dist.metadata["Name"] != "archscale":
            plugins[dist.metadata["Name"]] = dist.version
    return {
        "archscale": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning_fabric": _version("lightning-fabric"),
        "plugins": plugins,
        "git_sha": _git_sha(),
        "devices": devices,
        "argv": sys.argv,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    """SHA of the archscale source tree when it is a git checkout (editable installs), else None."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_resolved(run_dir: Path | str) -> ResolvedRecipe:
    path = Path(run_dir) / RESOLVED_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not an archscale run directory (no {RESOLVED_FILE})")
    return ResolvedRecipe.from_json(path.read_text())


def find_tokenizer(run_dir: Path | str) -> Path | None:
    found = sorted(Path(run_dir).glob("tokenizer.*"))
    return found[0] if found else None


def load_for_inference(run_dir: Path | str, checkpoint: str | Path | None = None) -> tuple[Any, Any]:
    """Model (eval mode, CPU or CUDA) and tokenizer of a run; the architecture comes from the saved recipe."""
    import torch

    from archscale.data.tokenizers import load_tokenizer
    from archscale.scaling.parametrization import build_model_for
    from archscale.train.checkpoint import latest_checkpoint, read_model_weights

    run_dir = Path(run_dir)
    resolved = read_resolved(run_dir)
    recipe = resolved.recipe
    model = build_model_for(recipe)  # the parametrization's forward multipliers are part of the model
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt is None or not ckpt.exists():
        raise RunDirError(f"No checkpoint in {run_dir / 'checkpoints'}; train first or pass --checkpoint")
    model.load_state_dict(read_model_weights(ckpt))
    model.eval()
    if torch.cuda.is_available():
        model = model.cuda()
    tok_path = find_tokenizer(run_dir)
    if tok_path is None:
        raise RunDirError(f"No tokenizer in {run_dir}; copy the tokenizer used for training there as tokenizer.json")
    return model, load_tokenizer(tok_path)
