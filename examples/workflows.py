"""The workflows of the original ArchScale README as archscale recipes (docs/workflows.md).

Each workflow is a function returning a :class:`~archscale.Recipe`, usable from the shell as
``examples/workflows.py:FUNCTION``::

    archscale resolve examples/workflows.py:sambay_flops_scaling --depths 8,12,16,20,24
    archscale sweep examples/workflows.py:sambay_flops_scaling --depths 8,12,16,20,24 --emit

ArchScale switched behaviour on substrings of ``--train_name`` (``scaling_mup_tie_rbase_varlen``); here every such
switch is an explicit field: ``parametrization="mup++"`` (μP++, Ren et al. 2025), ``tie_embeddings=True``,
``rope_base=640_000``, ``data.varlen=True``. Hyperparameters are tuned at the base depth d0 = 16 and transferred
by the ``archscale_v1`` scaling law (REFERENCE §4).

The full-size recipes need real data (``data.sources``: the paths below are placeholders, replace them with your
``archscale data prepare`` output) and GPUs. Every workflow also has a ``*_tiny`` twin: the same choices
(architecture family, parametrization, law, tying, RoPE base, varlen) at toy sizes on the embedded corpus, which
trains a few steps on a CPU in seconds (tests/examples/test_workflows.py trains each one).
"""

from __future__ import annotations

from typing import Any

from archscale import Recipe

# Placeholder data locations (ArchScale used SlimPajama and ProLong-64K tokenized with the Llama-2 tokenizer).
SLIMPAJAMA = "/data/slimpajama/train"
PROLONG_64K = "/data/prolong64k/train"
PHI4_DATA = "/data/phi4/train"

__all__ = [
    "sambay_flops_scaling",
    "tfpp_data_scaling",
    "tfpp_lr_sweep_d8",
    "tfpp_long_context_32k",
    "phi4_mini_flash",
    "tiny",
    "sambay_flops_scaling_tiny",
    "tfpp_data_scaling_tiny",
    "tfpp_lr_sweep_d8_tiny",
    "tfpp_long_context_32k_tiny",
    "phi4_mini_flash_tiny",
]


# --------------------------------------------------------------------------------------------- full size
def sambay_flops_scaling() -> Recipe:
    """FLOPs scaling of SambaY under μP++ (README "Scaling FLOPs"): d16 here, swept over depths 8-24 with
    ``archscale sweep ... --depths 8,12,16,20,24``. The v1 law gives each depth T = t0 · N(d)/N(d0) tokens
    (≈ 100 tokens per non-embedding parameter), the b0 = 2²¹-token batch and η0 = 4e-4 transferred by μP++."""
    return Recipe(
        name="sambay-flops",
        model={"name": "sambay", "params": {"depth": 16}},
        data={"seq_len": 4096, "sources": {SLIMPAJAMA: 1.0}},
        parametrization="mup++",
        optimizer={"name": "adamw"},
        schedule={"name": "linear"},
        budget={"micro_batch_size": 4},
        scaling={"law": "archscale_v1"},
    )


def tfpp_data_scaling() -> Recipe:
    """Data scaling of a 1B Transformer++ (d16) under μP++ with tied embeddings (README "Scaling Data"): the
    law takes the token budget from ``budget.tokens`` (100B here), swept with ``--grid
    budget.tokens=1e11,2e11,3e11,4e11,5e11,6e11``; LR, batch and warmup stay those of the base model."""
    return Recipe(
        name="tfpp-data",
        model={"name": "transformer", "params": {"depth": 16, "tie_embeddings": True}},
        data={"seq_len": 4096, "sources": {SLIMPAJAMA: 1.0}},
        parametrization="mup++",
        optimizer={"name": "adamw"},
        schedule={"name": "linear"},
        budget={"tokens": 100_000_000_000, "micro_batch_size": 4},
        scaling={"law": {"name": "archscale_v1", "params": {"tokens": "budget"}}},
    )


def tfpp_lr_sweep_d8() -> Recipe:
    """Learning-rate tuning at d8 for d16 (README "Hyper-parameters Tuning"): ``scaling.base.lr`` is η0 of the
    d16, 100B-token base model, but the run trains the d8 model (≈ 12.5B tokens) that μP++ and the law derive
    from it. Sweep with ``--lrs 1e-4,4e-4,1e-3``; the best η0 then applies unchanged at d16."""
    return Recipe(
        name="tfpp-lr-d8",
        model={"name": "transformer", "params": {"depth": 8}},
        data={"seq_len": 4096, "sources": {SLIMPAJAMA: 1.0}},
        parametrization="mup++",
        optimizer={"name": "adamw"},
        schedule={"name": "linear"},
        budget={"micro_batch_size": 8},
        scaling={"law": "archscale_v1", "base": {"depth": 16, "lr": 4e-4}},
    )


def tfpp_long_context_32k() -> Recipe:
    """32K-context training of a d16 Transformer++ on 40B tokens (README "Long-Context Training", ArchScale's
    ``rbase`` and ``varlen``): RoPE base 640 000 instead of 10 000, and document-masked (varlen) batches in which
    attention never crosses an EOS. One 32K sequence per device and micro-batch."""
    return Recipe(
        name="tfpp-32k",
        model={"name": "transformer", "params": {"depth": 16, "block_size": 32768, "rope_base": 640_000.0}},
        data={"seq_len": 32768, "varlen": True, "sources": {PROLONG_64K: 1.0}},
        parametrization="mup++",
        optimizer={"name": "adamw"},
        schedule={"name": "linear"},
        budget={"tokens": 40_000_000_000, "micro_batch_size": 1},
        scaling={"law": {"name": "archscale_v1", "params": {"tokens": "budget"}}},
    )


def phi4_mini_flash() -> Recipe:
    """Phi4-mini-flash pretraining (README "Pretrain Phi4-mini-Flash"): the 3.8B ``phi4miniflash`` architecture
    (d32, SambaY-DA with 200 064-token tied vocabulary), standard parametrization, 5T tokens at context 8192,
    η0 = 5e-4, a 2²³-token batch and 25 165 824 000 warmup tokens (3 000 steps)."""
    return Recipe(
        name="phi4-mini-flash",
        model={"name": "phi4miniflash", "params": {}},
        data={"seq_len": 8192, "sources": {PHI4_DATA: 1.0}},
        parametrization="sp",
        optimizer={"name": "adamw"},
        schedule={"name": "linear"},
        budget={"tokens": 5_000_000_000_000, "micro_batch_size": 1},  # 2²³ = 1 024 GPUs × 1 × 8192
        scaling={
            "law": {"name": "archscale_v1", "params": {"tokens": "budget"}},
            "base": {"depth": 32, "lr": 5e-4, "batch_tokens": 8_388_608, "warmup_tokens": 25_165_824_000},
        },
    )


# --------------------------------------------------------------------------------------------- tiny twins
# Toy widths that keep each family's structure valid: heads of 16, an even number of KV heads (differential
# attention pairs them), small windows and state; the embedded corpus's 8 192-token BPE.
_TINY_WIDTHS: dict[str, Any] = {"n_embd": 64, "n_head": 4, "head_dim": 16, "n_kv_head": 2, "vocab_size": 8192}
_TINY_HYBRID: dict[str, Any] = {"window": 16, "recurrent_params": {"d_state": 4}}


def tiny(recipe: Recipe, *, depth: int = 4, seq_len: int = 64, steps: int = 8) -> Recipe:
    """``recipe`` at toy size on the embedded corpus, keeping its architecture family, parametrization, scaling
    law (with the budget section's length), tying, RoPE base and varlen: ``depth`` layers of width 64,
    ``seq_len`` tokens per sample, ``steps`` optimizer steps of 8 sequences. The base depth becomes ``depth``
    so that μP++'s multipliers stay O(1)."""
    data = recipe.model_dump(mode="json", exclude_unset=True)
    params = dict(data["model"].get("params", {}))
    kept = {k: params[k] for k in ("tie_embeddings", "rope_base") if k in params}
    hybrid = data["model"]["name"] != "transformer"
    params = {**_TINY_WIDTHS, **(_TINY_HYBRID if hybrid else {}), **kept, "depth": depth, "block_size": seq_len}
    if data["model"]["name"] == "phi4miniflash":
        params["tie_embeddings"] = True  # its default, restated because the tiny vocabulary is not the default
    data["model"]["params"] = params
    data["name"] = f"{recipe.name}-tiny"
    data["data"] = {"seq_len": seq_len, "varlen": recipe.data.varlen}  # no sources: the embedded corpus
    data["budget"] = {"steps": steps, "global_batch_tokens": 8 * seq_len, "micro_batch_size": 8}
    scaling = data.setdefault("scaling", {})
    if recipe.scaling.law is not None:
        law = scaling["law"]
        scaling["law"] = {"name": law["name"], "params": {**law.get("params", {}), "tokens": "budget"}}
    scaling["base"] = {**scaling.get("base", {}), "depth": depth, "batch_tokens": 8 * seq_len,
                       "warmup_tokens": 2 * 8 * seq_len, "lr": 3e-3}
    data["system"] = {"device": "cpu", "log_every": 1, "val_every": steps, "val_batches": 2,
                      "checkpoint_every": steps, "progress": False}
    return Recipe.model_validate(data)


def sambay_flops_scaling_tiny() -> Recipe:
    """:func:`sambay_flops_scaling` at toy size (CPU, seconds)."""
    return tiny(sambay_flops_scaling())


def tfpp_data_scaling_tiny() -> Recipe:
    """:func:`tfpp_data_scaling` at toy size (CPU, seconds)."""
    return tiny(tfpp_data_scaling())


def tfpp_lr_sweep_d8_tiny() -> Recipe:
    """:func:`tfpp_lr_sweep_d8` at toy size: depth 2 trained, base depth 4 (the transfer ratio of d8 → d16)."""
    recipe = tiny(tfpp_lr_sweep_d8(), depth=2)
    return recipe.model_copy(update={"scaling": recipe.scaling.model_copy(
        update={"base": recipe.scaling.base.model_copy(update={"depth": 4})})})


def tfpp_long_context_32k_tiny() -> Recipe:
    """:func:`tfpp_long_context_32k` at toy size: 256-token context, still varlen with RoPE base 640 000."""
    return tiny(tfpp_long_context_32k(), seq_len=256, steps=4)


def phi4_mini_flash_tiny() -> Recipe:
    """:func:`phi4_mini_flash` at toy size: the same layer pattern rule (differential attention, LayerNorm,
    biases, tied embeddings) at depth 4."""
    return tiny(phi4_mini_flash())
