"""Maps at picture resolution: bilinear, or guided by the picture's own edges.

A map lives on the model's token grid (a 1024 px SDXL picture: 128 x 128 cells; Flux: 64 x 64), so a mask
made by upsampling it bilinearly is blocky and spills over the edges of the object. ``guided`` upsamples
bilinearly and then runs He et al.'s guided filter (ECCV 2010) with the picture as the guide: in every
window the output is a linear function of the picture's colours fitted to the map, so it keeps the
map's values where the picture is flat and follows the picture's edges where the map changes. It is
linear in the map (normalising before or after gives the same result) and works one word at a time,
so memory stays a few pictures' worth whatever the number of words. Pure torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import resize

UPSCALE = ("bilinear", "guided")
GUIDED_EPS = 1e-2  # regularisation of the filter, for a guide in [0, 1]: larger keeps more of the map's shape


def box(x: Tensor, r: int) -> Tensor:
    """The mean of ``x [..., H, W]`` over the ``(2r+1) x (2r+1)`` window around each pixel, the window
    clipped at the borders (cumulative sums: O(H W) whatever ``r``)."""
    h, w = x.shape[-2:]
    dev = x.device

    def along(t: Tensor, n: int, dim: int) -> tuple[Tensor, Tensor]:
        c = torch.cumsum(F.pad(t, (0, 0, 1, 0) if dim == -2 else (1, 0)), dim=dim)
        i = torch.arange(n, device=dev)
        hi, lo = (i + r + 1).clamp(max=n), (i - r).clamp(min=0)
        return c.index_select(dim, hi) - c.index_select(dim, lo), (hi - lo).to(t.dtype)

    rows, nh = along(x, h, -2)
    both, nw = along(rows, w, -1)
    return both / (nh[:, None] * nw[None, :])


def guided(maps: Tensor, image: Tensor, radius: int | None = None, eps: float = GUIDED_EPS) -> Tensor:
    """``maps [B, words, h, w]`` at the size of ``image [B or 1, H, W, 3]`` (ComfyUI IMAGE, in [0, 1]),
    upsampled bilinearly and then guided-filtered with the picture's colours as the guide.

    ``radius``: the filter's window half-size in picture pixels; by default half a token cell
    (``H / h / 2``), so each window sees about one cell of the map."""
    if image.ndim == 3:
        image = image[None]
    b, words, h, w = maps.shape
    big_h, big_w = int(image.shape[1]), int(image.shape[2])
    if radius is None:
        radius = max(1, round(max(big_h / h, big_w / w) / 2))
    guide = image[..., :3].permute(0, 3, 1, 2).to(torch.float32).clamp(0.0, 1.0)  # [Bi, 3, H, W]
    mean_i = box(guide, radius)
    # the colours' covariance in each window, regularised, and its inverse (3 x 3 per pixel)
    cov = torch.empty((*guide.shape[:1], 3, 3, big_h, big_w), dtype=torch.float32, device=guide.device)
    for i in range(3):
        for j in range(i, 3):
            cov[:, i, j] = cov[:, j, i] = box(guide[:, i] * guide[:, j], radius) - mean_i[:, i] * mean_i[:, j]
    cov += eps * torch.eye(3, device=guide.device)[None, :, :, None, None]
    inv = torch.linalg.inv(cov.permute(0, 3, 4, 1, 2)).permute(0, 3, 4, 1, 2)  # [Bi, 3, 3, H, W]
    out = torch.empty((max(b, guide.shape[0]), words, big_h, big_w), dtype=torch.float32, device=guide.device)
    for row in range(out.shape[0]):
        g = row if guide.shape[0] > 1 else 0
        up = F.interpolate(maps[row if b > 1 else 0].to(torch.float32)[None], size=(big_h, big_w),
                           mode="bilinear", align_corners=False)[0]
        for k in range(words):  # one word at a time: memory stays a few pictures' worth
            p = up[k]
            mean_p = box(p, radius)
            cov_ip = box(guide[g] * p, radius) - mean_i[g] * mean_p  # [3, H, W]
            a = torch.einsum("ijhw,jhw->ihw", inv[g], cov_ip)
            bias = mean_p - (a * mean_i[g]).sum(0)
            out[row, k] = (box(a, radius) * guide[g]).sum(0) + box(bias, radius)
    return out


def to_size(maps: Tensor, size: tuple[int, int], upscale: str = "bilinear", image: Tensor | None = None) -> Tensor:
    """``maps [B, words, h, w]`` at ``size``: bilinear, or ``guided`` by ``image`` (at that size)."""
    if upscale == "guided" and image is not None:
        return guided(maps, image)
    return resize(maps, size)
