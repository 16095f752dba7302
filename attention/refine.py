"""Refined maps: a captured map propagated through the image tokens' own attention in the same call.

For the map ``M`` of one attention call (``[rows, image tokens, captured columns]``, the head mean of the
exact probabilities), the refined map is

    M' = mean over heads h of softmax_over_image_keys(q_h · k_h · scale + mask) @ M

with the image queries and image keys of that call (a joint attention's own; for a cross-attention,
the self-attention the same block ran just before). Each image token's map becomes the mean of the
maps of the image tokens it attends to: a map spread over an object's tokens sharpens onto the
object, because the object's tokens attend to each other.

It is computed as fused attention calls with the maps as values (the head dimension ``D`` of q and k:
``ceil(columns / D)`` calls of the kernel SDPA picks), so the image x image attention matrix is never
built: memory stays O(image tokens x columns). In float32 whatever the model's dtype. Pure torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import sdpa as kernels


def image_mask(mask: Tensor | None, query_range: tuple[int, int], key_range: tuple[int, int]) -> Tensor | None:
    """The image x image part of an attention call's additive mask (4-D, broadcastable), or None."""
    if mask is None:
        return None
    q0, q1 = query_range
    k0, k1 = key_range
    m = mask[..., q0:q1, :] if mask.shape[-2] > 1 else mask
    return m[..., k0:k1].to(torch.float32)


def refine(q: Tensor, k: Tensor, maps: Tensor, rows: slice, query_range: tuple[int, int],
           key_range: tuple[int, int], mask: Tensor | None = None) -> Tensor:
    """The refined map ``[r, image tokens, columns]`` of ``maps`` (the head mean, same shape).

    ``q`` and ``k`` are ``[B, H, N, D]``; ``rows`` picks the batch rows the maps belong to; ``query_range``
    and ``key_range`` are where the image tokens sit among the queries and the keys (the same tokens, in
    the same order); ``mask`` the call's additive mask (4-D) or None."""
    q0, q1 = query_range
    k0, k1 = key_range
    qi = q[rows, :, q0:q1].to(torch.float32)
    ki = k[rows, :, k0:k1].to(torch.float32)
    m = image_mask(None if mask is None else (mask[rows] if mask.shape[0] > 1 else mask), query_range, key_range)
    r, h, n, d = qi.shape
    if ki.shape[2] != maps.shape[1] or maps.shape[0] != r:
        raise ValueError(f"refine: maps {tuple(maps.shape)} do not match {r} rows x {ki.shape[2]} image keys")
    cols = maps.shape[2]
    out = maps.new_empty((r, n, cols), dtype=torch.float32)
    values = maps.to(torch.float32)
    with kernels.ieee_fp32(q.device):
        for c0 in range(0, cols, d):
            chunk = values[:, :, c0 : c0 + d]
            width = chunk.shape[2]
            if width < d:
                chunk = F.pad(chunk, (0, d - width))
            v = chunk[:, None].expand(r, h, chunk.shape[1], d).contiguous()  # strided heads would send SDPA to math
            o = F.scaled_dot_product_attention(qi, ki, v, attn_mask=m)
            out[:, :, c0 : c0 + width] = o[..., :width].mean(dim=1)
    return out
