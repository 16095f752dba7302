"""ENFOQUE_MODEL_PROBE: what Enfoque Patch Model hands the graph. It holds the patch's settings, the
sampling run under way (`record.RunRecord`) and the finished ones (`store`), and ties a run's start
and end to them. The hooks reach the run through the `CallState` each model call carries, not
through the probe."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from ...attention.sdpa import FALLBACKS, reset_fallback_log
from ..names import PATCH_MODEL as NODE
from . import families
from .checks import check_budget, check_capture_words, check_weights
from .concepts import Concepts, ConceptStream
from .conditionings import build_routes
from .record import RunRecord, by_key, run_log
from .regions import check_regions, latent_pixels, region_sigmas
from .state import Geometry, HookKeys, Patch, ProbeConfig
from .store import ProbeResult, ResultStore, as_kept

_ids = itertools.count()


class ModelProbe:
    """ENFOQUE_MODEL_PROBE from Enfoque Patch Model: its settings, the current run and the finished ones."""

    kind = "model"

    def __init__(self, family: str, n_blocks: int, geometry: Geometry, config: ProbeConfig,
                 pad_multiple: int | None = None, concepts: Concepts | None = None,
                 stream: ConceptStream | None = None) -> None:
        self.family = family
        self.spec = families.FAMILIES[family]
        self.n_blocks = n_blocks
        self.geometry = geometry
        self.pad_multiple = pad_multiple  # NextDiT pads text and image tokens to a multiple of this
        self.config = config
        key = f"enfoque_call_{next(_ids)}"
        self.keys = HookKeys(key, key + "_site", key + "_concepts")
        self.run: RunRecord | None = None
        self.store = ResultStore()
        self.runs = 0
        self.concepts = concepts  # EnfoqueConcepts: an extra stream through the joint blocks
        self.stream = stream

    def __deepcopy__(self, memo: dict) -> ModelProbe:
        return self  # every clone of the patched model reports here

    @property
    def patch(self) -> Patch:
        """What the hooks know of this patch."""
        return Patch(self.keys, self.spec, self.config, self.pad_multiple, self.concepts, self.stream)

    @property
    def downscale(self) -> int:
        return self.geometry.downscale

    @property
    def result(self) -> ProbeResult | None:
        """The last run, if it finished."""
        return self.store.last

    @property
    def results(self) -> list[ProbeResult]:
        """Finished runs, newest last (`store.ResultStore`)."""
        return self.store.results

    def selected_blocks(self) -> int:
        blocks = self.config.blocks
        return self.n_blocks if blocks is None else len(blocks)

    def _shape(self, latent_shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
        return int(latent_shape[0]), self.geometry.grid(latent_shape)

    def begin_run(self, conds: dict[str, list[dict]], model_sampling: Any, latent_shape: tuple[int, ...] = (),
                  steps: int = 0) -> None:
        """A sampling run starts: its conditionings are routed and checked, and its record opened."""
        reset_fallback_log()  # the engine's fallback notes: once per sampling run
        log = run_log()
        cfg = self.config
        routes = build_routes(conds, cfg, log)
        check_weights(cfg, routes.values())
        check_capture_words(cfg, routes.values())
        grid = self.geometry.grid(latent_shape) if latent_shape else None
        if latent_shape:
            check_budget(cfg, routes.values(), int(latent_shape[0]), grid, steps, self.selected_blocks(),
                         len(self.concepts) if self.concepts is not None else 0)
        specs = [s for r in routes.values() for s in r.regions]
        if specs and latent_shape:
            check_regions(specs, self.geometry.frames(latent_shape),
                          latent_pixels(latent_shape, self.geometry.downscale), log)
        self.run = RunRecord(
            config=cfg, geometry=self.geometry, routes=routes,
            sigma_hi=model_sampling.percent_to_sigma(cfg.start_percent),
            sigma_lo=model_sampling.percent_to_sigma(cfg.end_percent),
            placement=lambda length: families.placement(self.spec, length),
            grid=grid, batch=int(latent_shape[0]) if latent_shape else 0,
            frames=self.geometry.frames(latent_shape) if latent_shape else 1,
            with_concepts=self.concepts is not None, log=log,
            region_windows=region_sigmas(specs, model_sampling),
        )
        self.store.forget()

    def end_run(self, ok: bool, output: Any = None) -> None:
        """The run ended: keep what it captured if it finished, known by the latent it returned (``output``),
        and free the running sums either way."""
        run, self.run = self.run, None
        if not ok or run is None:
            return
        cfg = self.config
        wanted = cfg.capture and any(cfg.captures(r.role) for r in run.routes.values())
        if wanted and (run.acc is None or not run.acc.records):
            # a known family whose run recorded nothing: never silent (the maps node reports it too)
            run.log.once(("nothing",), "%s: the %s model ran with capture on but no attention call of a prompt "
                         "was captured%s", NODE, self.spec.label,
                         "" if run.active_steps else " (no step fell inside start_percent..end_percent)")
        if run.acc is None:
            return
        self.runs += 1
        routes = by_key(run.routes)
        acc, cacc, racc = run.acc, run.concept_acc, run.refined_acc
        maps = {k: acc.mean(k) for k in acc.records}
        concept_maps = {k: cacc.mean(k) for k in cacc.records} if cacc is not None else {}
        refined = {k: racc.mean(k) for k in racc.records} if racc is not None else {}
        self.store.add(ProbeResult(
            maps=maps,
            step_maps={k: acc.step_means(k) for k in maps} if cfg.keep_steps else {},
            block_maps={k: acc.block_means(k) for k in maps} if cfg.keep_blocks else {},
            routes={k: routes[k] for k in maps},
            grid=acc.grid,
            active_steps=sorted(run.active_steps),
            blocks=sorted(run.blocks_seen),
            run=self.runs,
            batch=run.batch,
            step_sigmas={k: run.step_sigmas[k] for k in sorted(run.active_steps) if k in run.step_sigmas},
            frames=run.frames,
            notes=tuple(run.log.messages) + tuple(FALLBACKS.messages),
            concepts=self.concepts.names if self.concepts is not None else (),
            concept_maps=concept_maps,
            concept_step_maps={k: cacc.step_means(k) for k in concept_maps} if cfg.keep_steps else {},
            concept_block_maps={k: cacc.block_means(k) for k in concept_maps} if cfg.keep_blocks else {},
            refined=cfg.refines,
            refined_maps=refined,
            refined_step_maps={k: racc.step_means(k) for k in refined} if cfg.keep_steps else {},
            refined_block_maps={k: racc.block_means(k) for k in refined} if cfg.keep_blocks else {},
            output=as_kept(output) if type(output) is torch.Tensor else None,  # a nested (packed) latent: by shape
        ), budget_bytes=cfg.budget_mb * 2**20)

    def result_for(self, latent_shape: tuple[int, ...] | None, samples: torch.Tensor | None = None) -> ProbeResult | None:
        """The finished run that returned ``samples``, else the newest whose latent had this shape (batch, grid);
        the newest run without a shape."""
        return self.store.find(self._shape(latent_shape) if latent_shape else None, samples)
