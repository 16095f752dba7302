"""Regions (Enfoque Region): a prompt's words confined to a mask inside the patched model's attention.

A region travels on the conditioning (``REGIONS_KEY``), like the token layout: the mask, the context
positions of its words, its strength and step window. When a patched model samples, each attention call
of that prompt's rows gets, on the region's text columns and for every image query, the bias
``log(1 - strength (1 - m))`` of the mask ``m`` pooled by area onto the call's token grid
(`attention.regions`). A full mask or strength 0 is no bias at all, and the call runs as it would
without the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...attention.aggregate import level_grid
from ...attention.layout import LAYOUT_KEY, TokenLayout
from ...attention.oncelog import OnceLog
from ...attention.regions import RegionBias, area_pool, log_weights
from ..common.notify import notify
from ..names import DISPLAY_NAMES

NODE = DISPLAY_NAMES["EnfoqueRegion"]
REGIONS_KEY = "enfoque_regions"
# whether a region's words, as queries of a joint attention, also see only the image inside the mask (as
# ComfyUI core's Flux attention masks do): benchmarks/regions.py measured both on the shapes model, and with
# it the object landed in its quadrant more often (58 % against 54 % of 48 pictures; 50 % against 38 % in
# the quick run), so it is on
WORDS_SEE_MASK = True


@dataclass(frozen=True)
class RegionSpec:
    """One Enfoque Region on a conditioning: ``mask [frames or 1, H, W]`` in [0, 1] (CPU), the context
    positions of its words, how strongly outside the mask they are left out, and when (a step window)."""

    mask: torch.Tensor
    positions: tuple[int, ...]
    strength: float
    start_percent: float
    end_percent: float
    words: str  # as written, for messages
    node_id: str | None = None
    words_see_mask: bool = WORDS_SEE_MASK

    def __deepcopy__(self, memo: dict) -> RegionSpec:
        return self  # conditionings are copied as they travel; the mask is never changed

    @property
    def name(self) -> str:
        return f"{NODE} ({self.words or 'all words'})"


def with_region(conditioning: list, spec_for) -> list:
    """A copy of the conditioning with one more region on each of its entries: ``spec_for(layout)`` gives
    the entry's `RegionSpec` from its token layout (positions differ between combined prompts)."""
    out = []
    for t, d in conditioning:
        layout = d.get(LAYOUT_KEY) or TokenLayout.positional(int(t.shape[1]))
        out.append([t, {**d, REGIONS_KEY: (*d.get(REGIONS_KEY, ()), spec_for(layout))}])
    return out


def region_sigmas(specs, model_sampling) -> dict[int, tuple[float, float]]:
    """Each region's step window as (highest, lowest) sigma, as ComfyUI's own start/end_percent."""
    return {id(s): (float(model_sampling.percent_to_sigma(s.start_percent)),
                    float(model_sampling.percent_to_sigma(s.end_percent))) for s in specs}


def check_regions(specs, frames: int, image_hw: tuple[int, int], log: OnceLog) -> None:
    """Before sampling: a mask batch must give one mask, or one per latent frame; a mask of another size
    than the picture is resized (said once, on the node too)."""
    for s in specs:
        f, h, w = s.mask.shape
        if f not in (1, frames):
            raise ValueError(f"{NODE}: the mask batch holds {f} masks and the video has {frames} latent frames; "
                             "give one mask for all frames, or one per latent frame.")
        if (h, w) != tuple(image_hw) and log.once(("region-size", id(s)), "%s: the mask is %dx%d px, the picture "
                                                  "%dx%d; it is resized onto each block's token grid", s.name, w, h,
                                                  image_hw[1], image_hw[0]):
            notify(s.node_id, f"{NODE}: the mask is {w}x{h} px and the picture {image_hw[1]}x{image_hw[0]}; it "
                   "was resized. Make the mask at the picture's size to place it exactly.")


@dataclass
class RegionPlan:
    """The regions of one attention call shape: per prompt, its rows and each region's key columns."""

    rows: list[tuple[slice, object, torch.Tensor]] = field(default_factory=list)  # (rows, spec, key columns)

    def add(self, rows: slice, spec: RegionSpec, start: int, length: int, reps: int, device: torch.device) -> None:
        kept = [p for p in spec.positions if p < length]
        if kept and spec.strength > 0:
            cols = torch.tensor(kept, dtype=torch.long)
            self.rows.append((rows, spec, torch.cat([cols + start + m * length for m in range(reps)]).to(device)))


class RegionMasks:
    """Each region's mask on each token grid it meets, built once per run: ``[tokens]`` log weights, or
    None where the region is no bias there (a full mask, strength 0)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor | None] = {}

    def log_w(self, spec: RegionSpec, grid: tuple[int, int], frames: int, device: torch.device) -> torch.Tensor | None:
        key = (id(spec), grid, frames, device)
        if key not in self._cache:
            h = grid[0] // frames
            masks = spec.mask if spec.mask.shape[0] == frames else spec.mask[:1].expand(frames, -1, -1)
            pooled = area_pool(masks, (h, grid[1])).reshape(-1)  # frame-major, as the model's tokens
            lw = log_weights(pooled, spec.strength)
            self._cache[key] = None if bool((lw == 0).all()) else lw.to(device)
        return self._cache[key]


def biases(plan: RegionPlan, masks: RegionMasks, sigma: float, windows: dict[int, tuple[float, float]],
           run_grid: tuple[int, int], call_grid: tuple[int, int], n_queries: int, frames: int,
           device: torch.device) -> list[RegionBias]:
    """The region biases of one attention call: the regions in their step window at ``sigma``, each mask on
    the call's grid (a UNet level's grid from its number of queries)."""
    out = []
    for rows, spec, cols in plan.rows:
        hi, lo = windows[id(spec)]
        if not lo <= sigma <= hi:
            continue
        grid = call_grid
        if grid[0] * grid[1] != n_queries:
            grid = level_grid(run_grid, n_queries)
        lw = masks.log_w(spec, grid, frames if grid[0] % frames == 0 else 1, device)
        if lw is None:
            continue
        r = rows.stop - rows.start
        out.append(RegionBias(rows, cols, lw[None, :, None].expand(r, -1, 1)))
    return out


def regions_of(conds: dict) -> list[RegionSpec]:
    """Every region on the conditionings of a sampling run."""
    return [s for role in ("positive", "negative") for c in conds.get(role) or [] if isinstance(c, dict)
            for s in c.get(REGIONS_KEY, ())]


def latent_pixels(latent_shape: tuple[int, ...], downscale: int) -> tuple[int, int]:
    return int(latent_shape[-2]) * downscale, int(latent_shape[-1]) * downscale
