"""Batches for training and validation: random windows drawn from a weighted mixture, and fixed validation windows.

Training (TinyLlama/ArchScale style): every sample is a window of ``seq_len + 1`` tokens at a uniformly random
offset of a source, the source drawn by mixture weight, with replacement; the stream is infinite. Batch ``i`` of a
rank is drawn from its own generator seeded by ``(seed, rank, world_size, i)`` (numpy ``SeedSequence``), so

* the same (seed, rank, world_size) always gives the same batches, different ranks give independent ones;
* the whole iterator state is one integer, the number of batches drawn: saving it and restoring it continues
  exactly where the run stopped, without replaying anything, and the state is the same on every rank.

Validation: consecutive non-overlapping windows walked in order through each validation source, spread over
ranks; ``batches(n)`` returns the same ``n`` batches on every call, so validation losses are comparable over a run
(and between runs with different training seeds).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from archscale.data.sources import TokenStream

_TRAIN_KEY = 0x6172_6368_7472_6E  # arbitrary constants separating the train and validation random streams
_VAL_KEY = 0x6172_6368_7661_6C
STATE_FORMAT = "archscale-random-windows/2"


def _normalise(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"mixture weights must be finite and > 0, got {list(weights)}")
    return w / w.sum()


class _VocabGuard:
    """Per-batch check that every id is below the model's vocabulary (cheap: one max over a small array)."""

    vocab_limit: int | None = None
    _streams: Sequence[TokenStream]
    _names: Sequence[str]

    def _guard(self, out: np.ndarray, src: np.ndarray, starts: np.ndarray) -> None:
        if self.vocab_limit is None or out.size == 0 or int(out.max()) < self.vocab_limit:
            return
        row = int(np.argmax(out.max(axis=1) >= self.vocab_limit))
        col = int(np.argmax(out[row] >= self.vocab_limit))
        s = int(src[row])
        path, index = self._streams[s].locate(int(starts[row]) + col)
        raise ValueError(
            f"token id {int(out[row, col])} at {path} (token {index}) of data source {self._names[s]!r} is >= the "
            f"model's vocabulary size {self.vocab_limit}: the data was tokenized with a larger vocabulary than the "
            "model's; give the model the tokenizer's vocab_size or re-prepare the data with the model's tokenizer"
        )


class RandomWindows(_VocabGuard):
    """Infinite training batches ``(batch_size, window)`` int64 of random windows from a weighted mixture."""

    def __init__(
        self,
        streams: Sequence[TokenStream],
        weights: Sequence[float],
        names: Sequence[str],
        *,
        batch_size: int,
        window: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got {batch_size}, {window}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        for s, n in zip(streams, names):
            if len(s) < window:
                raise ValueError(
                    f"training source {n!r} has {len(s)} tokens, fewer than one window of {window} tokens "
                    "(seq_len + 1): lower seq_len or add data"
                )
        self._streams, self._names = list(streams), list(names)
        self._weights = [float(w) for w in weights]
        self._p = _normalise(self._weights)
        self._highs = np.array([len(s) - window + 1 for s in streams], dtype=np.int64)
        self.batch_size, self.window = batch_size, window
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.batches_drawn = 0

    def mixture(self) -> list[tuple[str, float, int]]:
        """(source name, normalised weight, training tokens) per source."""
        return [(n, float(p), len(s)) for n, p, s in zip(self._names, self._p, self._streams)]

    def _rng(self, global_index: int) -> np.random.Generator:
        entropy = [_TRAIN_KEY, self.seed % (1 << 64), global_index]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def draw(self, index: int) -> torch.Tensor:
        """Batch number ``index`` of this rank (pure: does not move the iterator).

        Batches form one global stream independent of the world size: rank r's i-th batch is global batch
        i·world_size + r. So N ranks accumulating k micro-batches each see exactly the samples one process
        accumulating N·k micro-batches sees (same losses, up to summation order), and a run can resume on
        another number of ranks and continue the same stream."""
        rng = self._rng(index * self.world_size + self.rank)
        k = len(self._streams)
        src = rng.choice(k, size=self.batch_size, p=self._p) if k > 1 else np.zeros(self.batch_size, np.int64)
        starts = rng.integers(0, self._highs[src])
        out = np.empty((self.batch_size, self.window), dtype=np.int64)
        for i in range(self.batch_size):
            self._streams[src[i]].read(int(starts[i]), self.window, out[i])
        self._guard(out, src, starts)
        return torch.from_numpy(out)

    def next(self) -> torch.Tensor:
        """The next batch, a LongTensor ``(batch_size, seq_len + 1)``."""
        batch = self.draw(self.batches_drawn)
        self.batches_drawn += 1
        return batch

    __next__ = next

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state; identical on every rank (the global batch counter plus what it is only valid
        with), so it can be restored on any world size that divides the counter."""
        return {
            "format": STATE_FORMAT,
            "global_batches_drawn": self.batches_drawn * self.world_size,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "window": self.window,
            "sources": [[n, w] for n, w in zip(self._names, self._weights)],
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue after ``state["global_batches_drawn"]`` global batches. ``strict`` refuses a state saved with another seed,
        batch size, window or mixture, where continuing would silently change the data order; pass
        ``strict=False`` to keep only the counter (e.g. after deliberately changing the mixture)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a training-data state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        if strict:
            mine = self.state_dict()
            diffs = [f"{k}: saved {state.get(k)!r}, now {mine[k]!r}"
                     for k in ("seed", "batch_size", "window", "sources")
                     if _plain(state.get(k)) != _plain(mine[k])]
            if diffs:
                raise ValueError(
                    "the saved data-loader state does not match this data configuration ("
                    + "; ".join(diffs) + "); restore with the same data settings, or load_state_dict(..., "
                    "strict=False) to keep only the batch counter"
                )
        n = int(state["global_batches_drawn"])
        if n < 0:
            raise ValueError(f"global_batches_drawn must be >= 0, got {n}")
        if n % self.world_size:
            raise ValueError(
                f"the saved data position ({n} global batches) is not divisible by the world size "
                f"{self.world_size}: resume on a world size that divides it"
            )
        self.batches_drawn = n // self.world_size


def _plain(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class FixedWindows(_VocabGuard):
    """Validation batches: the same windows, in the same order, on every call to :meth:`batches`."""

    def __init__(
        self,
        streams: Sequence[TokenStream],
        weights: Sequence[float],
        names: Sequence[str],
        *,
        batch_size: int,
        window: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        for s, n in zip(streams, names):
            if len(s) < window:
                raise ValueError(
                    f"validation source {n!r} has {len(s)} tokens, fewer than one window of {window} tokens "
                    "(seq_len + 1): lower seq_len, raise val_fraction, give val_sources, or set val_fraction=0"
                )
        self._streams, self._names = list(streams), list(names)
        self._p = _normalise(weights)
        self._windows = np.array([len(s) // window for s in streams], dtype=np.int64)
        self.batch_size, self.window, self.rank, self.world_size = batch_size, window, rank, world_size

    @property
    def num_windows(self) -> int:
        """Distinct windows available (more batches than this / (batch_size·world_size) repeat windows)."""
        return int(self._windows.sum())

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self._streams)

    def batches(self, num_batches: int) -> Iterator[torch.Tensor]:
        """``num_batches`` LongTensors ``(batch_size, seq_len + 1)``, identical on every call."""
        k = len(self._streams)
        for j in range(num_batches):
            g = (j * self.world_size + self.rank) * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
            if k > 1:
                rng = np.random.default_rng(np.random.SeedSequence([_VAL_KEY, self.rank, self.world_size, j]))
                src = rng.choice(k, size=self.batch_size, p=self._p)
            else:
                src = np.zeros(self.batch_size, dtype=np.int64)
            starts = (g % self._windows[src]) * self.window
            out = np.empty((self.batch_size, self.window), dtype=np.int64)
            for i in range(self.batch_size):
                self._streams[src[i]].read(int(starts[i]), self.window, out[i])
            self._guard(out, src, starts)
            yield torch.from_numpy(out)
