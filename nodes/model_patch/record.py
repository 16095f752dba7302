"""One sampling run of a patched model: what it knows of its conditionings, and the running sums it
records into, call by call.

Whatever a run cannot capture or reweight (a prompt whose length does not fit the text the model
attends to, an attention call it cannot read, q/k/v that are not plain tensors) is said once per run
in its log (`OnceLog`), with the reason, never skipped in silence; the log travels with the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import comfy.samplers as comfy_samplers
import torch

from ...attention.aggregate import MapAccumulator
from ...attention.oncelog import OnceLog
from .plan import Plan, area_for, build_plan
from .regions import RegionMasks, biases
from .state import Area, CallState, Geometry, ProbeConfig, Route, Site

log = logging.getLogger(__name__)


def run_log() -> OnceLog:
    """The log of one run: each reason once, in Enfoque's voice."""
    return OnceLog(log, prefix="Enfoque: ")


@dataclass
class RunRecord:
    """A sampling run: its conditionings (`Route` by uuid), step window and latent, and what it records."""

    config: ProbeConfig
    geometry: Geometry
    routes: dict[Any, Route]
    sigma_hi: float
    sigma_lo: float
    placement: Callable[[int], tuple[int, int]]  # where a conditioning of its own length sits in the text
    grid: tuple[int, int] | None = None  # the map grid of the whole latent
    batch: int = 0
    frames: int = 1  # latent frames (video); the grid holds them stacked on its rows
    with_concepts: bool = False
    log: OnceLog = field(default_factory=run_log)
    acc: MapAccumulator | None = None
    concept_acc: MapAccumulator | None = None  # concept maps (EnfoqueConcepts), keyed like acc
    refined_acc: MapAccumulator | None = None  # refined maps (refine on), keyed like acc
    step: int = -1
    last_sigma: float | None = None
    plans: dict[tuple, Plan | None] = field(default_factory=dict)
    blocks_seen: set[int] = field(default_factory=set)
    active_steps: set[int] = field(default_factory=set)
    step_sigmas: dict[int, float] = field(default_factory=dict)  # the sigma of each step
    batch_calls: int | None = None  # calc_cond_batch calls in the current noise prediction
    guidance: bool = False  # inside a guidance pass
    areas: dict[Any, Area | None] = field(default_factory=dict)  # uuid -> area on the grid (None: none)
    region_windows: dict[int, tuple[float, float]] = field(default_factory=dict)  # Enfoque Region: (hi, lo) sigma
    region_masks: RegionMasks = field(default_factory=RegionMasks)

    # -- per model call ------------------------------------------------------------------------
    def call_state(self, x: torch.Tensor, sigma: torch.Tensor) -> CallState:
        """A model call starts: its step (a new sigma is a new step) and whether it is in the window."""
        s = float(sigma.max())  # one host read per model call, as ComfyUI's own step windows do
        if s != self.last_sigma:
            self.step += 1
            self.last_sigma = s
            self.step_sigmas[self.step] = s
        active = self.sigma_lo <= s <= self.sigma_hi
        if active:
            self.active_steps.add(self.step)
        grid = self.geometry.grid(tuple(x.shape))
        if self.acc is None:
            self.acc = self._accumulator(self.grid or grid)
            if self.with_concepts and self.config.capture:
                self.concept_acc = self._accumulator(self.grid or grid)
            if self.config.refines:
                self.refined_acc = self._accumulator(self.grid or grid)
        return CallState(run=self, active=active, step=self.step, grid=grid, capture=not self.guidance)

    def _accumulator(self, grid: tuple[int, int]) -> MapAccumulator:
        cfg = self.config
        return MapAccumulator(grid, keep_steps=cfg.keep_steps, keep_blocks=cfg.keep_blocks,
                              budget_bytes=cfg.budget_bytes)

    def note_areas(self, conds: list, x_in: torch.Tensor) -> None:
        """Where the area conditionings of this batch of model calls sit (ComfyUI resolved them for it)."""
        if x_in.ndim not in (4, 5):
            return
        hw = (int(x_in.shape[-2]), int(x_in.shape[-1]))
        grid = self.grid or self.geometry.grid(tuple(x_in.shape))
        for group in conds or []:
            for c in group or []:
                if not isinstance(c, dict) or "uuid" not in c or c["uuid"] in self.areas:
                    continue
                place = None
                if "area" in c:
                    dims = x_in.ndim - 2
                    area = comfy_samplers.add_area_dims(list(c["area"]), dims)
                    area = area[dims - 2 : dims] + area[2 * dims - 2 : 2 * dims]  # (h, w, y, x): the last two dims
                    route = self.routes.get(c["uuid"])
                    name = route.name if route is not None else "conditioning"
                    place = area_for(area, hw, self.geometry.patch[1], grid, name, self.log)
                self.areas[c["uuid"]] = place

    # -- per attention call --------------------------------------------------------------------
    def plan(self, site: Site, uuids: list, state: CallState, q: torch.Tensor, q_len: int, k_len: int,
             batch: int) -> Plan | None:
        """The captures and weights of an attention call, built once per call shape."""
        key = (tuple(uuids), site.txt_len, site.seq_len, q_len, k_len, batch, state.grid, q.device, site.query_start)
        if key not in self.plans:
            self.plans[key] = build_plan(site, uuids, self.routes, self.areas, self.config, state.grid, q_len,
                                         k_len, batch, q.device, self.log, self.placement, self.frames)
        return self.plans[key]

    def region_biases(self, plan: Plan, state: CallState, n_queries: int, device: torch.device) -> list:
        """The region biases of an attention call at this step (`regions.biases`)."""
        if plan.regions is None:
            return []
        return biases(plan.regions, self.region_masks, self.last_sigma, self.region_windows, self.grid or state.grid,
                      state.grid, n_queries, self.frames, device)

    def record(self, plan: Plan, maps: list[torch.Tensor], heads: int, step: int, block: int,
               refined: bool = False) -> None:
        """One attention call's captured maps (summed over ``heads``), or their refined maps, into the running
        sums of the prompts whose rows they are."""
        self.blocks_seen.add(block)
        acc = self.refined_acc if refined else self.acc
        for key, m, reps, area, reduce in zip(plan.keys, maps, plan.copies, plan.areas, plan.reducers, strict=True):
            if reps > 1:
                m = m.view(m.shape[0], m.shape[1], reps, -1).sum(2)
            if reduce is not None:  # an encoder's padding kept as one map, their mean
                m = m @ reduce
            place = None if area is None else (area.y, area.x, area.h, area.w)
            acc.add(key, m, heads, step=step, block=block, region=place)

    def record_concepts(self, scores: torch.Tensor, uuids: list, state: CallState, block: int) -> None:
        """One block call's concept scores ``[B, image tokens, concepts]``, into the maps of the prompts whose
        rows they are (the rows of a batch follow ``uuids``, as the maps' captures do)."""
        if self.concept_acc is None or not uuids or scores.shape[0] % len(uuids):
            return
        rows = scores.shape[0] // len(uuids)
        for i, u in enumerate(uuids):
            route = self.routes.get(u)
            if route is None or not self.config.captures(route.role):
                continue
            if self.areas.get(u) is not None:
                self.log.once(("concept-area", u), "concept maps of the area conditioning %s are not recorded "
                              "(concept maps cover the whole picture)", route.name)
                continue
            self.concept_acc.add((route.role, route.index), scores[i * rows : (i + 1) * rows], 1, step=state.step,
                                 block=block)


def by_key(routes: dict[Any, Route]) -> dict[Hashable, Route]:
    """The routes by (role, index): how a finished run's maps are keyed."""
    return {(r.role, r.index): r for r in routes.values()}
