"""Where tokens come from: a source string (a directory or a ``dir/prefix``) resolved to a token stream.

A source is the concatenation of the real tokens of its packed files in name order. ``archscale data prepare``
writes a manifest next to the files, ``{prefix}.archscale.json``, recording per file how many tokens are real
(the last file of a writer is padded), the largest id, and the tokenizer (path, sha256, vocabulary, EOS) the data
was made with. Foreign LitGPT/TinyLlama files have no manifest and are read whole. Windows may span file
boundaries: every file of a prepare run ends on a document's EOS, so crossing one is like crossing a document.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archscale.data.packed import PackedFile, list_packed_files

MANIFEST_SUFFIX = ".archscale.json"
MANIFEST_FORMAT = "archscale-packed-manifest/1"


def manifest_path(directory: str | os.PathLike[str], prefix: str) -> Path:
    return Path(directory) / f"{prefix}{MANIFEST_SUFFIX}"


def write_manifest(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Write atomically (temp file then rename): a reader never sees half a manifest."""
    p = Path(path)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, **manifest}, indent=1) + "\n")
    os.replace(tmp, p)


def read_manifests(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All manifests in ``directory`` (a malformed one is an error naming it, never silently ignored)."""
    out = []
    for p in sorted(Path(directory).glob(f"*{MANIFEST_SUFFIX}")):
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: unreadable archscale manifest ({e}); delete it or re-run archscale data "
                             "prepare") from e
        if m.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{p}: not an archscale manifest (format {m.get('format')!r}, "
                             f"expected {MANIFEST_FORMAT!r})")
        m["_path"] = str(p)
        out.append(m)
    return out


class TokenStream:
    """The real tokens of a list of packed files as one addressable sequence ``[start, stop)``.

    Only headers are read when it is built; token bytes are memory-mapped and copied per window.
    """

    def __init__(self, files: list[PackedFile], start: int = 0, stop: int | None = None) -> None:
        self.files = files
        lengths = np.array([f.num_tokens for f in files], dtype=np.int64)
        self._ends = np.cumsum(lengths)  # global end offset of each file
        self._starts = self._ends - lengths
        total = int(self._ends[-1]) if len(files) else 0
        stop = total if stop is None else stop
        if not 0 <= start <= stop <= total:
            raise ValueError(f"bad stream range [{start}, {stop}) of {total} tokens")
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def view(self, start: int, stop: int) -> TokenStream:
        """A sub-stream ``[start, stop)`` relative to this one (shares the files and their memmaps)."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"bad view [{start}, {stop}) of a stream of {len(self)} tokens")
        return TokenStream(self.files, self.start + start, self.start + stop)

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy ``n`` tokens from relative offset ``start`` into ``out`` (int64), crossing files as needed."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"read [{start}, {start + n}) out of a stream of {len(self)} tokens")
        out = np.empty(n, dtype=np.int64) if out is None else out
        pos = self.start + start
        i = int(np.searchsorted(self._ends, pos, side="right"))
        done = 0
        while done < n:
            f = self.files[i]
            off = pos + done - int(self._starts[i])
            take = min(n - done, f.num_tokens - off)
            out[done : done + take] = f.tokens[off : off + take]
            done += take
            i += 1
        return out

    def locate(self, offset: int) -> tuple[Path, int]:
        """Which file and token index hold relative ``offset`` (for error messages)."""
        pos = self.start + offset
        i = int(np.searchsorted(self._ends, pos, side="right"))
        return self.files[i].path, pos - int(self._starts[i])

    def find(self, value: int, start: int, limit: int) -> int | None:
        """Relative offset of the first ``value`` in ``[start, start + limit)``, or None."""
        stop = min(len(self), start + limit)
        step = 1 << 20
        for s in range(start, stop, step):
            block = self.read(s, min(step, stop - s))
            hit = np.flatnonzero(block == value)
            if hit.size:
                return s + int(hit[0])
        return None


@dataclass
class Source:
    """A resolved source: its name as written in the config, its files, and what the manifests say about them."""

    name: str
    stream: TokenStream
    tokenizer: dict[str, Any] | None = None
    eos_id: int | None = None
    max_token_id: int | None = None  # exact when every file's manifest records it
    dtype_max: int = 0  # cheap upper bound from the on-disk dtypes
    manifests: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.stream)


def resolve_source(spec: str) -> Source:
    """Resolve ``spec``: a directory (all its ``*.bin``), ``dir/prefix`` (the files ``dir/prefix*.bin``) or one
    ``.bin`` file.

    Raises FileNotFoundError for an empty or missing location, saying how to make data, and
    :class:`~archscale.data.packed.PackedFormatError` for the first bad file.
    """
    path = Path(os.path.expanduser(spec))
    single = path.is_file() and path.suffix == ".bin"
    if path.is_dir():
        directory, prefix = path, ""
    elif single:
        directory, prefix = path.parent, path.name
    else:
        directory, prefix = path.parent, path.name
        if not directory.is_dir():
            raise FileNotFoundError(f"data source {spec!r}: directory {directory} does not exist")
    files = [path] if single else list_packed_files(directory, prefix)
    if not files:
        where = f"in the directory {directory}" if not prefix else (
            f"match {directory / prefix}*.bin (and {path} is not a directory)")
        raise FileNotFoundError(
            f"data source {spec!r}: no packed .bin files {where}; create them with "
            f"`archscale data prepare INPUT... --output DIR` and use DIR or DIR/PREFIX as the source"
        )
    per_file: dict[str, dict[str, Any]] = {}
    tokenizers: list[dict[str, Any]] = []
    used: list[str] = []
    names = {f.name for f in files}
    for m in read_manifests(directory):
        entries = [e for e in m.get("files", []) if e["name"] in names]
        if not entries:
            continue
        used.append(m["_path"])
        for e in entries:
            per_file[e["name"]] = e
        if m.get("tokenizer"):
            tokenizers.append({**m["tokenizer"], "_manifest": m["_path"], "_dir": str(directory)})
    opened = []
    for p in files:
        e = per_file.get(p.name, {})
        opened.append(PackedFile.open(p, e.get("num_tokens"), e.get("max_token_id")))
    tok = _agree(spec, tokenizers)
    exact = all(f.max_token_id is not None for f in opened)
    dtype_max = max(_dtype_max(f.header.dtype, f.path) for f in opened)
    return Source(
        name=spec,
        stream=TokenStream(opened),
        tokenizer=tok,
        eos_id=None if tok is None else tok.get("eos_id"),
        max_token_id=max(int(f.max_token_id) for f in opened) if exact else None,  # type: ignore[arg-type]
        dtype_max=dtype_max,
        manifests=used,
    )


def _dtype_max(dtype: np.dtype, path: Path) -> int:
    if dtype.kind not in "iu":
        raise ValueError(f"{path}: holds {dtype} values; token ids must be stored as integers")
    return int(np.iinfo(dtype).max)


def _agree(spec: str, tokenizers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one tokenizer a source was prepared with (files made with different tokenizers can't be mixed)."""
    if not tokenizers:
        return None
    first = tokenizers[0]
    for t in tokenizers[1:]:
        if t.get("sha256") != first.get("sha256"):
            raise ValueError(
                f"data source {spec!r} mixes files prepared with different tokenizers: {first['_manifest']} "
                f"({first.get('file')}) and {t['_manifest']} ({t.get('file')}); point the source at one prefix"
            )
    return first


def tokenizer_file(info: dict[str, Any]) -> str | None:
    """Path of the tokenizer copy a manifest names, if it still exists."""
    name = info.get("file")
    if not name:
        return None
    p = Path(info["_dir"]) / name
    return str(p) if p.exists() else None


def make_manifest(
    *,
    prefix: str,
    files: list[Any],
    tokenizer: dict[str, Any] | None,
    dtype: str,
    chunk_size: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest dict for ``files`` (:class:`~archscale.data.packed.WrittenFile`-like, or plain dicts)."""
    entries = []
    for f in files:
        if isinstance(f, dict):
            entries.append(f)
        else:
            entries.append({"name": Path(f.path).name, "num_tokens": f.num_tokens,
                            "max_token_id": f.max_token_id, "num_documents": f.num_documents})
    entries.sort(key=lambda e: e["name"])
    return {
        "prefix": prefix,
        "dtype": dtype,
        "chunk_size": chunk_size,
        "tokenizer": tokenizer,
        "num_files": len(entries),
        "num_tokens": sum(e["num_tokens"] for e in entries),
        "num_documents": sum(e.get("num_documents", 0) for e in entries),
        "max_token_id": max((e["max_token_id"] for e in entries), default=-1),
        **(extra or {}),
        "files": entries,
    }
