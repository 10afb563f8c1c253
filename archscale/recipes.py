"""Named recipes shipped with archscale (``archscale train default``).

A recipe is a plain function returning a :class:`~archscale.recipe.Recipe`; register your own with
``@archscale.registry.recipes.register("name")`` or through the ``archscale.recipes`` entry-point group, or pass
``path/to/file.py:function`` on the command line.
"""

from __future__ import annotations

from archscale.recipe import Recipe
from archscale.registry import recipes

DEFAULT_CORPUS_VOCAB = 8192  # the byte-level BPE trained on the embedded corpus (archscale.data.corpus)


@recipes.register("default")
def default() -> Recipe:
    """A ~3M-parameter Transformer++ (4 layers, width 128) on the embedded State-of-the-Union corpus.

    Trains on a laptop CPU in a few minutes; the validation loss falls from ln(8192) ≈ 9.0 to well under 6.
    """
    return Recipe(
        name="default",
        model={
            "name": "transformer",
            "params": {
                "depth": 4,
                "n_embd": 128,
                "n_head": 4,
                "head_dim": 32,
                "n_kv_head": 2,
                "vocab_size": DEFAULT_CORPUS_VOCAB,
                "block_size": 128,
                "tie_embeddings": True,
            },
        },
        data={"seq_len": 128},
        optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 0.1},
        schedule={"name": "linear", "warmup_fraction": 0.1},
        budget={"steps": 300, "global_batch_tokens": 4096, "micro_batch_size": 16},
        system={"device": "auto", "log_every": 10, "val_every": 100, "checkpoint_every": 100},
    )


@recipes.register("smoke")
def smoke() -> Recipe:
    """The default model for a handful of steps: checks an installation end to end in seconds."""
    base = default()
    return base.model_copy(
        update={
            "name": "smoke",
            "budget": base.budget.model_copy(update={"steps": 20}),
            "system": base.system.model_copy(update={"val_every": 10, "checkpoint_every": 10, "log_every": 5}),
        }
    )


@recipes.register("archscale_v1")
def archscale_v1() -> Recipe:
    """ArchScale v1 scaling setup (REFERENCE §4): Transformer++ d16 under μP++ with the v1 depth-transfer law
    (η0 = 4e-4, b0 = 2²¹ tokens, t0 = 1e11 tokens at d0 = 16). Change depth or family with
    ``--set model.params.depth=8`` / ``--set model.name=sambay``, or ``archscale resolve archscale_v1 --depths
    8,12,16,20,24``. Needs real data (``data.sources``) and GPUs to train."""
    return Recipe(
        name="archscale_v1",
        model={"name": "transformer", "params": {"depth": 16}},
        data={"seq_len": 4096},
        parametrization="mup++",
        optimizer={"name": "adamw"},
        schedule={"name": "linear"},
        budget={"micro_batch_size": 2},
        scaling={"law": "archscale_v1"},
    )
