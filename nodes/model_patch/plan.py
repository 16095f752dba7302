"""What one attention call captures and reweights: built once per call shape of a run.

The batch of an attention call holds the rows of several conditionings (``uuids``, in
order, equal numbers of rows). The model attends to ``txt_len`` text tokens; a conditioning
of its own length ``L`` is there ``txt_len / L`` times (ComfyUI repeats shorter
conditionings to the least common multiple when it batches several lengths together), so
its captured columns and weights repeat every ``L`` positions and the captured copies are
summed back into one. A ``txt_len`` that is no whole number of copies is not this
conditioning's text: it is skipped for that call and the run's log says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from ...attention.engine import Capture, Reweight
from ...attention.oncelog import OnceLog
from .regions import RegionPlan
from .state import Area, ProbeConfig, Route, Site


@dataclass
class Plan:
    captures: list[Capture]
    keys: list[Hashable]
    copies: list[int]
    reducers: list[torch.Tensor | None]  # per capture: columns -> the kept maps (`state.Route.reducer`)
    areas: list[Area | None]
    reweight: Reweight | None
    query_range: tuple[int, int]
    regions: RegionPlan | None = None  # Enfoque Region's words of some rows, on the text keys
    text_range: tuple[int, int] = (0, 0)  # where the text keys are


def area_for(area, latent_hw: tuple[int, int], patch: int, grid: tuple[int, int], name: str,
               log: OnceLog) -> Area | None:
    """Where an area conditioning's queries land on the map grid. ``area`` is ComfyUI's resolved
    ``(h, w, y, x)`` in latent pixels (ConditioningSetArea), clamped as ComfyUI crops the latent."""
    h, w, y, x = (int(a) for a in area)
    lh, lw = latent_hw
    h, w = min(lh - y, h), min(lw - x, w)
    if (y, x, h, w) == (0, 0, lh, lw):
        return None
    if patch > 1 and (y % patch or x % patch):
        log.once(("area-offset", name), "the %s has an area at latent (%d, %d), not on the %dx%d patch grid; its "
                 "maps are placed at the nearest patch", name, y, x, patch, patch)
    gy, gx = y // patch, x // patch
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    gh, gw = min(gh, grid[0] - gy), min(gw, grid[1] - gx)
    return Area(gy, gx, gh, gw)


def build_plan(site: Site, uuids: list, routes: dict[Any, Route], areas: dict[Any, Area | None],
               config: ProbeConfig, call_grid: tuple[int, int], q_len: int, k_len: int, batch: int,
               device: torch.device, log: OnceLog, placement: Callable[[int], tuple[int, int]] | None = None,
               frames: int = 1) -> Plan | None:
    """Captures (rows x columns), reweighting and query range of one attention call shape, or None.

    ``placement(length)`` gives the (length, offset) a conditioning of ``length`` tokens has in the
    text the model attends to (Flux 2 left-pads shorter ones); the text starts at the first key."""
    if not uuids or batch % len(uuids):
        log.once(("rows", batch, len(uuids)), "an attention call of %d rows for %d conditionings cannot be split "
                 "into prompts; it is neither captured nor reweighted", batch, len(uuids))
        return None
    rows = batch // len(uuids)
    captures, keys, copies, places, reducers = [], [], [], [], []
    weights = None
    regions = RegionPlan()
    for i, u in enumerate(uuids):
        route = routes.get(u)
        if route is None:
            log.once(("unknown", u), "a conditioning the run did not start with reached the model; its rows are "
                     "neither captured nor reweighted")
            continue
        length, offset = placement(route.length) if placement is not None else (route.length, 0)
        if length <= 0 or site.txt_len % length:
            log.once(("length", route.role, route.index, site.txt_len),
                     "the %s has %d context tokens, but block %d attends to %d text tokens, no whole number of "
                     "copies of it; its maps and weights are skipped there", route.name, length, site.block,
                     site.txt_len)
            continue
        reps = site.txt_len // length
        start = offset
        sl = slice(i * rows, (i + 1) * rows)
        area = areas.get(u)
        if area is not None and frames > 1:
            log.once(("area-video", route.role, route.index), "the %s has an area (ConditioningSetArea) on a "
                     "video latent; its maps are not captured (its weights still apply)", route.name)
        elif config.captures(route.role) and route.columns:
            cols = torch.tensor(route.columns, dtype=torch.long)
            cols = torch.cat([cols + start + m * length for m in range(reps)]).to(device)
            captures.append(Capture(sl, cols))
            keys.append((route.role, route.index))
            copies.append(reps)
            places.append(area)
            r = route.reducer()
            reducers.append(None if r is None else r.to(device))
        for spec in route.regions:
            if area is not None:
                log.once(("region-area", route.role, route.index), "the %s has an area (ConditioningSetArea); its "
                         "regions (Enfoque Region) do not act on it", route.name)
                break
            regions.add(sl, spec, start, length, reps, device)
        if config.reweight != "off" and route.layout.weights:
            if weights is None:
                weights = torch.ones(batch, k_len)
            for pos, wt in route.layout.weights.items():
                for m in range(reps):
                    weights[sl, start + pos + m * length] = wt
    reweight = Reweight.build(weights.to(device), config.reweight) if weights is not None else None
    if site.seq_len is None and not site.cross_in_block:
        query_range = (0, q_len)  # UNet cross-attention: every query of its level
    else:
        n_img = call_grid[0] * call_grid[1]
        q0 = site.query_start
        if (captures or regions.rows) and q_len < q0 + n_img:
            if site.img_start is None and site.seq_len is not None:
                log.once(("queries", site.block, q_len), "block %d has %d queries, fewer than its %d text and %d "
                         "image tokens; it is not captured and its regions do not act", site.block, q_len,
                         site.txt_len, n_img)
            else:
                log.once(("queries", site.block, q_len), "block %d has %d queries, fewer than the %d image tokens "
                         "from query %d on; it is not captured and its regions do not act", site.block, q_len,
                         n_img, q0)
            captures, keys, copies, places, reducers = [], [], [], [], []
            regions = RegionPlan()
        query_range = (q0, q0 + n_img)
    if not captures and reweight is None and not regions.rows:
        return None
    return Plan(captures, keys, copies, reducers, places, reweight, query_range, regions if regions.rows else None,
                (0, site.txt_len if site.seq_len is not None or site.cross_in_block else k_len))
