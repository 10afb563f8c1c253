"""The token-mixer contract and the per-batch sequence description every mixer consumes.

Every token mixer (attention, sliding-window attention, Mamba, ...) is an ``nn.Module`` called as
``y, state = mixer(x, seq, state=None)`` with x and y of shape (B, T, D). ``seq`` is one frozen
:class:`SeqInfo` built once per batch. For packed variable-length input (document masking) x is (1, total_T, D)
and ``seq.cu_seqlens`` holds the document boundaries (fla / flash-attn convention): no information may cross
them. State is returned rather than hidden in the module so that "two chunks with carried state equal one full
pass" is testable and decoding reuses the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

ParamRole = Literal["embedding", "head", "matrix", "vector"]
"""Role of a parameter, used by the optimizer router and the parametrization (never parameter names):
embedding = input embedding table; head = output projection to the vocabulary; matrix = hidden weight matrices
(Muon-eligible, width-μP scaled); vector = norms, biases, gains, conv1d kernels, A_log, D, λ, ..."""

PARAM_ROLES: tuple[ParamRole, ...] = ("embedding", "head", "matrix", "vector")


@dataclass(frozen=True)
class SeqInfo:
    """What a mixer needs to know about the token layout of a batch.

    batch_size, seq_len: the (B, T) of x.
    position_ids: (B, T) int64, the position of each token inside its document (RoPE uses it).
    cu_seqlens: None for dense causal batches; else int32 (n_docs + 1,) cumulative document lengths over the
        flattened batch, starting at 0 and ending at B*T (varlen: then B == 1).
    max_seqlen: longest document (== seq_len for dense batches).
    return_state: whether the caller keeps the new states the mixers return (decoding, chunked prefill). The model
        sets it False when it drops them (training): recurrent mixers then skip their final state, and the scan's
        backward the zero gradient of that unused output (a slower kernel variant, benchmarks/RESULTS.md).
    """

    batch_size: int
    seq_len: int
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0
    return_state: bool = True

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_docs(self) -> int:
        return self.batch_size if self.cu_seqlens is None else int(self.cu_seqlens.numel() - 1)

    @staticmethod
    def dense(batch_size: int, seq_len: int, device: torch.device | str = "cpu", offset: int = 0) -> SeqInfo:
        """A plain causal batch: every row is one sequence; positions start at ``offset`` (for decoding)."""
        pos = torch.arange(offset, offset + seq_len, device=device, dtype=torch.long).expand(batch_size, seq_len)
        return SeqInfo(batch_size=batch_size, seq_len=seq_len, position_ids=pos, cu_seqlens=None, max_seqlen=seq_len)

    @staticmethod
    def from_cu_seqlens(cu_seqlens: torch.Tensor) -> SeqInfo:
        """A packed varlen batch (B = 1) from document boundaries."""
        cu = cu_seqlens.to(torch.int32)
        lengths = (cu[1:] - cu[:-1]).long()
        total = int(cu[-1])
        if int(cu[0]) != 0 or bool((lengths <= 0).any()):
            raise ValueError(f"cu_seqlens must start at 0 and strictly increase, got {cu_seqlens.tolist()}")
        starts = torch.repeat_interleave(cu[:-1].long(), lengths)
        pos = (torch.arange(total, device=cu.device) - starts).unsqueeze(0)
        return SeqInfo(batch_size=1, seq_len=total, position_ids=pos, cu_seqlens=cu, max_seqlen=int(lengths.max()))

    def to(self, device: torch.device | str) -> SeqInfo:
        return SeqInfo(
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            position_ids=self.position_ids.to(device),
            cu_seqlens=None if self.cu_seqlens is None else self.cu_seqlens.to(device),
            max_seqlen=self.max_seqlen,
            return_state=self.return_state,
        )


@dataclass
class CrossLayer:
    """Values one layer hands to later layers within one forward call (never stored on modules).

    The model creates a fresh object per forward and passes it to every mixer as ``shared=``; layers write it in
    order, so a layer reads only what an earlier layer of the same forward wrote:
    memory: (B, T, d_m) the un-gated scan output of the memory-producing layer (SambaY's ``M*``) for the tokens of
        this call only, read by Gated Memory Units (Ren et al. 2025; REFERENCE §3);
    kv: (k, v), each (B, H_kv, S, K), the keys (positions already applied) and values of the YOCO full-attention
        layer (Sun et al. 2024), read by the cross-attention layers. When decoding, S counts the cached tokens
        and the new ones (the new tokens are the last T of the S); for a packed varlen batch S = T.
    """

    memory: torch.Tensor | None = None
    kv: Any | None = None


@runtime_checkable
class TokenMixer(Protocol):
    """The call every registered mixer implements (see module docstring). Mixers that neither produce nor consume
    cross-layer values accept and ignore ``shared``."""

    def __call__(
        self, x: torch.Tensor, seq: SeqInfo, state: Any | None = None, shared: CrossLayer | None = None
    ) -> tuple[torch.Tensor, Any]: ...

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token (2 per multiply-add) at context ``seq_len``, matrices and attention scores."""
        ...

    def param_roles(self) -> dict[str, ParamRole]:
        """Role of each of this module's parameters, keyed by the name ``named_parameters()`` gives."""
        ...
