"""Maps at picture resolution (attention/upsample.py): joint bilateral upsampling against a naive reference
written plainly here in float64 (every pixel, every cell), and what the guide buys on a picture with a
sharp object."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attention.maps import otsu_threshold
from attention.upsample import guided


def ref_joint_bilateral(m: np.ndarray, image: np.ndarray, sigma_cells: float, sigma_colour: float) -> np.ndarray:
    """``m [h, w]`` at ``image [H, W, 3]``'s size: per pixel, the mean of the cells within 2 sigma_cells of
    the cell nearest its centre (on both axes), weighted by the grid distance and the colour distance to the
    cell's mean colour."""
    h, w = m.shape
    big_h, big_w = image.shape[:2]
    sy, sx = big_h / h, big_w / w
    cell = np.zeros((h, w, 3))
    for a in range(h):
        for c in range(w):  # area mean of the picture over the cell (the sizes divide here)
            cell[a, c] = image[round(a * sy) : round((a + 1) * sy), round(c * sx) : round((c + 1) * sx)].mean((0, 1))
    reach = math.ceil(2 * sigma_cells)
    out = np.zeros((big_h, big_w))
    for y in range(big_h):
        for x in range(big_w):
            uy, ux = (y + 0.5) / sy - 0.5, (x + 0.5) / sx - 0.5
            num = den = 0.0
            for a in range(int(np.round(uy)) - reach, int(np.round(uy)) + reach + 1):
                for c in range(int(np.round(ux)) - reach, int(np.round(ux)) + reach + 1):
                    if not (0 <= a < h and 0 <= c < w):
                        continue
                    d2 = (uy - a) ** 2 + (ux - c) ** 2
                    r2 = ((image[y, x] - cell[a, c]) ** 2).sum()
                    wt = math.exp(-d2 / (2 * sigma_cells**2) - r2 / (2 * sigma_colour**2))
                    num += wt * m[a, c]
                    den += wt
            out[y, x] = num / den
    return out


@pytest.mark.parametrize("sigmas", [(2.0, 0.1), (1.0, 0.3), (0.5, 1.0)])
def test_guided_equals_reference(sigmas):
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(1, 2, 4, 5, generator=g)
    image = torch.rand(1, 12, 20, 3, generator=g)
    image[0, :6, :8] = torch.tensor([1.0, 0.0, 0.0])  # a flat patch with an edge, beside noise
    out = guided(maps, image, *sigmas)
    for k in range(2):
        expected = ref_joint_bilateral(maps[0, k].double().numpy(), image[0].double().numpy(), *sigmas)
        np.testing.assert_allclose(out[0, k].double().numpy(), expected, atol=1e-5)


def test_guided_pairs_batch_rows_with_their_pictures():
    g = torch.Generator().manual_seed(5)
    maps = torch.rand(2, 3, 4, 4, generator=g)
    images = torch.rand(2, 16, 16, 3, generator=g)
    both = guided(maps, images)
    for row in range(2):
        torch.testing.assert_close(both[row], guided(maps[row : row + 1], images[row : row + 1])[0])
    one_picture = guided(maps, images[:1])  # one picture guides every row
    torch.testing.assert_close(one_picture[1], guided(maps[1:2], images[:1])[0])


def test_guided_is_linear_in_the_map_and_keeps_a_constant_map():
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(2, 3, 4, 4, generator=g)
    image = torch.rand(2, 32, 32, 3, generator=g)
    torch.testing.assert_close(guided(3.0 * maps, image), 3.0 * guided(maps, image), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided(torch.full((1, 1, 4, 4), 0.7), image[:1]), torch.full((1, 1, 32, 32), 0.7))


def test_guided_never_divides_zero_by_zero():
    """A pixel whose colour is far from every nearby cell's (white on black) still gets a value."""
    image = torch.zeros(1, 64, 64, 3)
    image[0, 31, 31] = 1.0
    out = guided(torch.rand(1, 1, 8, 8), image)
    assert torch.isfinite(out).all()


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
    assert iou(sharp) > iou(bilinear) + 0.1 and iou(sharp) > 0.9, (iou(bilinear), iou(sharp))
