"""Hugging Face transformers interop: our Transformer <-> ``LlamaForCausalLM``.

Weight mapping (ours -> HF), one to one, no permutation:

    embed.weight                       model.embed_tokens.weight
    blocks.i.mixer_norm.weight         model.layers.i.input_layernorm.weight
    blocks.i.mixer.{q,k,v,o}_proj      model.layers.i.self_attn.{q,k,v,o}_proj
    blocks.i.mlp_norm.weight           model.layers.i.post_attention_layernorm.weight
    blocks.i.mlp.{gate,up,down}_proj   model.layers.i.mlp.{gate,up,down}_proj
    final_norm.weight                  model.norm.weight
    head.weight                        lm_head.weight (absent when tied: tie_word_embeddings)

RoPE: both sides use the rotate-half layout (pair i with i + head_dim/2, see :mod:`archscale.models.rope`) and
view q/k projections as (n_head, head_dim) in the same order, so the q/k weights need no permutation (a
conversion from Meta's original interleaved checkpoints would). rope_theta <-> rope_base,
rms_norm_eps <-> norm_eps, num_key_value_heads <-> n_kv_head, head_dim, tie_word_embeddings <-> tie_embeddings,
max_position_embeddings <-> block_size.

Forward multipliers that Llama has no field for are folded into the exported weights, which is exact:
attn_scale -> q_proj · (attn_scale · √head_dim) (Llama scales by 1/√head_dim; RoPE is linear so the factor
passes through it); residual_multiplier -> o_proj and down_proj; logit_multiplier -> the final norm gain (logits
are linear in it, tied or not). Importing always gives neutral multipliers.

``transformers`` and ``safetensors`` are optional dependencies, imported inside the functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from archscale.models.lm import LanguageModel, build_model
from archscale.models.mixers.attention import CausalSelfAttention
from archscale.models.spec import LayerSpec, LMSpec

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def _name_map(n_layers: int, tied: bool) -> dict[str, str]:
    """Our parameter name -> the HF Llama parameter name."""
    names = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        names[f"{ours}.mixer_norm.weight"] = f"{theirs}.input_layernorm.weight"
        names[f"{ours}.mlp_norm.weight"] = f"{theirs}.post_attention_layernorm.weight"
        for p in _ATTN:
            names[f"{ours}.mixer.{p}.weight"] = f"{theirs}.self_attn.{p}.weight"
        for p in _MLP:
            names[f"{ours}.mlp.{p}.weight"] = f"{theirs}.mlp.{p}.weight"
    if not tied:
        names["head.weight"] = "lm_head.weight"
    return names


def _attention_dims(model: LanguageModel) -> tuple[int, int, int, float]:
    """(n_head, n_kv_head, head_dim, rope_base), checking that every layer is a plain RoPE attention alike."""
    found: set[tuple[int, int, int, float]] = set()
    if model.spec.norm != "rmsnorm":
        raise ValueError(f"export_llama: the model uses {model.spec.norm}, Llama has RMSNorm")
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        # Exact type: subclasses (differential attention) compute something else with the same weights.
        if type(mixer) is not CausalSelfAttention:
            raise ValueError(f"export_llama: layer {i} is {type(mixer).__name__}, Llama has only attention")
        if any(proj.bias is not None for proj in (mixer.q_proj, mixer.v_proj, mixer.o_proj)):
            raise ValueError(f"export_llama: layer {i} has attention biases, which Llama has not")
        if mixer.window is not None or not mixer.use_rope:
            raise ValueError(f"export_llama: layer {i} uses a sliding window or NoPE, which Llama cannot express")
        found.add((mixer.n_head, mixer.n_kv_head, mixer.head_dim, mixer.rope_base))
    if len(found) != 1:
        raise ValueError(f"export_llama: layers differ in heads/head_dim/rope_base: {sorted(found)}")
    return found.pop()


def export_llama(
    model: LanguageModel,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a transformers ``LlamaForCausalLM`` directory (config.json + model.safetensors).

    ``config_overrides`` sets further ``LlamaConfig`` fields that the model does not know, e.g. the tokenizer's
    ``bos_token_id`` / ``eos_token_id``."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    spec = model.spec
    n_head, n_kv_head, head_dim, rope_base = _attention_dims(model)
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.n_embd,
        intermediate_size=spec.mlp_hidden,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        head_dim=head_dim,
        max_position_embeddings=spec.block_size,
        rms_norm_eps=spec.norm_eps,
        rope_theta=rope_base,
        tie_word_embeddings=spec.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        **(config_overrides or {}),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    _set_dtype_in_config(out / "config.json", dtype)

    q_factor = 1.0 if spec.attn_scale is None else spec.attn_scale * math.sqrt(head_dim)
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    for ours, theirs in _name_map(spec.n_layers, spec.tie_embeddings).items():
        w = params[ours].detach().to(torch.float32)
        if ours.endswith("mixer.q_proj.weight"):
            w = w * q_factor
        elif ours.endswith(("mixer.o_proj.weight", "mlp.down_proj.weight")):
            w = w * spec.residual_multiplier
        elif ours == "final_norm.weight":
            w = w * spec.logit_multiplier
        tensors[theirs] = w.to(dtype).contiguous().cpu()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _set_dtype_in_config(path: Path, dtype: torch.dtype) -> None:
    """Record the weights' dtype ("dtype" in transformers 5, "torch_dtype" before)."""
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    cfg["dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def spec_from_llama_config(config: Any) -> LMSpec:
    """The :class:`LMSpec` of a transformers ``LlamaConfig`` (unsupported features raise)."""
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("import_llama: biases are not supported (attention_bias / mlp_bias)")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"import_llama: only SwiGLU (hidden_act='silu') is supported, got {config.hidden_act!r}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ValueError(f"import_llama: RoPE scaling {rope_type!r} is not supported")
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    layer = LayerSpec(mixer="attention", params={"n_head": n_head, "n_kv_head": n_kv_head, "head_dim": head_dim})
    return LMSpec(
        vocab_size=config.vocab_size,
        n_embd=config.hidden_size,
        layers=[layer] * config.num_hidden_layers,
        mlp_hidden=config.intermediate_size,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        norm_eps=config.rms_norm_eps,
        rope_base=float(rope_theta),
        block_size=config.max_position_embeddings,
    )


def import_llama(path_or_hf_model: str | Path | Any) -> LanguageModel:
    """A :class:`LanguageModel` (float32) with the weights of a Llama checkpoint directory, hub id, or a loaded
    ``LlamaForCausalLM``."""
    if isinstance(path_or_hf_model, (str, Path)):
        from transformers import LlamaForCausalLM

        hf_model = LlamaForCausalLM.from_pretrained(str(path_or_hf_model))
    else:
        hf_model = path_or_hf_model
    spec = spec_from_llama_config(hf_model.config)
    model = build_model(spec, device="meta")
    hf_state = hf_model.state_dict()
    state = {}
    for ours, theirs in _name_map(spec.n_layers, spec.tie_embeddings).items():
        if theirs not in hf_state:
            raise KeyError(f"import_llama: the checkpoint has no {theirs!r} (needed for {ours!r})")
        state[ours] = hf_state[theirs].detach().to(torch.float32, copy=True)  # never share storage
    model.load_state_dict(state, strict=True, assign=True)
    return model
