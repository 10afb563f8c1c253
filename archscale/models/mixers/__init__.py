"""Token mixers. Importing this package registers every built-in mixer in ``archscale.registry.mixers``.

Construction convention (the same for every entry, built-in or plugin)::

    from archscale.registry import mixers
    cls = mixers.get("attention")
    config = mixers.config_model("attention").model_validate({"n_head": 8, "n_kv_head": 2})
    mixer = cls(ctx, config)          # ctx: archscale.models.mixers.base.MixerContext
    y, state = mixer(x, seq, state=None, shared=None)   # shared: the model's per-forward CrossLayer

A mixer class also offers ``example_params(d_model)`` (small valid params, used by the generic tests in
tests/models/test_mixers.py, which enrol every registered mixer), ``count_params(ctx, config)`` and
``count_flops(ctx, config, seq_len, attention)`` (class-level, so specs are counted without building them), and
per instance ``flops_per_token(seq_len)``, ``param_roles()``, ``output_projections()`` and
``reset_parameters()``; mixers that pass values to later layers (YOCO K,V, GMU memory) declare them with
``shared_writes`` / ``shared_reads`` / ``memory_dim`` and give test inputs with ``example_shared``.
Subclassing :class:`~archscale.models.mixers.base.Mixer` provides sensible defaults. See :mod:`archscale.models.mixers.base` for details.
"""

from archscale.models.mixers import attention  # noqa: F401  (registers "attention")
from archscale.models.mixers import cross_attention  # noqa: F401  (registers "yoco_cross")
from archscale.models.mixers import diff_attention  # noqa: F401  (registers "diff_attention")
from archscale.models.mixers import gmu  # noqa: F401  (registers "gmu")
from archscale.models.mixers import gated_deltanet  # noqa: F401  (registers "gdn")
from archscale.models.mixers import mamba  # noqa: F401  (registers "mamba")
from archscale.models.mixers import mamba2  # noqa: F401  (registers "mamba2")
from archscale.models.mixers.base import AttentionFlops, Mixer, MixerContext, build_mixer, resolve_mixer

__all__ = ["AttentionFlops", "Mixer", "MixerContext", "build_mixer", "resolve_mixer"]
