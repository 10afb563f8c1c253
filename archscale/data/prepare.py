"""Raw text → packed LITPKDS files: ``archscale data prepare``.

Inputs are ``.txt`` (a whole file is one document, or ``txt_mode="line"``: one per line), ``.jsonl`` / ``.ndjson``
(one JSON object per line, text under ``text_key``) and ``.parquet`` (a ``text_key`` column; needs pyarrow).
Every document is tokenized and followed by one EOS.

Why work units: the inputs are cut into units of about ``unit_bytes`` of raw text (large JSONL/line files into
line-aligned byte ranges, small files grouped). Units are tokenized in parallel processes and each unit writes
its own files, ``{prefix}_{unit:06d}_{counter:010d}.bin`` (so ``dir/prefix`` is a source, as in TinyLlama). A unit
first writes ``*.bin.tmp`` files, then records a completion marker, then renames them into place; a rerun after an
interruption skips finished units, finishes a unit caught between marker and renames, and redoes the rest from
scratch, so no document is ever written twice and the result is byte-identical to an uninterrupted run, whatever
the number of workers. At the end a manifest (``{prefix}.archscale.json``) records the real token count and
largest id of every file and the tokenizer (a copy is kept next to the data).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from archscale.data.packed import PackedWriter, dtype_for_vocab, glob_escape, read_header
from archscale.data.sources import make_manifest, manifest_path, write_manifest

TEXT_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
DEFAULT_CHUNK_SIZE = 2049 * 1024  # TinyLlama's choice: 1024 windows of 2048 + 1 tokens per file
DEFAULT_UNIT_BYTES = 64 << 20
_ENCODE_BATCH = 256


@dataclass(frozen=True)
class Item:
    """A piece of one input: a byte range of a text/JSONL file, or a parquet row group (start = group index)."""

    path: str
    kind: Literal["txt", "line", "jsonl", "parquet"]
    start: int
    end: int
    size: int  # raw bytes, for planning and progress


@dataclass(frozen=True)
class Unit:
    index: int
    items: tuple[Item, ...]

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items)


@dataclass
class PrepareSummary:
    """What a prepare run produced (all units, including ones finished by an earlier, interrupted run)."""

    output: str
    prefix: str
    documents: int
    tokens: int
    files: int
    units: int
    units_resumed: int
    skipped_empty: int
    dtype: str
    chunk_size: int
    tokenizer: str
    vocab_size: int
    eos_id: int
    seconds: float
    inputs: int = 0
    manifest: str = ""

    def __str__(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        resumed = f" ({self.units_resumed} already done by an earlier run)" if self.units_resumed else ""
        return "\n".join([
            f"prepared {self.documents:,} documents, {self.tokens:,} tokens in {self.files:,} files "
            f"({self.dtype}, chunk size {self.chunk_size:,})",
            f"  inputs: {self.inputs} files in {self.units} units{resumed}; "
            f"{self.skipped_empty:,} empty documents skipped",
            f"  tokenizer: {self.tokenizer} (vocab {self.vocab_size:,}, eos {self.eos_id})",
            f"  output: {Path(self.output) / self.prefix}_*.bin, manifest {self.manifest}",
            f"  time: {self.seconds:.1f} s ({rate:,.0f} tokens/s)",
        ])


@dataclass(frozen=True)
class _Settings:
    """Everything a worker needs (picklable)."""

    output: str
    prefix: str
    tokenizer: str
    eos_id: int
    dtype: str
    chunk_size: int
    text_key: str
    vocab_limit: int | None
    quiet_threads: bool = False


# ---------------------------------------------------------------------------------------------------- planning


def find_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand directories (recursively) to their .txt/.jsonl/.ndjson/.parquet files, sorted; check files exist."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in TEXT_SUFFIXES
                            and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not inside:
                raise FileNotFoundError(f"{p}: no .txt, .jsonl, .ndjson or .parquet files in this directory")
            found.extend(inside)
        elif p.is_file():
            if p.suffix.lower() not in TEXT_SUFFIXES:
                raise ValueError(f"{p}: unsupported input type {p.suffix!r} (use .txt, .jsonl, .ndjson or .parquet)")
            found.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    seen: set[Path] = set()
    unique = []
    for p in found:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def plan_units(inputs: Sequence[Path], *, txt_mode: Literal["file", "line"] = "file",
               unit_bytes: int = DEFAULT_UNIT_BYTES) -> list[Unit]:
    """Cut the inputs into work units of about ``unit_bytes`` (deterministic: depends only on the inputs)."""
    if unit_bytes < 1:
        raise ValueError(f"unit_bytes must be >= 1, got {unit_bytes}")
    items: list[Item] = []
    for p in inputs:
        kind = TEXT_SUFFIXES[p.suffix.lower()]
        size = p.stat().st_size
        if kind == "txt" and txt_mode == "file":
            items.append(Item(str(p), "txt", 0, size, size))
        elif kind in ("txt", "jsonl"):
            k = "line" if kind == "txt" else "jsonl"
            for s in range(0, size, unit_bytes):
                e = min(size, s + unit_bytes)
                items.append(Item(str(p), k, s, e, e - s))
        else:
            pf = _parquet_file(p)
            for g in range(pf.num_row_groups):
                items.append(Item(str(p), "parquet", g, g + 1, int(pf.metadata.row_group(g).total_byte_size)))
    units: list[Unit] = []
    current: list[Item] = []
    for it in items:
        current.append(it)
        if sum(i.size for i in current) >= unit_bytes:
            units.append(Unit(len(units), tuple(current)))
            current = []
    if current:
        units.append(Unit(len(units), tuple(current)))
    return units


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading .parquet needs pyarrow: pip install pyarrow") from None
    return pq.ParquetFile(str(path))


# ---------------------------------------------------------------------------------------------------- reading


def iter_documents(item: Item, text_key: str = "text") -> Iterator[str]:
    """The documents of one item, in file order."""
    if item.kind == "txt":
        yield Path(item.path).read_text(encoding="utf-8", errors="replace")
        return
    if item.kind == "parquet":
        pf = _parquet_file(Path(item.path))
        if text_key not in pf.schema_arrow.names:
            raise ValueError(f"{item.path}: no column {text_key!r} (columns: {pf.schema_arrow.names}); use --text-key")
        for v in pf.read_row_group(item.start, columns=[text_key]).column(0).to_pylist():
            yield "" if v is None else str(v)
        return
    for offset, line in _lines(item):
        if item.kind == "line":
            yield line.decode("utf-8", errors="replace").rstrip("\r\n")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{item.path} (byte {offset}): invalid JSON line: {e}") from None
        if not isinstance(obj, dict) or text_key not in obj:
            keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{item.path} (byte {offset}): no field {text_key!r} in this line (has {keys}); "
                             "use --text-key")
        v = obj[text_key]
        yield "" if v is None else str(v)


def _lines(item: Item) -> Iterator[tuple[int, bytes]]:
    """Lines whose first byte lies in ``[start, end)``: ranges of one file share no line and miss none."""
    with open(item.path, "rb") as f:
        if item.start > 0:
            f.seek(item.start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line in progress belongs to the previous range
        while True:
            pos = f.tell()
            if pos >= item.end:
                break
            line = f.readline()
            if not line:
                break
            yield pos, line


# ---------------------------------------------------------------------------------------------------- workers

_WORKER_TOKENIZER = None


def _init_worker(settings: _Settings) -> None:
    global _WORKER_TOKENIZER
    if settings.quiet_threads:  # one tokenizer thread per process when processes already fill the cores
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
    from archscale.data.tokenizers import load_tokenizer

    _WORKER_TOKENIZER = load_tokenizer(settings.tokenizer)


def _unit_prefix(prefix: str, index: int) -> str:
    return f"{prefix}_{index:06d}"


def _run_unit(unit: Unit, settings: _Settings) -> dict[str, Any]:
    """Tokenize one unit into ``*.bin.tmp`` files, record the marker, publish the files. Returns the marker."""
    tok = _WORKER_TOKENIZER
    out = Path(settings.output)
    uprefix = _unit_prefix(settings.prefix, unit.index)
    _remove_unit_files(out, uprefix)
    writer = PackedWriter(out, uprefix, chunk_size=settings.chunk_size, dtype=settings.dtype,
                          pad_id=settings.eos_id, suffix=".tmp", eos_id=settings.eos_id)
    docs = skipped = 0
    eos_arr = np.array([settings.eos_id], dtype=np.int64)

    def flush(batch: list[str], item: Item) -> None:
        parts: list[np.ndarray] = []
        for ids in tok.encode_batch(batch):
            parts.append(np.asarray(ids, dtype=np.int64))
            parts.append(eos_arr)  # one EOS closes every document
        flat = np.concatenate(parts)
        if settings.vocab_limit is not None and int(flat.max()) >= settings.vocab_limit:
            raise ValueError(
                f"{item.path}: a document has token id {int(flat.max())} >= the vocabulary limit "
                f"{settings.vocab_limit} (--vocab-size): tokenize with the model's tokenizer or raise the limit")
        writer.write(flat)

    for item in unit.items:
        batch: list[str] = []
        for text in iter_documents(item, settings.text_key):
            if not text.strip():
                skipped += 1
                continue
            batch.append(text)
            if len(batch) == _ENCODE_BATCH:
                flush(batch, item)
                docs += len(batch)
                batch = []
        if batch:
            flush(batch, item)
            docs += len(batch)
    files = writer.close()
    for f in files:  # the marker below promises these bytes are on disk
        fd = os.open(f.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    marker = {
        "unit": unit.index,
        "documents": docs,
        "skipped_empty": skipped,
        "tokens": writer.num_tokens,
        "bytes": unit.size,
        "files": [{"name": Path(f.path).name.removesuffix(".tmp"), "num_tokens": f.num_tokens,
                   "max_token_id": f.max_token_id, "num_documents": f.num_documents} for f in files],
    }
    _write_json(_state_dir(out, settings.prefix) / f"unit_{unit.index:06d}.json", marker)
    _publish(out, marker)
    return marker


# ---------------------------------------------------------------------------------------------------- state


def _state_dir(out: Path, prefix: str) -> Path:
    return out / f".{prefix}.prepare"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _publish(out: Path, marker: dict[str, Any]) -> None:
    for e in marker["files"]:
        final = out / e["name"]
        tmp = out / (e["name"] + ".tmp")
        if tmp.exists():
            os.replace(tmp, final)


def _remove_unit_files(out: Path, uprefix: str) -> None:
    pat = re.compile(re.escape(uprefix) + r"_\d{10}\.bin(\.tmp)?$")
    for p in out.glob(f"{uprefix}_*"):
        if pat.match(p.name):
            p.unlink()


def _unit_done(out: Path, prefix: str, index: int) -> dict[str, Any] | None:
    """The marker of a finished unit whose files are all in place (publishing them if a crash interrupted it)."""
    path = _state_dir(out, prefix) / f"unit_{index:06d}.json"
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    _publish(out, marker)
    try:
        for e in marker["files"]:
            if read_header(out / e["name"]).chunk_size < e["num_tokens"]:
                return None
    except (ValueError, KeyError):
        return None
    return marker


def _fingerprint(inputs: Sequence[Path], units: Sequence[Unit], settings: _Settings, tok_sha: str,
                 txt_mode: str) -> dict[str, Any]:
    h = hashlib.sha256(json.dumps([asdict(u) for u in units]).encode()).hexdigest()
    return {
        "inputs": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in inputs],
        "units_sha256": h,
        "num_units": len(units),
        "tokenizer_sha256": tok_sha,
        "eos_id": settings.eos_id,
        "dtype": settings.dtype,
        "chunk_size": settings.chunk_size,
        "text_key": settings.text_key,
        "txt_mode": txt_mode,
    }


# ---------------------------------------------------------------------------------------------------- driver


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    prefix: str = "train",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: str = "auto",
    text_key: str = "text",
    txt_mode: Literal["file", "line"] = "file",
    workers: int | None = None,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    vocab_limit: int | None = None,
    eos_id: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Tokenize ``inputs`` into packed files in ``output`` (resumable; see the module docstring).

    ``tokenizer``: a tokenizer file (None: the default-corpus BPE). ``dtype``: "auto" (uint16 below 65 500
    tokens, else int32), "uint16" or "int32". ``vocab_limit``: refuse any token id >= this (the model's
    vocabulary). ``workers``: processes (default: one per core, at most one per unit).
    """
    t0 = time.perf_counter()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise ValueError(f"prefix {prefix!r}: use letters, digits, '.', '_' and '-' (it starts file names)")
    files_in = find_inputs(inputs)
    from archscale.data.tokenizers import load_tokenizer

    if tokenizer is None:
        from archscale.data.corpus import default_corpus

        tokenizer = default_corpus().tokenizer_path
    tok = load_tokenizer(tokenizer)
    eos = tok.eos_id if eos_id is None else eos_id
    if eos is None:
        raise ValueError(f"tokenizer {tok.path} has no EOS token; pass --eos-id with the id that ends documents")
    if not 0 <= eos < tok.vocab_size:
        raise ValueError(f"eos id {eos} is outside the tokenizer's vocabulary of {tok.vocab_size}")
    dt = dtype_for_vocab(tok.vocab_size) if dtype == "auto" else np.dtype(dtype)
    if dt not in (np.dtype(np.uint16), np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint8)):
        raise ValueError(f"dtype {dtype!r}: use auto, uint16, int32 (or uint8, int64)")
    if tok.vocab_size - 1 > np.iinfo(dt).max:
        raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size:,} tokens but {dt} holds ids only up to "
                         f"{np.iinfo(dt).max:,}: use --dtype int32 (or auto)")
    if vocab_limit is not None and tok.vocab_size > vocab_limit:
        raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size:,} tokens, more than the model's vocabulary "
                         f"{vocab_limit:,} (--vocab-size): tokenize with the model's tokenizer")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = _state_dir(out, prefix)
    tok_sha = tok.sha256()
    tok_bytes = tok.path.read_bytes()  # kept: --overwrite may delete an earlier copy that is this very file
    tok_copy = out / f"{prefix}.tokenizer" / tok.path.name
    settings = _Settings(str(out), prefix, str(tok_copy), int(eos), dt.name, int(chunk_size), text_key,
                         vocab_limit)
    units = plan_units(files_in, txt_mode=txt_mode, unit_bytes=unit_bytes)
    fp = _fingerprint(files_in, units, settings, tok_sha, txt_mode)

    if overwrite:
        _clear(out, prefix)
    foreign = sorted(p.name for p in out.glob(f"{glob_escape(prefix)}*.bin*") if not _owned(p.name, prefix))
    if foreign:
        raise ValueError(f"{out} already has {len(foreign)} other files matching {prefix}*.bin (e.g. {foreign[0]}) "
                         f"that the source {out / prefix} would mix in; use another --output or --prefix")
    plan_path = state / "plan.json"
    if plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old != fp:
            diff = sorted(k for k in fp if old.get(k) != fp.get(k))
            raise ValueError(
                f"{out} already holds a prepare of prefix {prefix!r} with other inputs or settings (differs in: "
                f"{', '.join(diff)}); pass --overwrite to start over, or use another --output or --prefix")
    else:
        existing = [p for p in out.glob(f"{prefix}_*.bin*") if _owned(p.name, prefix)]
        if existing or manifest_path(out, prefix).exists():
            raise ValueError(f"{out} already has packed files of prefix {prefix!r} not made by a resumable prepare "
                             "run; pass --overwrite to replace them, or use another --output or --prefix")
        state.mkdir(parents=True, exist_ok=True)
        _write_json(plan_path, fp)
    if not tok_copy.exists():
        tok_copy.parent.mkdir(parents=True, exist_ok=True)
        tok_copy.write_bytes(tok_bytes)

    markers: dict[int, dict[str, Any]] = {}
    todo: list[Unit] = []
    for u in units:
        m = _unit_done(out, prefix, u.index)
        if m is None:
            todo.append(u)
        else:
            markers[u.index] = m
    resumed = len(markers)

    total_bytes = sum(u.size for u in units)
    bar = _progress(total_bytes, sum(u.size for u in units if u.index in markers), progress)
    try:
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        if n_workers == 1 or len(todo) <= 1:
            _init_worker(settings)
            for u in todo:
                markers[u.index] = _run_unit(u, settings)
                bar.update(u.size)
        else:
            markers.update(_run_parallel(todo, settings, n_workers, bar))
    finally:
        bar.close()

    file_entries = [e for i in sorted(markers) for e in markers[i]["files"]]
    tok_info = {"file": str(tok_copy.relative_to(out)), "sha256": tok_sha, "vocab_size": tok.vocab_size,
                "eos_id": int(eos), "kind": tok.kind, "original": str(tok.path)}
    docs = sum(m["documents"] for m in markers.values())
    manifest = make_manifest(
        prefix=prefix, files=file_entries, tokenizer=tok_info, dtype=dt.name, chunk_size=int(chunk_size),
        extra={"inputs": [str(p) for p in files_in],
               "skipped_empty": sum(m["skipped_empty"] for m in markers.values())},
    )
    manifest["num_documents"] = docs
    mpath = manifest_path(out, prefix)
    write_manifest(mpath, manifest)
    return PrepareSummary(
        output=str(out), prefix=prefix, documents=docs, tokens=manifest["num_tokens"], files=len(file_entries),
        units=len(units), units_resumed=resumed, skipped_empty=manifest["skipped_empty"], dtype=dt.name,
        chunk_size=int(chunk_size), tokenizer=str(tok.path), vocab_size=tok.vocab_size, eos_id=int(eos),
        seconds=time.perf_counter() - t0, inputs=len(files_in), manifest=str(mpath),
    )


def _run_parallel(todo: list[Unit], settings: _Settings, n_workers: int, bar: Any) -> dict[int, dict[str, Any]]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    done: dict[int, dict[str, Any]] = {}
    s = _Settings(**{**asdict(settings), "quiet_threads": True})
    # spawn, not fork: the parent may hold tokenizer thread pools or torch state that must not be forked.
    with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(s,)) as pool:
        futures = {pool.submit(_run_unit, u, s): u for u in todo}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    u = futures[f]
                    exc = f.exception()
                    if exc is not None:
                        for p in pending:
                            p.cancel()
                        raise exc
                    done[u.index] = f.result()
                    bar.update(u.size)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return done


def _owned(name: str, prefix: str) -> bool:
    return re.fullmatch(re.escape(prefix) + r"_\d{6}_\d{10}\.bin(\.tmp)?", name) is not None


def _clear(out: Path, prefix: str) -> None:
    for p in out.glob(f"{prefix}_*"):
        if _owned(p.name, prefix):
            p.unlink()
    for p in (manifest_path(out, prefix),):
        if p.exists():
            p.unlink()
    shutil.rmtree(_state_dir(out, prefix), ignore_errors=True)
    shutil.rmtree(out / f"{prefix}.tokenizer", ignore_errors=True)


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
                dynamic_ncols=True)


__all__ = ["PrepareSummary", "prepare", "find_inputs", "plan_units", "iter_documents"]
