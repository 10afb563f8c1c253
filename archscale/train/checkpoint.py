"""Checkpoints: atomic writes, latest-checkpoint discovery, safe loading.

A checkpoint is written under a temporary name and renamed into place only when complete, so a run killed while
saving leaves the previous checkpoint intact and never a half-written one that ``resume="auto"`` would pick.
Loading goes through ``torch.load(weights_only=True)`` (via Fabric), so a checkpoint cannot execute code.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.ckpt$")


class CheckpointError(RuntimeError):
    pass


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.ckpt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``run_dir``, oldest first (temporary files of an interrupted save are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(fabric: Fabric, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` for ``step`` atomically (temp name, then rename) and prune all but the ``keep`` newest."""
    final = checkpoint_path(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if fabric.is_global_zero:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
    fabric.barrier()
    fabric.save(tmp, state)
    fabric.barrier()
    if fabric.is_global_zero:
        _fsync(tmp)
        _remove(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            _remove(old)
    fabric.barrier()
    return final


def load_checkpoint(fabric: Fabric, path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Restore ``state`` in place from ``path`` (weights only: no code runs); returns what was not in ``state``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint not found: {path}. List {path.parent} or use resume='auto'/'never'.")
    try:
        return fabric.load(path, state, weights_only=True)
    except Exception as exc:  # corrupt file, incompatible shapes, ...
        raise CheckpointError(
            f"Could not load checkpoint {path}: {type(exc).__name__}: {exc}. "
            "If it is damaged, delete it so that resume picks the previous one."
        ) from exc


def consolidate_checkpoint(path: Path, out_file: Path) -> Path:
    """Turn a distributed (FSDP2, one shard per rank) checkpoint directory into one ``torch.save`` file holding
    the full model and optimizer state plus the run state (step, data position, ...); written atomically."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path, out_file = Path(path), Path(out_file)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a distributed checkpoint directory (it is already a single file)")
    tmp = out_file.with_name(out_file.name + ".tmp")
    dcp_to_torch_save(path, tmp)
    merged = torch.load(tmp, map_location="cpu", weights_only=True)
    meta = path / "meta.pt"  # Fabric keeps the non-tensor run state here
    if meta.exists():
        merged.update(torch.load(meta, map_location="cpu", weights_only=True))
    torch.save(merged, tmp)
    os.replace(tmp, out_file)
    return out_file


def read_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a checkpoint file or distributed checkpoint directory (for inference)."""
    path = Path(path)
    if path.is_dir():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return torch.load(consolidate_checkpoint(path, Path(tmp) / "full.ckpt"), weights_only=True)["model"]
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
