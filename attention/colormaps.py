"""Perceptual colormaps as shipped lookup tables, applied with torch.

ComfyUI does not install matplotlib, so the 256-entry tables live as plain data
in `_colormap_data.py` and are interpolated here. Values between two entries are
linearly interpolated, so `apply_colormap(0)` and `apply_colormap(1)` give the
exact first and last table entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._colormap_data import TABLES

COLORMAPS: tuple[str, ...] = ("viridis", "inferno", "turbo", "jet")

_LUT_CACHE: dict[tuple[str, str, torch.dtype], Tensor] = {}


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in TABLES:
        raise ValueError(f"Unknown colormap {name!r}; choose one of: {', '.join(COLORMAPS)}.")
    return key


def colormap_lut(name: str = "viridis") -> Tensor:
    """The table as a `[256, 3]` float32 tensor in [0, 1] (a fresh copy, safe to modify)."""
    key = _check_name(name)
    hexes = TABLES[key]
    raw = bytes.fromhex(hexes)
    if len(raw) != 256 * 3:
        raise ValueError(f"Colormap table {key!r} is corrupt: {len(raw)} bytes instead of 768.")
    return torch.tensor(list(raw), dtype=torch.float32).reshape(256, 3) / 255.0


def _lut(name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    key = (_check_name(name), str(device), dtype)
    lut = _LUT_CACHE.get(key)
    if lut is None:
        lut = colormap_lut(name).to(device=device, dtype=dtype)
        _LUT_CACHE[key] = lut
    return lut


def apply_colormap(x: Tensor, name: str = "viridis") -> Tensor:
    """Colour a map `[..., H, W]` with values in [0, 1] into `[..., H, W, 3]` RGB in [0, 1].

    Values outside [0, 1] are clamped (callers normalise first); NaN is refused
    because it would silently paint as the lowest colour.
    """
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    x = x.to(dtype)
    if torch.isnan(x).any():
        raise ValueError("apply_colormap: the map contains NaN; normalise or clean it first.")
    lut = _lut(name, x.device, dtype)
    pos = x.clamp(0.0, 1.0) * 255.0
    lo = pos.floor().clamp(max=254.0)
    frac = (pos - lo).unsqueeze(-1)
    i0 = lo.long()
    return lut[i0] * (1.0 - frac) + lut[i0 + 1] * frac
