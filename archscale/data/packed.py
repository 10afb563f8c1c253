"""The LITPKDS packed-token file format (LitGPT / TinyLlama / ArchScale), read and written from its spec.

Why this format: it is what the ArchScale lineage trains on, so data prepared for those codebases is usable here
and ours is usable there. A file is ``{prefix}_{counter:010d}.bin``: a 24-byte little-endian header

    b"LITPKDS" (7 bytes) | version uint64 = 1 | dtype code uint8 | chunk_size uint64 (tokens)

followed by exactly ``chunk_size`` tokens of that dtype. Writers fill every file to ``chunk_size`` (the last one
is padded with a pad token, as LitGPT's builder does), because LitGPT's reader takes the chunk size of the first
file for all of them. How many tokens of a file are real is recorded by ``archscale data prepare`` in a sidecar
manifest (see :mod:`archscale.data.sources`); foreign files without one are read whole.

This module imports only numpy: reading headers and memory-mapping must stay cheap for every process.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"LITPKDS"
VERSION = 1
HEADER_SIZE = 24
_HEADER_STRUCT = struct.Struct("<7sQBQ")  # magic, version, dtype code, chunk_size: 7 + 8 + 1 + 8 = 24 bytes
assert _HEADER_STRUCT.size == HEADER_SIZE

DTYPE_BY_CODE: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float32),
    7: np.dtype(np.float64),
    8: np.dtype(np.uint16),
}
CODE_BY_DTYPE: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_BY_CODE.items()}

UINT16_VOCAB_LIMIT = 65_500
"""LitGPT's rule: store tokens as uint16 when the vocabulary is smaller than this, else int32."""

FILE_RE = re.compile(r"^(?P<prefix>.*)_(?P<counter>\d{10})\.bin$")


class PackedFormatError(ValueError):
    """A file that is not a valid LITPKDS file; the message names the file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def packed_file_name(prefix: str, counter: int) -> str:
    """The LitGPT file name of chunk ``counter`` of ``prefix``."""
    return f"{prefix}_{counter:010d}.bin"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits comfortably (vocab < 65 500, LitGPT's threshold), else int32."""
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def dtype_code(dtype: np.dtype | type | str) -> int:
    """Header code of a numpy dtype (raises for dtypes the format has no code for)."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        raise ValueError(f"packed files are little-endian; got big-endian dtype {dt}")
    dt = dt.newbyteorder("=") if dt.byteorder == "<" else dt
    if dt not in CODE_BY_DTYPE:
        names = ", ".join(str(d) for d in CODE_BY_DTYPE)
        raise ValueError(f"dtype {dt} has no LITPKDS code; use one of {names}")
    return CODE_BY_DTYPE[dt]


def encode_header(dtype: np.dtype | type | str, chunk_size: int) -> bytes:
    """The 24 header bytes for ``chunk_size`` tokens of ``dtype``."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return _HEADER_STRUCT.pack(MAGIC, VERSION, dtype_code(dtype), chunk_size)


@dataclass(frozen=True)
class PackedHeader:
    """A parsed and validated header: the on-disk dtype and the number of tokens that follow it."""

    dtype: np.dtype
    chunk_size: int
    version: int = VERSION

    @property
    def dtype_code(self) -> int:
        return CODE_BY_DTYPE[self.dtype]

    @property
    def file_size(self) -> int:
        """Exact size in bytes of a well-formed file with this header."""
        return HEADER_SIZE + self.chunk_size * self.dtype.itemsize


def read_header(path: str | os.PathLike[str]) -> PackedHeader:
    """Read and validate the header of ``path``, including that the file holds exactly ``chunk_size`` tokens.

    Reads 24 bytes and stats the file; never the payload. Raises :class:`PackedFormatError` saying which file is
    bad and why (not LITPKDS, unknown version or dtype code, zero chunk size, truncated, trailing bytes).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise PackedFormatError(p, "file not found") from None
    except IsADirectoryError:
        raise PackedFormatError(p, "is a directory, not a packed file") from None
    if len(raw) < HEADER_SIZE:
        if raw[: len(MAGIC)] != MAGIC[: len(raw)]:
            raise PackedFormatError(p, f"not a LITPKDS packed file (starts with {raw[:7]!r}, expected {MAGIC!r})")
        raise PackedFormatError(p, f"truncated header: {len(raw)} bytes, a LITPKDS header has {HEADER_SIZE}")
    magic, version, code, chunk_size = _HEADER_STRUCT.unpack(raw)
    if magic != MAGIC:
        raise PackedFormatError(p, f"not a LITPKDS packed file (starts with {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PackedFormatError(p, f"unsupported LITPKDS version {version} (only version {VERSION} exists)")
    if code not in DTYPE_BY_CODE:
        known = ", ".join(f"{c}={d}" for c, d in DTYPE_BY_CODE.items())
        raise PackedFormatError(p, f"unknown dtype code {code} in header (known: {known})")
    if chunk_size == 0:
        raise PackedFormatError(p, "header says chunk_size 0 (a packed file holds at least one token)")
    header = PackedHeader(dtype=DTYPE_BY_CODE[code], chunk_size=chunk_size, version=version)
    if size < header.file_size:
        have = (size - HEADER_SIZE) // header.dtype.itemsize
        raise PackedFormatError(
            p,
            f"truncated: the header promises {chunk_size} {header.dtype} tokens ({header.file_size} bytes with "
            f"the header) but the file has {size} bytes ({have} tokens); it was probably cut off while being "
            "written or copied: re-create it (archscale data prepare resumes and rewrites unfinished files)",
        )
    if size > header.file_size:
        raise PackedFormatError(
            p,
            f"{size - header.file_size} unexpected bytes after the {chunk_size} {header.dtype} tokens the header "
            f"announces (expected {header.file_size} bytes in total); the header or the file is corrupt",
        )
    return header


def open_tokens(path: str | os.PathLike[str], header: PackedHeader | None = None) -> np.memmap:
    """Memory-map the tokens of ``path`` read-only (shape ``(chunk_size,)``, the on-disk dtype)."""
    header = read_header(path) if header is None else header
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_SIZE, shape=(header.chunk_size,))


@dataclass
class PackedFile:
    """One packed file: its validated header, how many of its tokens are real, and a lazily opened memmap.

    ``num_tokens`` < ``chunk_size`` when the tail is writer padding (known only from a manifest).
    """

    path: Path
    header: PackedHeader
    num_tokens: int
    max_token_id: int | None = None
    _mmap: np.memmap | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], num_tokens: int | None = None,
             max_token_id: int | None = None) -> PackedFile:
        header = read_header(path)
        n = header.chunk_size if num_tokens is None else int(num_tokens)
        if not 0 <= n <= header.chunk_size:
            raise PackedFormatError(path, f"manifest says {n} tokens but the header holds only {header.chunk_size}")
        return cls(Path(path), header, n, max_token_id)

    @property
    def tokens(self) -> np.ndarray:
        """The real tokens (a read-only memmap view; nothing is read until sliced)."""
        if self._mmap is None:
            self._mmap = open_tokens(self.path, self.header)
        return self._mmap[: self.num_tokens]

    def close(self) -> None:
        self._mmap = None


def list_packed_files(directory: str | os.PathLike[str], prefix: str = "") -> list[Path]:
    """``{directory}/{prefix}*.bin`` sorted by name (the TinyLlama convention: a prefix is a glob prefix)."""
    d = Path(directory)
    return sorted(p for p in d.glob(f"{glob_escape(prefix)}*.bin") if p.is_file())


def glob_escape(text: str) -> str:
    """Escape glob metacharacters so a prefix is matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass(frozen=True)
class WrittenFile:
    """What :class:`PackedWriter` wrote: the final path, the real tokens in it, their largest id."""

    path: Path
    num_tokens: int
    max_token_id: int
    num_documents: int = 0


class PackedWriter:
    """Append token arrays; every ``chunk_size`` tokens become one ``{prefix}_{counter:010d}.bin`` file.

    ``close()`` writes the final partial chunk padded with ``pad_id`` to the full chunk size (LitGPT readers need
    equal-sized files); :attr:`files` records how many tokens of each file are real. ``suffix`` (e.g. ``".tmp"``)
    is appended to every file name so a caller can publish a set of files atomically by renaming them later.
    Ids outside the dtype's range are refused instead of silently wrapping around.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        prefix: str,
        *,
        chunk_size: int,
        dtype: np.dtype | type | str = np.uint16,
        pad_id: int = 0,
        start_counter: int = 0,
        suffix: str = "",
        eos_id: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self._header = encode_header(self.dtype, chunk_size)
        self.chunk_size = int(chunk_size)
        self.suffix = suffix
        self.eos_id = eos_id
        self._info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self._check_range(np.asarray([pad_id]), "pad id")
        self.pad_id = pad_id
        self._buf = np.full(self.chunk_size, pad_id, dtype=self.dtype)
        self._fill = 0
        self._counter = start_counter
        self._max = -1
        self._docs = 0
        self.files: list[WrittenFile] = []
        self.num_tokens = 0
        self._closed = False

    def _check_range(self, arr: np.ndarray, what: str = "token id") -> None:
        if arr.size == 0 or self._info is None:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < self._info.min or hi > self._info.max:
            bad = hi if hi > self._info.max else lo
            raise ValueError(
                f"{what} {bad} does not fit the packed dtype {self.dtype} (range {self._info.min}..{self._info.max}); "
                "use a wider dtype (int32) for vocabularies of 65 500 tokens or more"
            )

    def write(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append tokens (any integer array-like); full chunks are written out as they fill."""
        if self._closed:
            raise RuntimeError("PackedWriter is closed")
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        self._check_range(arr)
        pos = 0
        while pos < arr.size:
            n = min(arr.size - pos, self.chunk_size - self._fill)
            piece = arr[pos : pos + n]
            self._buf[self._fill : self._fill + n] = piece
            if n:
                self._max = max(self._max, int(piece.max()))
                if self.eos_id is not None:
                    self._docs += int(np.count_nonzero(piece == self.eos_id))
            self._fill += n
            pos += n
            if self._fill == self.chunk_size:
                self._flush()

    def _flush(self) -> None:
        path = self.directory / (packed_file_name(self.prefix, self._counter) + self.suffix)
        with open(path, "wb") as f:
            f.write(self._header)
            f.write(self._buf.tobytes(order="C"))
        self.files.append(WrittenFile(path, self._fill, self._max, self._docs))
        self.num_tokens += self._fill
        self._counter += 1
        self._fill, self._max, self._docs = 0, -1, 0
        self._buf.fill(self.pad_id)

    def close(self) -> list[WrittenFile]:
        """Write the last partial chunk (padded) and return every file written."""
        if not self._closed:
            if self._fill:
                self._flush()
            self._closed = True
        return self.files

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
