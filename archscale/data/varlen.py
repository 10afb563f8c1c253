"""Document boundaries of a packed batch (varlen / document-masked training) from its EOS tokens.

A packed training window holds several documents separated by EOS. With ``varlen`` the model must not let
attention or recurrent state cross from one document into the next; kernels take that as ``cu_seqlens`` over one
flattened row (the fla / flash-attn convention, B = 1). A document ends *after* its EOS (the EOS belongs to the
document it closes, so predicting it is learned), and every original row boundary is a document boundary too:
rows are independent windows.

Everything is vectorised on the batch's device; the only host syncs are the ones the result's shape and
``max_seqlen`` (a Python int) require.
"""

from __future__ import annotations

import torch

from archscale.models.api import SeqInfo


def seq_info_from_eos(input_ids: torch.Tensor, eos_id: int) -> SeqInfo:
    """:class:`SeqInfo` for ``input_ids`` (B, T) flattened to one packed row of B·T tokens.

    ``cu_seqlens`` (int32, same device) = [0, every EOS position + 1, every row end, B·T] without duplicates;
    ``position_ids`` (1, B·T) restart at 0 at each document start; ``max_seqlen`` the longest document.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    N = B * T
    if N == 0:
        raise ValueError("input_ids is empty")
    device = input_ids.device
    # is_end[i]: token i is the last of its document (an EOS, or the last token of a row).
    is_end = (input_ids == eos_id)
    is_end[:, -1] = True
    is_end = is_end.reshape(N)
    ends = torch.nonzero(is_end).squeeze(1)  # (n_docs,) sorted; the last entry is N - 1
    cu_seqlens = torch.zeros(ends.numel() + 1, dtype=torch.int32, device=device)
    cu_seqlens[1:] = (ends + 1).to(torch.int32)
    # Position within the document: index minus the start of the document it is in. A token starts a document
    # when the previous token ended one; the running max of start indices gives each token's document start.
    idx = torch.arange(N, device=device)
    starts = torch.zeros(N, dtype=torch.long, device=device)
    starts[1:] = torch.where(is_end[:-1], idx[1:], torch.zeros_like(idx[1:]))
    starts = torch.cummax(starts, dim=0).values
    position_ids = (idx - starts).unsqueeze(0)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return SeqInfo(batch_size=1, seq_len=N, position_ids=position_ids, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
