"""On a CUDA device: the Trainer with bf16-mixed and torch.compile trains, and bf16 matches the fp32 reference."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from tiny_run import tiny_recipe, write_pattern_data  # type: ignore[import-not-found]  # noqa: E402

from archscale.train.metrics import read_metrics  # noqa: E402
from archscale.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.gpu


def test_trainer_bf16_compiled_on_cuda(tmp_path: Path) -> None:
    data = write_pattern_data(tmp_path / "data")
    recipe = tiny_recipe(data, tmp_path / "run", device="cuda", compile=True, precision="auto")
    result = Trainer(recipe).fit()
    records = read_metrics(tmp_path / "run")
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < vals[0] - 1.0
    assert all("peak_mem_gib" in r for r in records if "loss" in r)
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN


@pytest.mark.parametrize("tf32", [False, True])
def test_trainer_sets_tf32_as_the_recipe_says(tmp_path: Path, set_tf32: Callable[[bool], None], tf32: bool) -> None:
    """system.tf32 reaches PyTorch's flags on CUDA, which GDN's Triton state pass and fp32 products follow."""
    data = write_pattern_data(tmp_path / "data")
    recipe = tiny_recipe(data, tmp_path / "run", device="cuda", compile=False, precision="auto", tf32=tf32)
    set_tf32(not tf32)
    Trainer(recipe).fit()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)


def test_bf16_autocast_forward_close_to_fp32() -> None:
    from archscale.models.archs import TransformerConfig, transformer
    from archscale.models.lm import build_model

    torch.manual_seed(0)
    spec = transformer(TransformerConfig(depth=2, n_embd=256, n_head=4, head_dim=64, n_kv_head=2, vocab_size=1000))
    model = build_model(spec).cuda()
    x = torch.randint(0, 1000, (2, 128), device="cuda")
    with torch.no_grad():
        ref = model(x).logits.float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x).logits.float()
    rel = (low - ref).norm() / ref.norm()
    assert rel < 2e-2, float(rel)
