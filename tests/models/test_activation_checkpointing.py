"""Activation checkpointing (``model.activation_checkpointing``, recipe ``system.activation_checkpointing``): the
same loss and gradients as without it, for layers that hand values to later layers (GMU memory, YOCO K,V) too,
and fewer activations kept for the backward pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from archscale.models.api import SeqInfo
from archscale.models.lm import LanguageModel, build_model
from archscale.models.patterns import PatternConfig, pattern
from archscale.registry import architectures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from tiny_run import TINY_MODELS, tiny_recipe, write_pattern_data  # noqa: E402

SMALL = {"n_embd": 32, "n_head": 2, "head_dim": 16, "n_kv_head": 1, "vocab_size": 97, "block_size": 64}


def _model(name: str) -> LanguageModel:
    torch.manual_seed(0)
    if name == "two_memories":
        # Two memory producers with a GMU after each: when the first GMU is recomputed in the backward pass, the
        # second producer has already overwritten shared.memory; the GMU must still read the first one's memory.
        spec = pattern(PatternConfig(pattern="mamba* gmu mamba* gmu attn", mixer_params={"mamba": {"d_state": 4}},
                                     **SMALL))
    else:
        params = {**TINY_MODELS[name], "vocab_size": 97, "block_size": 64}
        spec = architectures.get(name)(architectures.config_model(name).model_validate(params))
    return build_model(spec)


def _loss_and_grads(model: LanguageModel, ids: torch.Tensor, seq: SeqInfo | None) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(ids[:, :-1], seq, targets=ids[:, 1:]).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
@pytest.mark.parametrize("name", ["transformer", "sambay", "two_memories"])
def test_same_loss_and_gradients(name: str, varlen: bool) -> None:
    model = _model(name).train()
    ids = torch.randint(0, 97, (1 if varlen else 2, 41))
    seq = SeqInfo.from_cu_seqlens(torch.tensor([0, 7, 8, 30, 40])) if varlen else None
    loss, grads = _loss_and_grads(model, ids, seq)
    model.activation_checkpointing = True
    loss_ckpt, grads_ckpt = _loss_and_grads(model, ids, seq)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(model.parameters()))
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-5, atol=1e-7, msg=n)


def test_keeps_fewer_activations_for_backward() -> None:
    model = _model("sambay").train()
    ids = torch.randint(0, 97, (2, 64))

    def saved_bytes() -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
        return total

    plain = saved_bytes()
    model.activation_checkpointing = True
    checkpointed = saved_bytes()
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


def test_off_in_eval_and_without_grad() -> None:
    model = _model("transformer")
    model.activation_checkpointing = True
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        a = model.train()(ids).logits
    b = model.eval()(ids).logits
    torch.testing.assert_close(a, b)


def test_recipe_switch_reaches_the_trainer(tmp_path: Path) -> None:
    from archscale.train.metrics import read_metrics
    from archscale.train.trainer import Trainer

    data = write_pattern_data(tmp_path / "data")
    losses = {}
    for flag in (False, True):
        trainer = Trainer(tiny_recipe(data, tmp_path / str(flag), arch="sambay", activation_checkpointing=flag))
        trainer.fit()
        assert trainer.model.activation_checkpointing is flag
        losses[flag] = [r["loss"] for r in read_metrics(tmp_path / str(flag)) if "loss" in r]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_under_torch_compile() -> None:
    """The Trainer compiles the model on CUDA: checkpointed blocks trace (aot_eager here, a fast CPU backend) and
    give the eager gradients."""
    model = _model("sambay").train()
    ids = torch.randint(0, 97, (2, 33))
    _, grads = _loss_and_grads(model, ids, None)
    model.activation_checkpointing = True
    compiled = torch.compile(model, backend="aot_eager")
    compiled.zero_grad(set_to_none=True)
    compiled(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)
