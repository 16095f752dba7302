"""Maps at picture resolution: bilinear, or guided by the picture's own edges.

A map lives on the model's token grid (a 1024 px SDXL picture: 128 x 128 cells; Flux: 64 x 64), so a mask
made by upsampling it bilinearly is blocky and spills over the edges of the object. ``guided`` is joint
bilateral upsampling (Kopf et al., SIGGRAPH 2007) with the picture as the guide: each pixel's value is a
weighted mean of the map's nearby cells, each weighted by its distance on the grid and by how close the
picture's colour at the pixel is to the colour over that cell, so a pixel takes its value from the cells
that look like it. Measured on the shapes model (docs/benchmarks.md), He's guided filter, fitted to the
bilinear map, changed almost nothing; this recovers the objects' outlines. Linear in the map, one word at a
time: memory stays a few pictures' worth whatever the number of words. Pure torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

UPSCALE = ("bilinear", "guided")
SIGMA_CELLS = 2.0  # spatial reach, in token cells: a pixel draws on the cells about two cells around it
SIGMA_COLOUR = 0.1  # colour reach, on the RGB distance of a guide in [0, 1]: a clear edge stops it


def _neighbours(size: int, cells: int, reach: int, device) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per pixel along one axis, for each cell offset: the cell index, whether it exists, and the squared
    distance (in cells) from the pixel's centre to the cell's centre."""
    u = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (cells / size) - 0.5
    near = torch.round(u).long()
    out = []
    for d in range(-reach, reach + 1):
        c = near + d
        out.append((c.clamp(0, cells - 1), (c >= 0) & (c < cells), (u - c) ** 2))
    return out


def guided(maps: Tensor, image: Tensor, sigma_cells: float = SIGMA_CELLS, sigma_colour: float = SIGMA_COLOUR) -> Tensor:
    """``maps [B, words, h, w]`` at the size of ``image [B or 1, H, W, 3]`` (ComfyUI IMAGE, in [0, 1]) by joint
    bilateral upsampling: pixel p gets ``sum_q M[q] w(p, q) / sum_q w(p, q)`` over the cells q within
    ``2 sigma_cells`` of it, ``w = exp(-|p - q|^2 / 2 sigma_cells^2 - |I(p) - I(q)|^2 / 2 sigma_colour^2)``,
    with ``|p - q|`` in cells and ``I(q)`` the picture's mean colour over cell q."""
    if image.ndim == 3:
        image = image[None]
    b = maps.shape[0]
    guide = image[..., :3].permute(0, 3, 1, 2).to(torch.float32).clamp(0.0, 1.0)  # [Bi, 3, H, W]
    rows = max(b, guide.shape[0])
    return torch.stack([_one_picture(maps[r if b > 1 else 0].to(device=guide.device, dtype=torch.float32),
                                     guide[r if guide.shape[0] > 1 else 0], sigma_cells, sigma_colour)
                        for r in range(rows)])


def _one_picture(m: Tensor, guide: Tensor, sigma_cells: float, sigma_colour: float) -> Tensor:
    """``m [words, h, w]`` at the size of ``guide [3, H, W]``."""
    words, h, w = m.shape
    big_h, big_w = guide.shape[-2:]
    cell_colour = F.interpolate(guide[None], size=(h, w), mode="area")[0]  # [3, h, w]
    reach = max(1, math.ceil(2 * sigma_cells))
    rows = _neighbours(big_h, h, reach, guide.device)
    cols = _neighbours(big_w, w, reach, guide.device)
    # one pass with a running maximum of each pixel's log-weight (as a streaming softmax), so that exp never
    # underflows to 0 / 0 where the pixel's colour is far from every cell's
    top = torch.full((big_h, big_w), -math.inf, device=guide.device)
    num = torch.zeros((words, big_h, big_w), device=guide.device)
    den = torch.zeros((big_h, big_w), device=guide.device)
    for iy, vy, dy2 in rows:
        for ix, vx, dx2 in cols:
            spatial = -(dy2[:, None] + dx2[None]) / (2 * sigma_cells**2)
            colour = -((guide - cell_colour[:, iy][:, :, ix]) ** 2).sum(0) / (2 * sigma_colour**2)
            lw = torch.where(vy[:, None] & vx[None], spatial + colour, -math.inf)
            new_top = torch.maximum(top, lw)
            keep = torch.exp(top - new_top).nan_to_num_(0.0)  # -inf - -inf: nothing kept yet
            wt = torch.exp(lw - new_top).nan_to_num_(0.0)
            den.mul_(keep).add_(wt)
            for k in range(words):  # one word at a time: no [words, offsets, H, W] tensor
                num[k].mul_(keep).add_(wt * m[k][iy][:, ix])
            top = new_top
    return num / den
