"""fla's chunked gated delta rule (``fla.ops.gated_delta_rule.chunk_gated_delta_rule``) as an optional backend,
used only where fla itself would run it correctly.

The rule (checked before the first call, never by bypassing fla): fla must import, the tensors must be on CUDA, and
the card must not be a Hopper (compute capability 9.x) running 3.4.0 <= triton < 3.7.1. In that range the gated
chunk backward of Triton-compiled fla kernels gives wrong gradients (fla issue #640); fla 0.6 raises
"... produces incorrect results ..." from inside the *backward* pass, after the forward already ran, so trying the
call and catching the refusal would come too late. We mirror fla's own condition instead
(``IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1``). The H100 of our GPU machine with triton 3.6
falls in the range: there ``impl="auto"`` takes the compiled chunked form, and ``impl="fla"`` raises.
"""

from __future__ import annotations

import functools
import importlib.util
import re

import torch


def _triton_version() -> tuple[int, ...]:
    import triton

    return tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:3])


@functools.cache
def _refusal(device_type: str, device_index: int | None) -> str | None:
    if device_type != "cuda":
        return f"fla's kernels run on CUDA only, got a {device_type} tensor"
    if importlib.util.find_spec("fla") is None:
        return "fla is not installed (pip install fla-core, or archscale[gpu])"
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken fla install must not break the fallback
        return f"fla.ops.gated_delta_rule failed to import: {type(e).__name__}: {e}"
    major, _ = torch.cuda.get_device_capability(device_index)
    version = _triton_version()
    if major == 9 and (3, 4, 0) <= version < (3, 7, 1):
        return (
            f"fla refuses its gated chunk kernels on Hopper with triton {'.'.join(map(str, version))} (wrong "
            "gradients, fla #640; fixed in triton >= 3.7.1): use impl='chunked' or 'auto'"
        )
    return None


# Compiled models ask this while dynamo traces them; as a constant-result function dynamo calls it instead of
# tracing into the functools.cache'd probe (which it warns about on every compile).
@torch.compiler.assume_constant_result
def fla_refusal(device: torch.device) -> str | None:
    """None when fla's chunked gated delta rule may run on ``device``; otherwise the reason it may not."""
    return _refusal(device.type, device.index)


def fla_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's kernel in our conventions (same layouts; o in v's dtype, the final state in fp32)."""
    reason = fla_refusal(q.device)
    if reason is not None:
        raise RuntimeError(f"impl='fla' is not available: {reason}")
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    o, final = chunk_gated_delta_rule(
        q, k, v.to(q.dtype), g.float(), beta.to(q.dtype), scale=scale,
        initial_state=None if initial_state is None else initial_state.float(),
        output_final_state=return_final_state,
        cu_seqlens=None if cu_seqlens is None else cu_seqlens.long(),
    )
    return o.to(v.dtype), (final.float() if return_final_state else None)
