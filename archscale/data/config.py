"""The ``data`` section of a recipe: what to train on, at which context, and how validation data is chosen."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class DataConfig(BaseModel):
    """Training and validation data. Empty ``sources`` means the embedded default corpus (State of the Union
    addresses, 8 192-token BPE), so a recipe trains out of the box without a network."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(
        256, ge=1, description="Training context in tokens; each sample is a window of seq_len + 1 tokens "
        "(inputs and shifted targets).")
    varlen: bool = Field(
        False, description="Document-masked training: attention and recurrent state do not cross EOS "
        "boundaries inside a packed window (needs an EOS id).")
    sources: dict[str, float] = Field(
        default_factory=dict, description="Packed-data sources (a directory, or dir/prefix matching "
        "dir/prefix*.bin) mapped to mixture weights; each sample's source is drawn by weight. Empty: the "
        "embedded default corpus.")
    val_sources: dict[str, float] = Field(
        default_factory=dict, description="Validation sources and weights. Empty: hold out val_fraction of each "
        "training source (whole addresses for the default corpus).")
    val_fraction: float = Field(
        0.02, ge=0.0, lt=1.0, description="Fraction of each training source's tokens held out (its tail, cut "
        "at a document boundary) for validation when val_sources is empty; 0 disables validation.")
    tokenizer: str | None = Field(
        None, description="Tokenizer file (tokenizer.json, SentencePiece .model, .tiktoken) used for the data. "
        "None: the tokenizer recorded with the prepared data, or the default corpus tokenizer.")
    eos_id: int | None = Field(
        None, ge=0, description="End-of-document token id (varlen boundaries). None: from the tokenizer or the "
        "data manifest.")
    split_search_tokens: int = Field(
        1 << 20, ge=0, description="How far past the val_fraction cut to look for an EOS so that no document is "
        "split between training and validation (0: cut exactly).")

    @field_validator("sources", "val_sources")
    @classmethod
    def _weights(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        for name, w in v.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{info.field_name}: source names must be non-empty paths, got {name!r}")
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise ValueError(f"{info.field_name}[{name!r}]: mixture weight must be a finite number > 0, got {w!r}")
        return v
