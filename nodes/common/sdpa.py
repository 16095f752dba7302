"""ComfyUI's SDPA backend (``attention_pytorch``), as the engine's fused route must call it to give
ComfyUI's output bit for bit (`attention.sdpa` calls the kernel SDPA picks).

- Which backend: `is_stock_sdpa` tells ComfyUI's own SDPA function (the default on GPUs) from every
  other backend or another pack's override; only there may the engine make the call itself.
- Kernel priority: where ``comfy.ops`` defines ``SDPA_BACKEND_PRIORITY`` (ComfyUI 0.8.0: CUDA on
  Windows; 0.3.64: any CUDA; both only with a torch whose ``sdpa_kernel`` takes ``set_priority``),
  ``comfy.ops.scaled_dot_product_attention`` runs SDPA inside ``sdpa_kernel(SDPA_BACKEND_PRIORITY,
  set_priority=True)``, which puts cuDNN first. `fused_route` enters that same context, so the engine's
  kernel choice (``torch._fused_sdp_choice``, which reads it) and SDPA's agree with ComfyUI's.
- Batch limit: ``attention_pytorch`` calls SDPA once for a batch of at most ``SDP_BATCH_LIMIT`` (2**15
  on NVIDIA) and in slices of that size above it; `one_sdpa_call` says whether the engine's single
  call is the one ComfyUI makes. Above it the output comes from ComfyUI's own call.

All are read from ComfyUI's modules at call time, as ComfyUI itself reads them.
"""

from __future__ import annotations

import contextlib

import comfy.ldm.modules.attention as comfy_attention
import comfy.ops


def is_stock_sdpa(func) -> bool:
    """Whether an attention function is ComfyUI's SDPA backend (as ``wrap_attn`` hands it to an override,
    or as a text encoder is given it)."""
    stock = comfy_attention.attention_pytorch
    return func is stock or func is getattr(stock, "__wrapped__", stock)


def one_sdpa_call(batch: int) -> bool:
    """Whether ComfyUI's ``attention_pytorch`` runs a batch of this size in one SDPA call."""
    limit = getattr(comfy_attention, "SDP_BATCH_LIMIT", None)
    return limit is None or batch <= limit


def fused_route(fused: bool):
    """The ``sdpa_kernel`` context ComfyUI runs its SDPA call in, where it has one and ``fused`` (the
    engine calls SDPA's kernel itself); otherwise no context (ComfyUI's own call enters it)."""
    priority = getattr(comfy.ops, "SDPA_BACKEND_PRIORITY", None)
    if not fused or priority is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(priority, set_priority=True)
