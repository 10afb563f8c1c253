"""Tokenizers behind one small interface: HF ``tokenizer.json``, SentencePiece ``.model``, tiktoken rank files.

Why a wrapper: data preparation, the default corpus and evaluation need only ``encode`` / ``decode`` /
``vocab_size`` / ``eos_id``; hiding the three libraries behind that keeps them optional (each is imported only
when its kind of file is loaded) and gives one place for the rules that matter for pretraining data: text never
turns into special tokens (a literal ``<|endoftext|>`` inside a document must not end it), no BOS/EOS is added
by ``encode`` (the caller appends EOS once per document), and the EOS id is found reliably.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFAULT_EOS = "<|endoftext|>"
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")

_INSTALL_HINT = "pip install 'archscale[data]'"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this tokenizer/data feature: {_INSTALL_HINT}") from e


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a tokenizer file, recorded with prepared data so a mismatch is detectable."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer(ABC):
    """Text ↔ token ids. ``encode`` adds no special tokens and never maps text to them."""

    path: Path
    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (every id is < vocab_size)."""

    @property
    @abstractmethod
    def eos_id(self) -> int | None:
        """The end-of-document token appended after every document, if the tokenizer has one."""

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many documents (subclasses use the library's batched, multi-threaded path)."""
        return [self.encode(t) for t in texts]

    def sha256(self) -> str:
        return file_sha256(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` JSON file (``tokenizer.json``)."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike[str], eos_token: str | None = None) -> None:
        tk = _require("tokenizers")
        self.path = Path(path)
        try:
            self._tok = tk.Tokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises a bare Exception on malformed JSON
            raise ValueError(f"{self.path}: not a valid Hugging Face tokenizer.json ({e})") from e
        # Text must never become a special token: a document quoting "<|endoftext|>" would otherwise end early.
        self._tok.encode_special_tokens = True
        self._eos = self._find_eos(eos_token)

    def _find_eos(self, eos_token: str | None) -> int | None:
        if eos_token is not None:
            i = self._tok.token_to_id(eos_token)
            if i is None:
                raise ValueError(f"{self.path}: has no token {eos_token!r} to use as EOS")
            return i
        cfg = self.path.with_name("tokenizer_config.json")
        if cfg.exists():  # a model directory names its EOS in tokenizer_config.json
            try:
                eos = json.loads(cfg.read_text()).get("eos_token")
                eos = eos.get("content") if isinstance(eos, dict) else eos
                if isinstance(eos, str) and self._tok.token_to_id(eos) is not None:
                    return self._tok.token_to_id(eos)
            except (OSError, json.JSONDecodeError):
                pass
        for cand in _EOS_CANDIDATES:
            i = self._tok.token_to_id(cand)
            if i is not None:
                return i
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` (e.g. the Llama-2 32 000-piece tokenizer ArchScale uses)."""

    kind = "sentencepiece"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        spm = _require("sentencepiece")
        self.path = Path(path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except Exception as e:
            raise ValueError(f"{self.path}: not a valid SentencePiece model ({e})") from e

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    @property
    def eos_id(self) -> int | None:
        i = int(self._sp.eos_id())
        return None if i < 0 else i

    def encode(self, text: str) -> list[int]:
        # Plain encode treats "</s>" in text as ordinary characters and adds no BOS/EOS.
        return list(self._sp.EncodeAsIds(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self._sp.Encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])


class TiktokenTokenizer(Tokenizer):
    """A tiktoken rank file (``base64(token) rank`` per line), loaded offline from a local path.

    A rank file holds neither the pre-tokenization regex nor the special tokens. For the OpenAI encodings named
    by the file (``gpt2``, ``r50k_base``, ``p50k_base``, ``cl100k_base``, ``o200k_base``) those are taken from
    tiktoken's own definitions; for any other file the GPT-2 regex is used and ``<|endoftext|>`` is added as the
    id after the last rank.
    """

    kind = "tiktoken"

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        tiktoken = _require("tiktoken")
        from tiktoken.load import load_tiktoken_bpe

        self.path = Path(path)
        try:
            ranks = load_tiktoken_bpe(str(self.path))
        except Exception as e:
            raise ValueError(f"{self.path}: not a valid tiktoken rank file ({e})") from e
        name = name or self.path.name.split(".")[0]
        spec = _openai_spec(name)
        if spec is None:
            from tiktoken_ext.openai_public import r50k_pat_str

            spec = {"pat_str": r50k_pat_str, "special_tokens": {DEFAULT_EOS: max(ranks.values()) + 1}}
        self._enc = tiktoken.Encoding(
            name=f"archscale:{self.path.name}",
            pat_str=spec["pat_str"],
            mergeable_ranks=ranks,
            special_tokens=spec["special_tokens"],
        )
        self._eos = spec["special_tokens"].get(DEFAULT_EOS)

    @property
    def vocab_size(self) -> int:
        return int(self._enc.n_vocab)

    @property
    def eos_id(self) -> int | None:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])


def _openai_spec(name: str) -> dict | None:
    """Regex and special tokens of a named OpenAI encoding, without downloading its rank file."""
    try:
        import tiktoken_ext.openai_public as op
    except ImportError:
        return None
    ctor = op.ENCODING_CONSTRUCTORS.get(name)
    if ctor is None:
        return None
    # The constructor would download the ranks; we have them locally, so stub the loaders while calling it.
    real = op.load_tiktoken_bpe, op.data_gym_to_mergeable_bpe_ranks
    op.load_tiktoken_bpe = op.data_gym_to_mergeable_bpe_ranks = lambda *a, **k: {}
    try:
        spec = ctor()
    finally:
        op.load_tiktoken_bpe, op.data_gym_to_mergeable_bpe_ranks = real
    return {"pat_str": spec["pat_str"], "special_tokens": dict(spec["special_tokens"])}


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer by file type: ``*.json`` (HF), ``*.model`` (SentencePiece), ``*.tiktoken`` (tiktoken).

    A directory is searched for ``tokenizer.json``, then ``tokenizer.model``, then a single ``*.tiktoken``.
    """
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (p / name).exists():
                return load_tokenizer(p / name)
        tk = sorted(p.glob("*.tiktoken"))
        if len(tk) == 1:
            return load_tokenizer(tk[0])
        raise FileNotFoundError(f"{p}: no tokenizer.json, tokenizer.model or single *.tiktoken file in this directory")
    if not p.exists():
        raise FileNotFoundError(f"tokenizer {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".json":
        return HFTokenizer(p)
    if suffix == ".model":
        return SentencePieceTokenizer(p)
    if suffix == ".tiktoken":
        return TiktokenTokenizer(p)
    raise ValueError(
        f"{p}: unknown tokenizer type {suffix!r}; expected a Hugging Face tokenizer.json (.json), a SentencePiece "
        "model (.model) or a tiktoken rank file (.tiktoken)"
    )


def train_bpe_tokenizer(
    texts_or_files: Iterable[str | os.PathLike[str]],
    vocab_size: int,
    out_path: str | os.PathLike[str],
    *,
    eos_token: str = DEFAULT_EOS,
    min_frequency: int = 2,
) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style: any byte sequence is encodable, no unknown token) and save it.

    ``texts_or_files``: an iterable of documents: strings are text, ``os.PathLike`` objects (``Path``) are files
    whose whole contents are one document. The EOS special token gets id 0. Returns the loaded
    tokenizer. Training on ~12 MB of text takes a few seconds.
    """
    tk = _require("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 1:
        raise ValueError(f"a byte-level BPE needs vocab_size >= 257 (256 bytes + EOS), got {vocab_size}")

    def docs() -> Iterable[str]:
        for item in texts_or_files:
            if isinstance(item, os.PathLike):
                yield Path(item).read_text(encoding="utf-8", errors="replace")
            else:
                yield str(item)

    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs(), trainer=trainer)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, out)
    if tok.get_vocab_size() < vocab_size:
        import warnings

        warnings.warn(f"{out}: the trained vocabulary has {tok.get_vocab_size()} tokens, fewer than the "
                      f"{vocab_size} asked for (the text offers no more merges); give it more text", stacklevel=2)
    return HFTokenizer(out, eos_token=eos_token)
