"""Regions in the engine (attention/regions.py): the split attention with a per-query bias on text keys
against a naive float64 softmax over all keys with the whole bias matrix written out here (which the
engine never builds), for joint and cross layouts, masks, weights and captures; and the exact
area pooling of a mask onto a token grid."""

from __future__ import annotations

import math

import pytest
import torch

from attention.engine import Capture, Reweight
from attention.regions import RegionBias, area_pool, attend_split, log_weights


def naive(q, k, v, bias, scale_w=None):
    """softmax(q k^T / sqrt(d) + bias) v in float64, [B, H, N, D] layout; also the probabilities."""
    logits = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5 + bias.double()
    p = torch.softmax(logits, dim=-1)
    p = torch.nan_to_num(p)
    vv = v.double() if scale_w is None else v.double() * scale_w.double()[:, None, :, None]
    return p @ vv, p


def layouts():
    # name, (text keys t0..t1), (image queries q0..q1), Nq, Nk
    return [("joint", (0, 7), (7, 27), 27, 27), ("joint-left-padded", (3, 9), (12, 32), 32, 32),
            ("nextdit-padded", (0, 6), (8, 28), 32, 32), ("cross", (0, 9), (0, 20), 20, 9)]


@pytest.mark.parametrize("name,text,image,nq,nk", layouts())
@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("weights", [None, "bias", "scale"])
@pytest.mark.parametrize("words_see_mask", [False, True])
def test_split_attention_equals_naive_softmax(name, text, image, nq, nk, strength, weights, words_see_mask):
    g = torch.Generator().manual_seed(7)
    b, h, d = 2, 2, 8
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))
    t0, t1 = text
    q0, q1 = image
    n_img = q1 - q0
    pooled = torch.rand(n_img, generator=g)
    pooled[: n_img // 3] = 0.0  # outside the mask
    pooled[-3:] = 1.0
    lw = log_weights(pooled, strength)
    cols = torch.tensor([t0 + 1, t0 + 3])
    biases = [RegionBias(slice(0, 1), cols, lw[None, :, None])]
    mask = torch.zeros(1, 1, nq, nk)
    mask[..., -1] = -math.inf if name != "cross" else 0.0  # a masked key (NextDiT's padding), not for cross
    w = torch.ones(b, nk)
    w[:, t0 + 2] = 2.0
    w[1, t0 + 1] = 0.5
    rw = Reweight.build(w, weights) if weights else None
    caps = [Capture(slice(0, 1), torch.arange(t0, t1)), Capture(slice(1, 2), torch.arange(t0, t1))]
    out, maps = attend_split(q, k, v, h, text=text, image_queries=image, biases=biases, mask=mask,
                             skip_reshape=True, skip_output_reshape=True, reweight=rw, captures=caps,
                             words_see_mask=words_see_mask)
    full = mask.expand(b, 1, nq, nk).clone()
    if weights == "bias":
        full = full + torch.log(w)[:, None, None, :]
    full[0, 0, q0:q1][:, cols] += lw[:, None]  # the region, written out on the whole matrix
    if words_see_mask and name != "cross":  # the words' own queries see the image keys through the mask too
        full[0, 0, cols, q0:q1] += lw[None, :]
    ref_out, p = naive(q, k, v, full, w if weights == "scale" else None)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=0)
    for c, m in zip(caps, maps, strict=True):
        ref = p[c.rows, :, q0:q1][..., c.columns]
        if weights == "scale":
            ref = ref * w[c.rows][:, None, None, c.columns]
        torch.testing.assert_close(m.double(), ref.sum(1), atol=1e-5, rtol=0)
    if strength == 1.0:  # outside the mask, row 0's image queries give the region's words nothing
        assert maps[0][0, : n_img // 3][:, [1, 3]].abs().max() == 0


def test_split_attention_in_comfy_layout_and_half_precision():
    g = torch.Generator().manual_seed(3)
    b, h, d, nt, ni = 1, 2, 16, 5, 12
    q, k, v = (torch.randn(b, nt + ni, h * d, generator=g) for _ in range(3))
    lw = log_weights(torch.linspace(0, 1, ni), 1.0)
    bias = [RegionBias(slice(0, 1), torch.tensor([2]), lw[None, :, None])]
    out, _ = attend_split(q, k, v, h, text=(0, nt), image_queries=(nt, nt + ni), biases=bias)
    qh, kh, vh = (t.view(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
    full = torch.zeros(b, 1, nt + ni, nt + ni)
    full[0, 0, nt:, 2] += lw
    ref, _ = naive(qh, kh, vh, full)
    torch.testing.assert_close(out.double(), ref.transpose(1, 2).reshape(b, nt + ni, h * d), atol=1e-5, rtol=0)
    half, _ = attend_split(q.bfloat16(), k.bfloat16(), v.bfloat16(), h, text=(0, nt), image_queries=(nt, nt + ni),
                           biases=bias)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), ref.transpose(1, 2).reshape(b, nt + ni, h * d), atol=5e-2, rtol=0)


def area_reference(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Each cell's mean over the pixels it covers, a pixel cut by an edge weighted by its share, by loops
    over a copy of the mask made h x w times finer (where every cell edge falls on a pixel edge)."""
    big = mask.repeat_interleave(h, -2).repeat_interleave(w, -1).double()
    hh, ww = big.shape[-2:]
    out = torch.zeros(mask.shape[0], h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            y0, y1 = i * hh // h, (i + 1) * hh // h
            x0, x1 = j * ww // w, (j + 1) * ww // w
            out[:, i, j] = big[:, y0:y1, x0:x1].mean(dim=(-1, -2))
    return out


@pytest.mark.parametrize("size", [(4, 4), (3, 5), (7, 2)])
def test_area_pool_weighs_pixels_by_the_area_they_cover(size):
    mask = (torch.rand(2, 14, 10, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    torch.testing.assert_close(area_pool(mask, size).double(), area_reference(mask, *size), atol=1e-6, rtol=0)
    full = area_pool(torch.ones(1, 14, 10), size)
    assert torch.equal(log_weights(full, 1.0), torch.zeros_like(full))  # a full mask: no bias at all
