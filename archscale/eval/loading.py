"""Load a model and its tokenizer for evaluation from a path: a run directory, one of its checkpoints, or a
Hugging Face Llama directory.

The architecture and parametrization always come from what the path holds (the run's ``recipe.resolved.json``,
or the Llama ``config.json``), never from the path's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from archscale.train.run_dir import RESOLVED_FILE, load_for_inference


class EvalLoadError(ValueError):
    """The path is neither a run directory, a checkpoint inside one, nor a Llama directory."""


def find_run_dir(path: Path) -> Path | None:
    """The run directory holding ``path`` (itself, or the nearest parent with a ``recipe.resolved.json``)."""
    for candidate in (path, *path.parents):
        if (candidate / RESOLVED_FILE).is_file():
            return candidate
    return None


def load_model_and_tokenizer(
    path: str | Path, checkpoint: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of ``path``.

    ``path``: a run directory (the latest checkpoint, or ``checkpoint``), a checkpoint file inside a run directory,
    or a directory with a Hugging Face Llama ``config.json`` and ``tokenizer.json`` (imported with
    :func:`archscale.models.hf.import_llama`). ``device``: default CUDA when available, else CPU.
    """
    p = Path(path)
    if not p.exists():
        raise EvalLoadError(f"{p} does not exist: pass a run directory, a checkpoint file or a Llama directory")
    if p.is_file():
        run_dir = find_run_dir(p.parent)
        if run_dir is None:
            raise EvalLoadError(f"checkpoint {p} is not inside a run directory (no {RESOLVED_FILE} above it)")
        if checkpoint is not None and Path(checkpoint).resolve() != p.resolve():
            raise EvalLoadError(f"both a checkpoint path ({p}) and checkpoint={checkpoint} were given; pass one")
        model, tokenizer = load_for_inference(run_dir, checkpoint=p)
    elif (p / RESOLVED_FILE).is_file():
        model, tokenizer = load_for_inference(p, checkpoint=checkpoint)
    elif (p / "config.json").is_file():
        model, tokenizer = _load_llama_dir(p)
    else:
        raise EvalLoadError(
            f"{p} holds neither {RESOLVED_FILE} (an archscale run directory) nor config.json (a Hugging Face "
            "Llama directory)"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def _load_llama_dir(path: Path) -> tuple[Any, Any]:
    from archscale.data.tokenizers import load_tokenizer
    from archscale.models.hf import import_llama

    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != "llama":
        raise EvalLoadError(f"{path}/config.json is a {model_type!r} model; only Llama checkpoints import")
    if not (path / "tokenizer.json").is_file():
        raise EvalLoadError(f"{path} has no tokenizer.json (a Hugging Face fast tokenizer) next to config.json")
    return import_llama(path), load_tokenizer(path / "tokenizer.json")
