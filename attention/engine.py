"""Attention that computes the stock output and, on request, captures exact
probabilities for a slice (image queries x some text keys) and reweights keys.

Pure torch. The hooks in `nodes/` call `attend` from inside ComfyUI's attention
override; nothing here knows about ComfyUI.

Why the log-sum-exp route: the probability of key j for query i is
``exp(q_i.k_j*scale + mask_ij - lse_i)``. The fused CPU/CUDA kernels return
``lse`` with the output for free, so a captured slice costs one small matmul
(queries x captured keys) instead of the full (text+image)^2 matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

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


def as_additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """ComfyUI masks (2-4 dims, bool = keep or additive float) as a 4-D additive mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -math.inf)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return mask


def merged_mask(
    mask: Tensor | None, reweight: Reweight | None, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """The model's own mask plus ``log w`` on the keys in bias mode."""
    add = as_additive_mask(mask, dtype)
    if reweight is None or reweight.mode != "bias":
        return add
    bias = reweight.log_weights.to(device=device, dtype=dtype)[:, None, None, :]
    return bias if add is None else add + bias


def scaled_values(v: Tensor, reweight: Reweight | None, heads: int, skip_reshape: bool) -> Tensor:
    """``v_j * w_j`` in v's own layout (scale mode), else ``v`` itself."""
    if reweight is None or reweight.mode != "scale":
        return v
    w = reweight.weights.to(device=v.device, dtype=v.dtype)
    if skip_reshape:
        return v * w[:, None, :, None]
    return v * w.view(*w.shape, *([1] * (v.ndim - 2)))


def fused_with_lse(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """Output and per-query log-sum-exp from the fused kernel SDPA itself uses, or None.

    Inputs are ``[B, H, N, D]``. The LSE is ``[B, H, Nq]`` float32 (CUDA pads it
    to a multiple of 32; trimmed here).
    """
    nq = q.shape[2]
    if mask is not None:
        mask = mask.to(q.dtype)
    try:
        if q.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)
            return out, lse
        if q.device.type == "cuda":
            if mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] == v.shape[-1]:
                res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)
                return res[0], res[1][..., :nq]
            if mask is not None:
                mask = mask.expand(q.shape[0], q.shape[1], nq, k.shape[2])
            res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mask, True)
            return res[0], res[1][..., :nq]
    except (RuntimeError, NotImplementedError):
        return None
    return None


def _mask_slice(mask: Tensor | None, rows: slice, q0: int, q1: int, cols: Tensor) -> Tensor | None:
    if mask is None:
        return None
    m = mask[rows] if mask.shape[0] > 1 else mask
    m = m[:, :, q0:q1] if m.shape[2] > 1 else m
    return m.index_select(3, cols).float()


def _chunk_len(rows: int, heads: int, keys: int, n: int, chunk_bytes: int) -> int:
    per_query = max(1, rows * heads * keys * 4 * 2)
    return max(1, min(n, chunk_bytes // per_query))


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

    With ``lse`` only the captured columns are computed. Without it each query
    chunk computes its full key row once (bounded by ``chunk_bytes``) to get the
    normaliser: exact, slower, and still never the whole matrix.
    """
    q0, q1 = query_range
    rows = cap.rows
    cols = cap.columns.to(k.device)
    scale = q.shape[-1] ** -0.5
    qr = q[rows, :, q0:q1]
    kc = k[rows].index_select(2, cols).float()
    r, h, n, _ = qr.shape
    out = torch.empty((r, n, cols.numel()), dtype=torch.float32, device=q.device)
    m_cap = _mask_slice(mask, rows, q0, q1, cols)
    if lse is not None:
        lse_r = lse[rows, :, q0:q1]
        step = _chunk_len(r, h, cols.numel(), n, chunk_bytes)
    else:
        k_all = k[rows].float()
        m_all = None if mask is None else (mask[rows] if mask.shape[0] > 1 else mask)
        step = _chunk_len(r, h, k.shape[2], n, chunk_bytes)
    w = None if scale_weights is None else scale_weights[rows].index_select(1, cols).to(q.device)[:, None, None, :]
    for s in range(0, n, step):
        e = min(n, s + step)
        qc = qr[:, :, s:e].float()
        if lse is not None:
            logits = torch.matmul(qc, kc.transpose(-1, -2)).mul_(scale)
            if m_cap is not None:
                logits.add_(m_cap[:, :, s:e] if m_cap.shape[2] > 1 else m_cap)
            logits.sub_(lse_r[:, :, s:e, None])
        else:
            full = torch.matmul(qc, k_all.transpose(-1, -2)).mul_(scale)
            if m_all is not None:
                full.add_((m_all[:, :, q0 + s : q0 + e] if m_all.shape[2] > 1 else m_all).float())
            norm = torch.logsumexp(full, dim=-1, keepdim=True)
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
    (the backend ComfyUI chose, or another pack's override). When it is None and
    there is something to capture, the fused kernel gives output and LSE in one
    pass; with ``compute_out`` the capture uses the chunked exact fallback.
    """
    mask4 = merged_mask(mask, reweight, q.dtype, q.device)
    v_in = scaled_values(v, reweight, heads, skip_reshape)
    qh, kh = to_bhnd(q, heads, skip_reshape), to_bhnd(k, heads, skip_reshape)
    lse = None
    if compute_out is None:
        vh = to_bhnd(v_in, heads, skip_reshape)
        fused = fused_with_lse(qh, kh, vh, mask4)
        if fused is None:
            out = _sdpa(qh, kh, vh, mask4, skip_output_reshape)
        else:
            out, lse = from_bhnd(fused[0], skip_output_reshape), fused[1]
    else:
        biased = reweight is not None and reweight.mode == "bias"
        out = compute_out(q, k, v_in, mask4 if biased else mask)
    if not captures:
        return out, []
    qr = query_range or (0, qh.shape[2])
    sw = reweight.weights if reweight is not None and reweight.mode == "scale" else None
    maps = [capture_probs(qh, kh, mask4, lse, c, qr, sw, chunk_bytes) for c in captures]
    return out, maps


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, skip_output_reshape: bool) -> Tensor:
    return from_bhnd(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask), skip_output_reshape)
