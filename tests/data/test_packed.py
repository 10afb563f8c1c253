"""The LITPKDS format: exact header bytes, byte compatibility with an independent reader/writer, clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from archscale.data.packed import (
    HEADER_SIZE,
    PackedFile,
    PackedFormatError,
    PackedWriter,
    list_packed_files,
    open_tokens,
    read_header,
)
from archscale.data.sources import resolve_source

# Codes straight from REFERENCE §6, written independently of archscale.data.packed.
SPEC_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def spec_write(directory: Path, prefix: str, chunks: list[np.ndarray], dtype) -> list[Path]:
    """An independent LITPKDS writer following the spec: b"LITPKDS", <Q version 1, <B code, <Q chunk_size."""
    paths = []
    for counter, chunk in enumerate(chunks):
        arr = np.ascontiguousarray(chunk, dtype=np.dtype(dtype).newbyteorder("<"))
        path = directory / f"{prefix}_{counter:010d}.bin"
        with open(path, "wb") as f:
            f.write(b"LITPKDS")
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", SPEC_CODES[np.dtype(dtype)]))
            f.write(struct.pack("<Q", len(arr)))
            f.write(arr.tobytes())
        paths.append(path)
    return paths


def spec_read(path: Path) -> tuple[int, int, int, np.ndarray]:
    """An independent reader: (version, dtype code, chunk_size, tokens)."""
    raw = path.read_bytes()
    assert raw[:7] == b"LITPKDS"
    (version,) = struct.unpack_from("<Q", raw, 7)
    (code,) = struct.unpack_from("<B", raw, 15)
    (chunk,) = struct.unpack_from("<Q", raw, 16)
    dtype = {8: "<u2", 4: "<i4"}[code]
    return version, code, chunk, np.frombuffer(raw, dtype=dtype, offset=24)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_writer_header_layout_is_exact(tmp_path: Path, dtype) -> None:
    tokens = np.arange(25, dtype=np.int64) * 7 + 3
    with PackedWriter(tmp_path, "data", chunk_size=10, dtype=dtype, pad_id=1) as w:
        w.write(tokens[:4])
        w.write(tokens[4:])
    names = [p.name for p in list_packed_files(tmp_path)]
    assert names == ["data_0000000000.bin", "data_0000000001.bin", "data_0000000002.bin"]
    itemsize = np.dtype(dtype).itemsize
    raw = (tmp_path / names[0]).read_bytes()
    assert len(raw) == 24 + 10 * itemsize
    assert raw[0:7] == b"LITPKDS"
    assert raw[7:15] == (1).to_bytes(8, "little")
    assert raw[15] == SPEC_CODES[np.dtype(dtype)]
    assert raw[16:24] == (10).to_bytes(8, "little")
    # The last chunk is padded to the full chunk size (LitGPT's reader needs equal-sized files).
    version, code, chunk, last = spec_read(tmp_path / names[2])
    assert (version, chunk) == (1, 10)
    np.testing.assert_array_equal(last[:5], tokens[20:])
    np.testing.assert_array_equal(last[5:], np.ones(5))
    assert [f.num_tokens for f in w.files] == [10, 10, 5]
    assert w.files[-1].max_token_id == int(tokens.max())


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_archscale_files_read_by_independent_reader(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(0)
    high = 65_535 if dtype == np.uint16 else 2**31 - 1
    tokens = rng.integers(0, high, size=1000, endpoint=True)
    with PackedWriter(tmp_path, "x", chunk_size=300, dtype=dtype) as w:
        w.write(tokens)
    got = np.concatenate([spec_read(p)[3] for p in list_packed_files(tmp_path)])
    np.testing.assert_array_equal(got[:1000], tokens)
    assert all(spec_read(p)[1] == SPEC_CODES[np.dtype(dtype)] for p in list_packed_files(tmp_path))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_independent_files_read_by_archscale(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(1)
    high = 65_535 if dtype == np.uint16 else 2**31 - 1
    chunks = [rng.integers(0, high, size=128, endpoint=True) for _ in range(3)]
    paths = spec_write(tmp_path, "litgpt", chunks, dtype)
    for p, c in zip(paths, chunks):
        h = read_header(p)
        assert (h.dtype, h.chunk_size, h.version) == (np.dtype(dtype), 128, 1)
        mm = open_tokens(p)
        assert isinstance(mm, np.memmap)  # memory-mapped, not read whole
        np.testing.assert_array_equal(mm, c)
    # As a source (no manifest: every token is real), windows can span files.
    src = resolve_source(str(tmp_path / "litgpt"))
    assert src.num_tokens == 3 * 128
    np.testing.assert_array_equal(src.stream.read(100, 200), np.concatenate(chunks)[100:300])
    assert src.max_token_id is None and src.dtype_max == np.iinfo(dtype).max
    one = resolve_source(str(paths[1]))  # a single file is a source too
    np.testing.assert_array_equal(one.stream.read(0, 128), chunks[1])


def _good_file(tmp_path: Path) -> Path:
    return spec_write(tmp_path, "ok", [np.arange(16)], np.uint16)[0]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"LITPKDX" + b[7:], "not a LITPKDS packed file"),
        (lambda b: b[:7] + struct.pack("<Q", 2) + b[15:], "unsupported LITPKDS version 2"),
        (lambda b: b[:15] + bytes([9]) + b[16:], "unknown dtype code 9"),
        (lambda b: b[:16] + struct.pack("<Q", 0) + b[24:], "chunk_size 0"),
        (lambda b: b[:-6], "truncated: the header promises 16 uint16 tokens"),
        (lambda b: b + b"\x00\x00", "2 unexpected bytes"),
        (lambda b: b[:10], "truncated header"),
        (lambda b: b"", "truncated header"),
    ],
)
def test_corrupt_files_give_clear_errors(tmp_path: Path, mutate, message: str) -> None:
    p = _good_file(tmp_path)
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(PackedFormatError) as e:
        read_header(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)  # says which file
    with pytest.raises(PackedFormatError, match=str(p.name)):
        resolve_source(str(tmp_path))


def test_bad_file_among_good_ones_is_named(tmp_path: Path) -> None:
    paths = spec_write(tmp_path, "d", [np.arange(8), np.arange(8), np.arange(8)], np.uint16)
    paths[1].write_bytes(paths[1].read_bytes()[:-1])
    with pytest.raises(PackedFormatError) as e:
        resolve_source(str(tmp_path / "d"))
    assert e.value.path == str(paths[1])


def test_empty_or_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no packed .bin files.*archscale data prepare"):
        resolve_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(str(tmp_path / "nope" / "train"))


def test_float_files_are_refused_as_tokens(tmp_path: Path) -> None:
    # float dtypes are valid LITPKDS, but token ids must be integers when training
    p = tmp_path / "f_0000000000.bin"
    p.write_bytes(b"LITPKDS" + struct.pack("<QBQ", 1, 6, 4) + np.zeros(4, np.float32).tobytes())
    assert read_header(p).dtype == np.float32
    with pytest.raises(ValueError, match="integers"):
        resolve_source(str(tmp_path / "f"))


def test_writer_refuses_ids_outside_dtype(tmp_path: Path) -> None:
    w = PackedWriter(tmp_path, "w", chunk_size=4, dtype=np.uint16)
    with pytest.raises(ValueError, match="70000 does not fit the packed dtype uint16.*int32"):
        w.write([1, 2, 70000])
    with pytest.raises(ValueError, match="-1 does not fit"):
        w.write([-1])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_packed_file_respects_manifest_length(tmp_path: Path) -> None:
    p = spec_write(tmp_path, "m", [np.arange(10)], np.uint16)[0]
    f = PackedFile.open(p, num_tokens=7)
    np.testing.assert_array_equal(f.tokens, np.arange(7))
    with pytest.raises(PackedFormatError, match="manifest says 11 tokens"):
        PackedFile.open(p, num_tokens=11)
    assert HEADER_SIZE == 24
