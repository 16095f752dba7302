"""Maps at picture resolution (attention/upsample.py): the box filter and the guided filter against naive
references written plainly here in float64 (explicit windows, a 3 x 3 solve per pixel), and what the
guide buys on a picture with a sharp object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attention.maps import otsu_threshold
from attention.upsample import box, guided


def ref_box(x: np.ndarray, r: int) -> np.ndarray:
    """The mean over the (2r+1)^2 window around each pixel, clipped at the borders, by loops."""
    h, w = x.shape[-2:]
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            win = x[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            out[..., i, j] = win.mean(axis=(-1, -2))
    return out


def ref_guided(p: np.ndarray, guide: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter of ``p [H, W]`` with ``guide [3, H, W]``, written out per pixel."""
    h, w = p.shape
    a = np.zeros((3, h, w))
    b = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            sl = (slice(max(0, i - r), i + r + 1), slice(max(0, j - r), j + r + 1))
            g = guide[:, sl[0], sl[1]].reshape(3, -1)
            q = p[sl].reshape(-1)
            mu = g.mean(1)
            cov = (g @ g.T) / g.shape[1] - np.outer(mu, mu) + eps * np.eye(3)
            cov_ip = (g * q).mean(1) - mu * q.mean()
            a[:, i, j] = np.linalg.solve(cov, cov_ip)
            b[i, j] = q.mean() - a[:, i, j] @ mu
    return (ref_box(a, r) * guide).sum(0) + ref_box(b, r)


@pytest.mark.parametrize("r", [0, 1, 3, 20])
def test_box_filter_equals_explicit_windows(r):
    x = torch.rand(2, 3, 9, 14, dtype=torch.float64)
    np.testing.assert_allclose(box(x, r).numpy(), ref_box(x.numpy(), r), atol=1e-12)


def test_guided_filter_equals_reference():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(1, 2, 3, 4, generator=g)
    image = torch.rand(1, 15, 20, 3, generator=g)
    out = guided(maps, image, radius=2, eps=1e-2)
    up = F.interpolate(maps, size=(15, 20), mode="bilinear", align_corners=False)[0].double().numpy()
    for k in range(2):
        expected = ref_guided(up[k], image[0].permute(2, 0, 1).double().numpy(), 2, 1e-2)
        np.testing.assert_allclose(out[0, k].double().numpy(), expected, atol=1e-5)


def test_guided_is_linear_in_the_map_and_keeps_a_flat_picture_smooth():
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(2, 3, 4, 4, generator=g)
    image = torch.rand(2, 32, 32, 3, generator=g)
    torch.testing.assert_close(guided(3.0 * maps, image), 3.0 * guided(maps, image), rtol=1e-4, atol=1e-5)
    flat = torch.full((1, 32, 32, 3), 0.5)  # no edges: the output is the bilinear map, box-filtered twice
    up = F.interpolate(maps[:1], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(guided(maps[:1], flat, radius=4), box(box(up, 4), 4), rtol=0, atol=1e-5)


def test_guided_follows_the_edges_of_the_picture():
    """A blurry map of a sharp square: bilinear thresholding spills over its edges, the guided map does not."""
    image = torch.zeros(1, 128, 128, 3)
    image[0, 30:70, 20:60, 0] = 1.0
    region = torch.zeros(128, 128, dtype=torch.bool)
    region[30:70, 20:60] = True
    small = torch.zeros(1, 1, 8, 8)
    small[0, 0, 2:4, 1:4] = 1.0  # the cells the square mostly covers

    def iou(m: torch.Tensor) -> float:
        pred = m > otsu_threshold(m)
        return float((pred & region).sum() / (pred | region).sum())

    bilinear = F.interpolate(small, size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
    sharp = guided(small, image)[0, 0]
    assert iou(sharp) > iou(bilinear) + 0.1 and iou(sharp) > 0.9
