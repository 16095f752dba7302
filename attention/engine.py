"""Attention that computes the stock output and, on request, captures exact
probabilities for a slice (image queries x some text keys) and reweights keys.

Pure torch. The hooks in `nodes/` call `attend` from inside ComfyUI's attention
override; nothing here knows about ComfyUI.

Why the log-sum-exp route: the probability of key j for query i is
``exp(q_i.k_j*scale + mask_ij - lse_i)``. The fused kernels return ``lse`` with
the output, so a captured slice costs one small matmul (queries x captured
keys) instead of the full (text+image)^2 matrix. Which kernel, and how it is
called so that the output stays SDPA's own, is `attention.sdpa`'s business.

Precision: whatever the input dtype, captured logits are computed in fp32 from
the inputs as the kernel saw them (same rounded q, k and the same mask tensor),
and the kernels' LSE is fp32. The maps are then exact to fp32 rounding of the
rounded inputs, not to the inputs' own precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import sdpa as kernels

Mode = Literal["bias", "scale"]
OutFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]

DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Reweight:
    """Per-key weights for the rows of a batch, validated once, used per call.

    ``weights`` is ``[B, Nk]`` float32 with 1 where nothing changes. ``bias`` adds
    ``log w`` to the logits (renormalised); ``scale`` multiplies the softmax by
    ``w`` (Prompt-to-Prompt), which is the same as scaling value vectors.
    """

    mode: Mode
    weights: Tensor
    log_weights: Tensor | None = None

    @classmethod
    def build(cls, weights: Tensor, mode: Mode) -> Reweight:
        if mode not in ("bias", "scale"):
            raise ValueError(f"reweight mode must be 'bias' or 'scale', got {mode!r}")
        w = weights.detach().to(torch.float32)
        if w.ndim != 2:
            raise ValueError(f"weights must be [batch, keys], got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("token weights must be finite numbers (got NaN or inf)")
        if mode == "bias" and bool((w < 0).any()):
            bad = float(w.min())
            raise ValueError(
                f"negative token weight {bad:g} is not allowed in 'bias' mode "
                "(it acts as log(w)); use 0 to remove a token or switch to 'scale' mode"
            )
        log_w = torch.log(w) if mode == "bias" else None
        return cls(mode=mode, weights=w, log_weights=log_w)


@dataclass(frozen=True)
class Capture:
    """Capture probabilities for batch ``rows`` at key ``columns`` (sequence positions)."""

    rows: slice
    columns: Tensor


def to_bhnd(t: Tensor, heads: int, skip_reshape: bool) -> Tensor:
    """View ComfyUI's ``[B, N, H*D]`` (or ``[B, H, N, D]`` with skip_reshape) as ``[B, H, N, D]``."""
    if skip_reshape:
        return t
    if t.ndim == 4:  # MMDiT hands v as [B, N, H, D]
        return t.transpose(1, 2)
    b, n, hd = t.shape
    return t.view(b, n, heads, hd // heads).transpose(1, 2)


def from_bhnd(t: Tensor, skip_output_reshape: bool) -> Tensor:
    if skip_output_reshape:
        return t
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def sdpa_mask(mask: Tensor | None, reweight: Reweight | None, q: Tensor) -> Tensor | None:
    """The mask as SDPA receives it from ComfyUI's ``attention_pytorch`` (2-D and 3-D masks get batch and
    head dimensions; bool masks stay bool), plus ``log w`` on the keys in bias mode (a bool mask is
    first made additive as SDPA would). The dtype of a float mask is kept; ``log w`` takes it (the
    query dtype where there is no mask): the kernel sees exactly this tensor, so do the maps."""
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    if reweight is None or reweight.mode != "bias":
        return mask
    mask = kernels.additive_mask(mask, q.dtype)
    dtype = q.dtype if mask is None else mask.dtype
    bias = reweight.log_weights.to(device=q.device, dtype=dtype)[:, None, None, :]
    return bias if mask is None else mask + bias


def scaled_values(v: Tensor, reweight: Reweight | None, heads: int, skip_reshape: bool) -> Tensor:
    """``v_j * w_j`` in v's own layout (scale mode), else ``v`` itself."""
    if reweight is None or reweight.mode != "scale":
        return v
    w = reweight.weights.to(device=v.device, dtype=v.dtype)
    if skip_reshape:
        return v * w[:, None, :, None]
    return v * w.view(*w.shape, *([1] * (v.ndim - 2)))


def _rows(mask: Tensor, rows: slice) -> Tensor:
    return mask[rows] if mask.shape[0] > 1 else mask


def _queries(mask: Tensor, q0: int, q1: int) -> Tensor:
    return mask[:, :, q0:q1] if mask.shape[2] > 1 else mask


def _chunk_len(rows: int, heads: int, keys: int, n: int, chunk_bytes: int) -> int:
    per_query = max(1, rows * heads * keys * 4 * 2)
    return max(1, min(n, chunk_bytes // per_query))


def row_normaliser(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, captures: Sequence[Capture], query_range: tuple[int, int]
) -> Tensor | None:
    """The log-sum-exp of every captured query row from one fused kernel call over the captured batch
    rows and query range, as ``[B, H, Nq]`` (NaN outside them); None where no fused kernel gives one.

    For a route whose output comes from elsewhere (ComfyUI's sub-quadratic CPU default, another pack's
    override): the same exact normaliser as the chunked q.k over all keys, several times faster."""
    b, h, nq = q.shape[:3]
    spans = [c.rows.indices(b) for c in captures]
    r0, r1 = min(s[0] for s in spans), max(s[1] for s in spans)
    q0, q1 = query_range
    rows = slice(r0, r1)
    m = None if mask is None else _queries(_rows(mask, rows), q0, q1)
    lse = kernels.lse_only(q[rows, :, q0:q1], k[rows], v[rows], m)
    if lse is None:
        kernels.FALLBACKS.once(
            ("normaliser", q.device.type, q.dtype, q.shape[-1]),
            "Enfoque: no fused kernel gives the log-sum-exp for %s queries of head dim %d on %s; the maps take "
            "the exact chunked route (slower, same result).", q.dtype, q.shape[-1], q.device.type,
        )
        return None
    full = torch.full((b, h, nq), math.nan, dtype=lse.dtype, device=q.device)
    full[rows, :, q0:q1] = lse
    return full


def capture_probs(
    q: Tensor,
    k: Tensor,
    mask: Tensor | None,
    lse: Tensor | None,
    cap: Capture,
    query_range: tuple[int, int],
    scale_weights: Tensor | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Tensor:
    """Exact softmax probabilities, summed over heads: ``[rows, queries, columns]`` float32.

    Logits are computed in fp32 (fp64 for fp64 inputs) from the inputs as they are, whatever their
    dtype, with TF32 off; ``mask`` is the additive mask the output used. With ``lse`` only the captured
    columns are computed. Without it each query chunk computes its full key row once (bounded by
    ``chunk_bytes``) to get the normaliser: exact, slower, and still never the whole matrix. Rows with
    no attendable key give zeros.
    """
    q0, q1 = query_range
    rows = cap.rows
    cols = cap.columns.to(k.device)
    acc = kernels.accumulation_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5
    qr = q[rows, :, q0:q1]
    kc = k[rows].index_select(2, cols).to(acc)
    r, h, n, _ = qr.shape
    out = torch.empty((r, n, cols.numel()), dtype=torch.float32, device=q.device)
    m_rows = None if mask is None else _queries(_rows(mask, rows), q0, q1)
    m_cap = None if m_rows is None else m_rows.index_select(3, cols).to(acc)
    if lse is not None:
        lse_r = lse[rows, :, q0:q1].to(acc)
        lse_r = lse_r.masked_fill(~(lse_r > -math.inf), math.inf)  # no attendable key (-inf or NaN): p = 0
        step = _chunk_len(r, h, cols.numel(), n, chunk_bytes)
    else:
        k_all = k[rows].to(acc)
        step = _chunk_len(r, h, k.shape[2], n, chunk_bytes)
    w = None if scale_weights is None else scale_weights[rows].index_select(1, cols).to(q.device)[:, None, None, :]
    with kernels.ieee_fp32(q.device):
        for s in range(0, n, step):
            e = min(n, s + step)
            qc = qr[:, :, s:e].to(acc)
            if lse is not None:
                logits = torch.matmul(qc, kc.transpose(-1, -2)).mul_(scale)
                if m_cap is not None:
                    logits.add_(m_cap[:, :, s:e] if m_cap.shape[2] > 1 else m_cap)
                logits.sub_(lse_r[:, :, s:e, None])
            else:
                full = torch.matmul(qc, k_all.transpose(-1, -2)).mul_(scale)
                if m_rows is not None:
                    full.add_((m_rows[:, :, s:e] if m_rows.shape[2] > 1 else m_rows).to(acc))
                norm = torch.logsumexp(full, dim=-1, keepdim=True)
                norm.masked_fill_(norm == -math.inf, math.inf)
                logits = full.index_select(3, cols).sub_(norm)
                del full
            p = logits.exp_()
            if w is not None:
                p.mul_(w)
            torch.sum(p, dim=1, out=out[:, s:e])
    return out


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    *,
    mask: Tensor | None = None,
    skip_reshape: bool = False,
    skip_output_reshape: bool = False,
    reweight: Reweight | None = None,
    captures: Sequence[Capture] = (),
    query_range: tuple[int, int] | None = None,
    compute_out: OutFn | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Tensor, list[Tensor]]:
    """Attention output (ComfyUI layouts) plus one captured map per `Capture`.

    ``compute_out(q, k, v, mask)`` produces the output in the caller's layout
    (the backend ComfyUI chose, or another pack's override). When it is None
    the output is ``F.scaled_dot_product_attention``'s, bit for bit: with
    something to capture it comes from the kernel SDPA picks, called through its
    log-sum-exp-returning op (``attention.sdpa``), which gives the normaliser in
    the same pass. Where the output comes from ``compute_out``, or the kernel has
    no log-sum-exp, one fused kernel call over the captured rows gives the
    normaliser, and where none can, the exact chunked route does.
    """
    attn_mask = sdpa_mask(mask, reweight, q)
    v_in = scaled_values(v, reweight, heads, skip_reshape)
    qh, kh, vh = (to_bhnd(t, heads, skip_reshape) for t in (q, k, v_in))
    lse = None
    if compute_out is None:
        if not captures:
            return from_bhnd(kernels.sdpa(qh, kh, vh, attn_mask), skip_output_reshape), []
        fused = kernels.attention_with_lse(qh, kh, vh, attn_mask)
        out, lse, cap_mask = from_bhnd(fused.out, skip_output_reshape), fused.lse, fused.mask
    else:
        biased = reweight is not None and reweight.mode == "bias"
        out = compute_out(q, k, v_in, attn_mask if biased else mask)
        cap_mask = kernels.additive_mask(attn_mask, q.dtype)
    if not captures:
        return out, []
    qr = query_range or (0, qh.shape[2])
    if lse is None:
        lse = row_normaliser(qh, kh, vh, cap_mask, captures, qr)
    sw = reweight.weights if reweight is not None and reweight.mode == "scale" else None
    maps = [capture_probs(qh, kh, cap_mask, lse, c, qr, sw, chunk_bytes) for c in captures]
    return out, maps
