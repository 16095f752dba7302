"""Regions: a prompt's words confined to a mask, inside exact attention. Pure torch.

For the image query i of a prompt's rows and a key j of a word the region names, the attention logit
gets ``log(1 - s (1 - m_i))``: with strength ``s`` 1 an image token outside the mask (``m_i`` 0) does
not attend to the word at all; inside (1) nothing changes; a token the mask covers in part, or a
strength below 1, keeps part of it; several regions on one word multiply. This is `engine`'s bias
reweighting made per query.

The bias lives on the text columns only: ``[rows, queries, text keys]``, never the (image + text)^2
matrix. The output is the merge of fused attention calls over the text keys (biased) and over the
other keys, by their log-sum-exp (`attend_split`); the captured maps use the merged normaliser, so
they are the exact probabilities of the attention that ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import sdpa as kernels
from .engine import Capture, Reweight, capture_probs, from_bhnd, scaled_values, to_bhnd


def area_pool(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """``mask [F, H, W]`` -> ``[F, h, w]``: each cell the mean of the mask over the area it covers, pixels
    cut by a cell's edge counted by the share of them inside it (exact for any ratio of sizes)."""

    def weights(n_in: int, n_out: int) -> Tensor:
        edges = torch.arange(n_out + 1, dtype=torch.float64) * (n_in / n_out)
        lo, hi = edges[:-1, None], edges[1:, None]
        px = torch.arange(n_in, dtype=torch.float64)[None]
        overlap = (torch.minimum(hi, px + 1) - torch.maximum(lo, px)).clamp(min=0)
        return (overlap / (hi - lo)).to(torch.float32)

    h, w = size
    m = mask.to(torch.float32)
    a, b = weights(m.shape[-2], h).to(m.device), weights(m.shape[-1], w).to(m.device)
    return a @ m @ b.T


def log_weights(pooled: Tensor, strength: float) -> Tensor:
    """``log(1 - s (1 - m))`` of a pooled mask in [0, 1]: 0 inside, ``-inf`` outside at strength 1."""
    w = 1.0 - float(strength) * (1.0 - pooled.clamp(0.0, 1.0))
    return torch.log(w.clamp(min=0.0))


@dataclass(frozen=True)
class RegionBias:
    """A bias on some text keys for the image queries of some batch rows: ``log_w [r, image queries, 1]``
    added at the key ``columns`` (absolute key indices) of rows ``rows``."""

    rows: slice
    columns: Tensor
    log_w: Tensor


def _lse(q: Tensor, k: Tensor, mask: Tensor | None, chunk_bytes: int = 16 * 2**20) -> Tensor:
    """The exact log-sum-exp of each query row over the keys, in query chunks (no fused kernel gave it)."""
    acc = kernels.accumulation_dtype(q.dtype)
    b, h, n, _ = q.shape
    out = torch.empty((b, h, n), dtype=acc, device=q.device)
    step = max(1, chunk_bytes // max(1, b * h * k.shape[2] * 4))
    kf = k.to(acc)
    with kernels.ieee_fp32(q.device):
        for s in range(0, n, step):
            logits = torch.matmul(q[:, :, s : s + step].to(acc), kf.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
            if mask is not None:
                logits.add_((mask[:, :, s : s + step] if mask.shape[2] > 1 else mask).to(acc))
            out[:, :, s : s + step] = torch.logsumexp(logits, dim=-1)
    return out


def _part(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Attention over one set of keys and the log-sum-exp of each query row (exact, whatever the kernel)."""
    fused = kernels.attention_with_lse(q, k, v, mask)
    lse = fused.lse if fused.lse is not None else _lse(q, k, fused.mask)
    return fused.out, lse.to(torch.float32)


def _merge(parts: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The attention over the union of the parts' keys, from each part's output and log-sum-exp."""
    total = torch.logsumexp(torch.stack([lse for _, lse in parts]), dim=0)
    total_safe = total.masked_fill(~torch.isfinite(total), 0.0)
    out = 0
    for o, lse in parts:
        w = torch.exp(lse - total_safe)[..., None]
        out = out + torch.where(w > 0, w * o.to(torch.float32), 0.0)  # a part with no key left adds nothing
    return out.to(parts[0][0].dtype), total


def _outside(i0: int, i1: int, n: int, device: torch.device) -> tuple[slice | Tensor, int]:
    """The indices of ``0..n`` outside ``i0..i1``, and how many: a slice where they are one run (text first or
    last, as in every family but a left-padded one), so the keys and values are views, not copies."""
    if i0 == 0 or i1 == n:
        return (slice(i1, n), n - i1) if i0 == 0 else (slice(0, i0), i0)
    return torch.cat([torch.arange(0, i0, device=device), torch.arange(i1, n, device=device)]), n - (i1 - i0)


def attend_split(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    *,
    text: tuple[int, int],
    image_queries: tuple[int, int],
    biases: Sequence[RegionBias],
    mask: Tensor | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    reweight: Reweight | None = None,
    captures: Sequence[Capture] = (),
    words_see_mask: bool = False,
) -> tuple[Tensor, list[Tensor]]:
    """Attention whose text keys ``text = (t0, t1)`` carry, for the image queries, the regions' biases, as
    `engine.attend` returns it: the output in ComfyUI's layout, and one captured map per `Capture` (its
    columns text keys). The image queries attend to the text keys and to every other key in two fused
    calls merged by their log-sum-exp; the other queries (a joint attention's text) in one call.

    ``words_see_mask`` (joint attention): the region's words, as queries, get the same bias on the image
    keys (the image keys sit where the image queries do), so they too see only the image inside the mask."""
    from .engine import sdpa_mask  # the engine's mask as SDPA gets it (2-D and 3-D masks broadened)

    qh, kh, vh = (to_bhnd(t, heads, skip_reshape) for t in (q, k, scaled_values(v, reweight, heads, skip_reshape)))
    b, _, nq, _ = qh.shape
    nk = kh.shape[2]
    t0, t1 = text
    q0, q1 = image_queries
    base = kernels.additive_mask(sdpa_mask(mask, reweight, q), q.dtype)
    # the text keys' bias, for every query: the call's mask and weights, plus the regions on the image queries
    text_bias = torch.zeros((b, 1, nq, t1 - t0), dtype=torch.float32, device=q.device)
    if base is not None:
        text_bias += base[..., t0:t1].to(torch.float32)
    for rb in biases:
        cols = rb.columns.to(q.device) - t0
        text_bias[rb.rows, :, q0:q1].index_add_(3, cols, rb.log_w.to(q.device)[:, None].expand(-1, -1, -1,
                                                                                                 cols.numel()))
    text_bias = text_bias.to(q.dtype if base is None else base.dtype)
    other, n_other = _outside(t0, t1, nk, q.device)
    parts_img = [_part(qh[:, :, q0:q1], kh[:, :, t0:t1], vh[:, :, t0:t1], text_bias[:, :, q0:q1])]
    if n_other:
        m_o = None if base is None else (base[..., other][:, :, q0:q1] if base.shape[2] > 1 else base[..., other])
        parts_img.append(_part(qh[:, :, q0:q1], kh[:, :, other], vh[:, :, other], m_o))
    out_img, lse_img = _merge(parts_img)
    out = torch.empty((b, qh.shape[1], nq, vh.shape[-1]), dtype=out_img.dtype, device=q.device)
    lse = torch.full((b, qh.shape[1], nq), -math.inf, dtype=torch.float32, device=q.device)
    out[:, :, q0:q1], lse[:, :, q0:q1] = out_img, lse_img
    rest, n_rest = _outside(q0, q1, nq, q.device)
    if n_rest:  # a joint attention's text queries: one call over every key, their rows of the masks
        full = torch.zeros((b, 1, n_rest, nk), dtype=text_bias.dtype, device=q.device)
        if base is not None:
            full += base[:, :, rest] if base.shape[2] > 1 else base
        full[..., t0:t1] = text_bias[:, :, rest]
        if words_see_mask:
            at = torch.full((nq,), -1, dtype=torch.long, device=q.device)
            at[rest] = torch.arange(n_rest, device=q.device)
            for rb in biases:  # a text key is a query too, among those outside the image (no filter, no sync)
                rows = at[rb.columns.to(q.device)]
                full[rb.rows, :, rows, q0:q1] += rb.log_w.to(q.device)[:, None, None, :, 0].to(full.dtype)
        o, lse_r = _part(qh[:, :, rest], kh, vh, full)
        out[:, :, rest], lse[:, :, rest] = o, lse_r
    maps = []
    if captures:
        sw = reweight.weights[:, t0:t1] if reweight is not None and reweight.mode == "scale" else None
        for c in captures:
            local = Capture(c.rows, c.columns.to(q.device) - t0)
            maps.append(capture_probs(qh, kh[:, :, t0:t1], text_bias, lse, local, image_queries, sw))
    return from_bhnd(out, skip_output_reshape), maps
