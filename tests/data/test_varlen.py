"""Document boundaries from EOS: cu_seqlens, max_seqlen and positions, checked against a plain-Python reference."""

from __future__ import annotations

import pytest
import torch

from archscale.data.varlen import seq_info_from_eos
from archscale.models.api import SeqInfo

EOS = 0


def reference(ids: torch.Tensor, eos: int) -> tuple[list[int], list[int]]:
    """cu_seqlens and positions by walking the tokens one by one."""
    cu, pos = [0], []
    flat = ids.tolist()
    n = 0
    for row in flat:
        p = 0
        for j, t in enumerate(row):
            pos.append(p)
            p += 1
            n += 1
            if t == eos or j == len(row) - 1:
                cu.append(n)
                p = 0
    return cu, pos


def check(ids: torch.Tensor) -> SeqInfo:
    s = seq_info_from_eos(ids, EOS)
    cu, pos = reference(ids, EOS)
    assert s.cu_seqlens is not None and s.cu_seqlens.dtype == torch.int32
    assert s.cu_seqlens.tolist() == cu
    assert s.position_ids.tolist() == [pos]
    assert s.position_ids.dtype == torch.long
    assert s.batch_size == 1 and s.seq_len == ids.numel()
    assert s.max_seqlen == max(b - a for a, b in zip(cu[:-1], cu[1:]))
    # The model's own constructor agrees.
    s2 = SeqInfo.from_cu_seqlens(s.cu_seqlens)
    assert torch.equal(s2.position_ids, s.position_ids) and s2.max_seqlen == s.max_seqlen
    return s


def test_no_eos_each_row_is_one_document() -> None:
    s = check(torch.full((3, 5), 7))
    assert s.cu_seqlens.tolist() == [0, 5, 10, 15]
    assert s.max_seqlen == 5


def test_eos_first_last_and_consecutive() -> None:
    ids = torch.tensor([
        [0, 5, 6, 7, 8, 9],   # EOS first: a length-1 document, then the rest
        [5, 6, 7, 8, 9, 0],   # EOS last: coincides with the row end (no empty document)
        [5, 0, 0, 0, 6, 7],   # consecutive EOS: each a length-1 document
        [0, 0, 0, 0, 0, 0],   # all EOS
    ])
    s = check(ids)
    assert s.cu_seqlens.tolist() == [0, 1, 6, 12, 14, 15, 16, 18, 19, 20, 21, 22, 23, 24]
    assert s.position_ids[0, 12:18].tolist() == [0, 1, 0, 0, 0, 1]
    assert s.max_seqlen == 6


def test_single_token() -> None:
    assert check(torch.tensor([[3]])).cu_seqlens.tolist() == [0, 1]
    assert check(torch.tensor([[0]])).cu_seqlens.tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_random_batches_match_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 4, (4, 33), generator=g)  # EOS (0) with probability 1/4
    check(ids)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        seq_info_from_eos(torch.zeros(5, dtype=torch.long), EOS)
    with pytest.raises(ValueError, match="empty"):
        seq_info_from_eos(torch.zeros(2, 0, dtype=torch.long), EOS)


def test_input_not_modified() -> None:
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    before = ids.clone()
    seq_info_from_eos(ids, EOS)
    assert torch.equal(ids, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stays_on_device() -> None:
    ids = torch.randint(0, 4, (2, 64), device="cuda")
    s = seq_info_from_eos(ids, EOS)
    assert s.cu_seqlens.device == ids.device and s.position_ids.device == ids.device
    assert s.cu_seqlens.tolist() == reference(ids.cpu(), EOS)[0]
