"""The cross-layer check of a layer list: every value a layer reads from ``shared`` is written by an earlier one.

Readers and writers are declared by the mixers (``shared_reads`` / ``shared_writes``, see
:mod:`archscale.models.mixers.base`): the GMU reads memory (exported by a ``export_memory`` layer, SambaY's M*),
YOCO cross-attention reads K,V (written by a ``share_kv`` full-attention layer, YOCO's F). Applied to every
registered family and to the ``pattern`` architecture, so a wrong hybrid fails when its spec is built, with a
message naming the layer, rather than in the middle of a forward.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from archscale.models.spec import LayerSpec
from archscale.registry import mixers


class PatternError(ValueError):
    """A layer pattern that does not parse or does not make a valid model; the message names the bad token."""


def _io(layer: LayerSpec) -> tuple[frozenset[str], frozenset[str], BaseModel | None]:
    """(reads, writes, validated config or None) of a layer, from its class when it is registered."""
    if layer.mixer not in mixers:
        writes = {"memory"} if layer.params.get("export_memory") else set()
        return frozenset(), frozenset(writes | ({"kv"} if layer.params.get("share_kv") else set())), None
    cls = mixers.get(layer.mixer)
    config = mixers.config_model(layer.mixer).model_validate(layer.params)
    reads = cls.shared_reads(config) if hasattr(cls, "shared_reads") else frozenset()
    writes = cls.shared_writes(config) if hasattr(cls, "shared_writes") else frozenset()
    return frozenset(reads), frozenset(writes), config


def _attention_signature(config: BaseModel) -> dict[str, Any]:
    n_head = getattr(config, "n_head", None)
    n_kv = getattr(config, "n_kv_head", None) or n_head
    return {"n_kv_head": n_kv, "head_dim": getattr(config, "head_dim", None),
            "positional": getattr(config, "positional", None), "rope_base": getattr(config, "rope_base", None)}


def check_shared_flow(layers: list[LayerSpec]) -> list[LayerSpec]:
    """Check (and complete) the cross-layer flow of ``layers``; returns the layers, with the YOCO F layer marked
    ``share_kv`` when none was (see the module docstring). Raises :class:`PatternError` naming the layer."""
    layers = list(layers)
    ios = [_io(layer) for layer in layers]
    if any("kv" in r for r, _, _ in ios) and not any("kv" in w for _, w, _ in ios):
        first = next(i for i, (r, _, _) in enumerate(ios) if "kv" in r)
        for j in range(first - 1, -1, -1):
            config = ios[j][2]
            if config is not None and "share_kv" in type(config).model_fields:
                if getattr(config, "window", None) is not None:
                    raise PatternError(
                        f"layer {first} ('{layers[first].mixer}') reads shared K,V, and the nearest attention layer "
                        f"before it (layer {j}) has a sliding window: YOCO shares the K,V of a full-attention layer; "
                        "mark one with '*' (e.g. 'attn*')"
                    )
                layers[j] = LayerSpec(mixer=layers[j].mixer, params={**layers[j].params, "share_kv": True})
                ios[j] = _io(layers[j])
                break
    written: dict[str, int] = {}
    for i, (reads, writes, config) in enumerate(ios):
        for kind in sorted(reads):
            if kind not in written:
                what = ("memory: mark a recurrent layer before it with '*' (export_memory=True)" if kind == "memory"
                        else "K,V: put a full-attention layer before it (mark it with '*', share_kv=True)")
                raise PatternError(f"layer {i} ('{layers[i].mixer}') reads shared {what}")
        if "kv" in reads and config is not None:
            producer = ios[written["kv"]][2]
            if producer is not None:
                mine, theirs = _attention_signature(config), _attention_signature(producer)
                bad = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
                if bad:
                    raise PatternError(
                        f"layer {i} ('{layers[i].mixer}') attends to the K,V of layer {written['kv']} but differs "
                        f"from it in {', '.join(f'{k}: {a} vs {b}' for k, (a, b) in bad.items())}"
                    )
        for kind in writes:
            written[kind] = i
    return layers
