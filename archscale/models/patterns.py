"""Hybrids from a pattern string, no code: the ``pattern`` architecture, its grammar, and the cross-layer check.

>>> from archscale.models.patterns import PatternConfig, pattern
>>> spec = pattern(PatternConfig(pattern="(mamba swa128)*4 mamba* attn (gmu yoco)*3"))
>>> [layer.mixer for layer in spec.layers][7:12]
['attention', 'mamba', 'attention', 'gmu', 'yoco_cross']

Grammar (whitespace separates items; names are case-sensitive)::

    pattern := item+
    item    := unit ["*" N]              repeat the unit N times ("(M S128)*4")
    unit    := layer | "(" item+ ")"
    layer   := NAME ["(" key=value {"," key=value} ")"] ["*"]

A trailing ``*`` not followed by a number marks the layer that hands its result to later layers: a recurrent
layer exports its memory for the GMUs (``export_memory=True``, SambaY's ``M*``), an attention layer its K,V for the
cross-attention layers (``share_kv=True``, YOCO's F). ``name*4`` repeats, ``name**4`` does both. Values in
``key=value`` are ints, floats, ``true``/``false``, ``none`` or bare words (``positional=rope``).

Names (the words, and REFERENCE §2's letters):

=================  ======  ===================================================================================
word               letter  layer
=================  ======  ===================================================================================
attn               F       full attention (``F`` also shares its K,V: ``attn*``)
swa, swa<W>        S<W>    sliding-window attention, window W (bare ``swa``: the config's ``window``)
dattn, dswa<W>             differential attention (Ye et al. 2024), full / windowed
yoco               X       YOCO cross-attention on the shared K,V (Sun et al. 2024)
dyoco                      differential cross-attention
gmu, ngmu          G       Gated Memory Unit on the shared memory; ``ngmu`` normalised (for Mamba-2/GDN memory)
mamba, mamba2, gdn M, M2,  the recurrent mixers (Mamba-1, Mamba-2, Gated DeltaNet)
                   GDN
<registered name>          any registered token mixer, with only the params given (and ``mixer_params``)
=================  ======  ===================================================================================

Attention-family layers get the config's heads (n_head, n_kv_head, head_dim: depth-based by default) and
``positional``; ``mixer_params`` gives default params per mixer name (e.g. ``{"mamba": {"d_state": 8}}``); a
layer's own ``key=value`` win over both. ``pattern`` may also be a list whose items are pattern strings or layer
dicts ``{"mixer": ..., "params": {...}}`` (taken as they are, plus ``mixer_params``).

Cross-layer rule (:func:`archscale.models.sharing.check_shared_flow`, also applied to every family): a layer that
reads shared values (GMU: memory; cross-attention: K,V) needs an earlier layer that writes them. When no layer is marked to share K,V, the
nearest full-attention layer before the first cross-attention layer is made the YOCO F layer (so
``mamba* attn (gmu yoco)*3`` works as written); the cross layers must match its heads and positions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from archscale.models.archs import DepthConfig
from archscale.models.sharing import PatternError, check_shared_flow
from archscale.models.spec import LayerSpec, LMSpec
from archscale.registry import UnknownEntryError, architectures, mixers

__all__ = ["PatternConfig", "PatternError", "check_shared_flow", "parse_pattern", "pattern"]

# ---------------------------------------------------------------------------------------------------------- grammar


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[0-9]+")


class _Layer(BaseModel):
    """A parsed layer token before it becomes a LayerSpec."""

    name: str
    args: dict[str, Any]
    export: bool
    where: str  # the token as written, for messages


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class _Parser:
    """Recursive descent over the pattern string (see the module docstring for the grammar)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> PatternError:
        pointer = " " * self.pos + "^"
        return PatternError(f"{message}\n  {self.text}\n  {pointer}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> list[_Layer]:
        items = self.items(closing=None)
        if not items:
            raise self.error("empty pattern: give at least one layer, e.g. 'attn'")
        return items

    def items(self, closing: str | None) -> list[_Layer]:
        out: list[_Layer] = []
        while True:
            self.skip()
            c = self.peek()
            if c == "":
                if closing is not None:
                    raise self.error("unclosed '(': missing ')'")
                return out
            if c == ")":
                if closing is None:
                    raise self.error("unexpected ')' without a matching '('")
                self.pos += 1
                return out
            out.extend(self.item())

    def item(self) -> list[_Layer]:
        start = self.pos
        if self.peek() == "(":
            self.pos += 1
            unit = self.items(closing=")")
            if not unit:
                self.pos = start
                raise self.error("empty group '()'")
        else:
            unit = [self.layer()]
        if self.peek() == "*" and _INT.match(self.text, self.pos + 1):
            m = _INT.match(self.text, self.pos + 1)
            assert m is not None
            n = int(m.group())
            if n < 1:
                raise self.error(f"repeat count must be at least 1, got '*{m.group()}'")
            self.pos = m.end()
            unit = [layer.model_copy() for _ in range(n) for layer in unit]
        if self.peek() not in ("", ")") and not self.peek().isspace() and self.peek() != "(":
            raise self.error(f"unexpected character {self.peek()!r} after '{self.text[start:self.pos]}'")
        return unit

    def layer(self) -> _Layer:
        start = self.pos
        m = _NAME.match(self.text, self.pos)
        if m is None:
            raise self.error(f"expected a layer name, got {self.peek()!r}")
        self.pos = m.end()
        args: dict[str, Any] = {}
        if self.peek() == "(":
            close = self.text.find(")", self.pos)
            if close < 0:
                raise self.error(f"unclosed '(' in the arguments of '{m.group()}'")
            for part in self.text[self.pos + 1 : close].split(","):
                if not part.strip():
                    continue
                key, eq, value = part.partition("=")
                if not eq or not _NAME.fullmatch(key.strip()) or not value.strip():
                    raise self.error(f"bad argument '{part.strip()}' of '{m.group()}': write key=value")
                args[key.strip()] = _value(value.strip())
            self.pos = close + 1
        export = False
        if self.peek() == "*" and not _INT.match(self.text, self.pos + 1):
            export = True
            self.pos += 1
        return _Layer(name=m.group(), args=args, export=export, where=self.text[start:self.pos])


def parse_pattern(text: str) -> list[_Layer]:
    """Parse a pattern string into layer tokens (no names resolved yet); raises :class:`PatternError`."""
    return _Parser(text).parse()


# ----------------------------------------------------------------------------------------------------- name table

LayerMaker = Callable[["PatternConfig", dict[str, Any]], LayerSpec]


def _attention(mixer: str, **fixed: Any) -> LayerMaker:
    def make(cfg: PatternConfig, args: dict[str, Any]) -> LayerSpec:
        params = {**cfg.heads(), "positional": cfg.positional, **fixed}
        return LayerSpec(mixer=mixer, params={**params, **cfg.mixer_params.get(mixer, {}), **args})

    return make


def _windowed(mixer: str, window: int | None) -> LayerMaker:
    def make(cfg: PatternConfig, args: dict[str, Any]) -> LayerSpec:
        return _attention(mixer, window=window if window is not None else cfg.window)(cfg, args)

    return make


def _plain(mixer: str, **fixed: Any) -> LayerMaker:
    def make(cfg: PatternConfig, args: dict[str, Any]) -> LayerSpec:
        return LayerSpec(mixer=mixer, params={**fixed, **cfg.mixer_params.get(mixer, {}), **args})

    return make


_NAMES: dict[str, LayerMaker] = {
    "attn": _attention("attention"),
    "F": _attention("attention", share_kv=True),
    "swa": _windowed("attention", None),
    "dattn": _attention("diff_attention"),
    "dswa": _windowed("diff_attention", None),
    "yoco": _attention("yoco_cross"),
    "X": _attention("yoco_cross"),
    "dyoco": _attention("yoco_cross", differential=True),
    "gmu": _plain("gmu"),
    "G": _plain("gmu"),
    "ngmu": _plain("gmu", normalize=True),
    "mamba": _plain("mamba"),
    "M": _plain("mamba"),
    "mamba2": _plain("mamba2"),
    "M2": _plain("mamba2"),
    "gdn": _plain("gdn"),
    "GDN": _plain("gdn"),
}
_WINDOWED = re.compile(r"(swa|dswa|S)([0-9]+)")  # swa128, dswa512, S128
_RECURRENT = frozenset({"mamba", "mamba2", "gdn"})  # mixers written elsewhere; they export memory


def _maker(token: _Layer) -> LayerMaker:
    if token.name in _NAMES:
        return _NAMES[token.name]
    m = _WINDOWED.fullmatch(token.name)
    if m is not None:
        mixer = "diff_attention" if m.group(1) == "dswa" else "attention"
        return _windowed(mixer, int(m.group(2)))
    if token.name in mixers:
        return _plain(token.name)
    words = sorted(n for n in _NAMES if n[0].islower())
    try:
        mixers.get(token.name)
    except UnknownEntryError as err:
        raise PatternError(
            f"unknown layer '{token.where}' in the pattern: use one of {', '.join(words)}, swa<W>, dswa<W>, "
            f"S<W>, F, X, G, M, M2, GDN, or a registered token mixer. {err}"
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _export(layer: LayerSpec, where: str) -> LayerSpec:
    """Set the export flag of a '*' layer: export_memory for memory producers, share_kv for attention."""
    if layer.mixer in _RECURRENT and layer.mixer not in mixers:
        flag = "export_memory"  # not registered yet: the recurrent mixers' documented flag
    else:
        fields = mixers.config_model(layer.mixer).model_fields
        flag = next((f for f in ("export_memory", "share_kv") if f in fields), "")
        if not flag:
            raise PatternError(
                f"'{where}' is marked '*' but its mixer '{layer.mixer}' can export neither memory (export_memory) "
                "nor K,V (share_kv)"
            )
    return LayerSpec(mixer=layer.mixer, params={**layer.params, flag: True})


# ---------------------------------------------------------------------------------------------- the architecture


class PatternConfig(DepthConfig):
    """Any hybrid from a layer pattern; the depth is the number of layers (widths default as for depth d)."""

    pattern: str | list[str | dict[str, Any]] = Field(
        description="Layer pattern, e.g. '(mamba swa128)*4 mamba* attn (gmu yoco)*3' (grammar: "
        "archscale.models.patterns), or a list of pattern strings and {mixer, params} dicts."
    )
    depth: int = Field(0, ge=0, description="Number of layers; 0 (default) = as many as the pattern has.")
    positional: Literal["rope", "nope"] = Field("rope", description="Positions of the attention-family layers.")
    window: int = Field(128, ge=1, description="Window of a bare 'swa' / 'dswa'.")
    mixer_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Default params per mixer name, e.g. {'mamba': {'d_state': 8}}."
    )

    @model_validator(mode="before")
    @classmethod
    def _depth_from_pattern(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pattern" in data:
            n = _count_layers(data["pattern"])
            depth = data.get("depth", 0) or n
            if depth != n:
                raise ValueError(f"depth={depth} but the pattern has {n} layers")
            data = {**data, "depth": depth}
        return data

    def layers(self) -> list[LayerSpec]:
        """The layer list of the pattern, checked with :func:`check_shared_flow`."""
        out: list[LayerSpec] = []
        items = [self.pattern] if isinstance(self.pattern, str) else self.pattern
        for item in items:
            if isinstance(item, dict):
                layer = LayerSpec.model_validate(item)
                defaults = self.mixer_params.get(layer.mixer, {})
                out.append(LayerSpec(mixer=layer.mixer, params={**defaults, **layer.params}))
                continue
            for token in parse_pattern(item):
                layer = _maker(token)(self, token.args)
                out.append(_export(layer, token.where) if token.export else layer)
        return check_shared_flow(out)


def _count_layers(pattern: Any) -> int:
    items = [pattern] if isinstance(pattern, str) else list(pattern)
    return sum(1 if isinstance(item, dict) else len(parse_pattern(item)) for item in items)


@architectures.register("pattern", config=PatternConfig)
def pattern(cfg: PatternConfig) -> LMSpec:
    """A hybrid from ``cfg.pattern`` (see the module docstring for the grammar and the names)."""
    return cfg.spec(cfg.layers())
