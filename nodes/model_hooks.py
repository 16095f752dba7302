"""The engine inside a patched MODEL, through ComfyUI's official channels.

- OUTER_SAMPLE wrapper: one sampling run = one record. It maps each conditioning's
  uuid to its role (positive/negative), index and token layout, and frees the
  running sums when the run ends.
- APPLY_MODEL wrapper: once per model call, reads the sigma (step window, step
  count) and the latent grid, and hands them down on a copy of transformer_options.
- PREDICT_NOISE / CALC_COND_BATCH wrappers: only the first batch of model calls of
  each noise prediction is captured; the extra passes guidance patches run for the
  same prediction (SAG, PAG, skip-layer guidance: perturbed copies of the model)
  still get the prompt's weights but do not blur its maps.
- Block replaces (``dit`` double/single blocks, UNet ``attn2``): tell the
  attention override which block it is in and how long the text is. Families
  without block replaces (NextDiT: Lumina 2, Z-Image) are read from the
  ``block_index`` ComfyUI writes into transformer_options. What differs between
  families (which blocks, where the text sits) is in `families`.
- ``optimized_attention_override``: calls `attention.engine.attend` where a
  block asked for it, and calls through (to an earlier override or the stock
  backend) everywhere else.

Every hook object returns itself on deepcopy: ModelPatcher.clone() deep-copies
model_options, and all clones must report to the same probe.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension as patcher_extension
import comfy.samplers as comfy_samplers
import torch

from ..attention.aggregate import BudgetExceeded, MapAccumulator
from ..attention.concepts import concept_attention, concept_scores
from ..attention.engine import attend, from_bhnd, to_bhnd
from ..attention.sdpa import reset_fallback_log
from . import families
from .comfy_sdpa import fused_route, one_sdpa_call
from .concepts import ConceptCall, Concepts, ConceptStream
from .families import unet_attn2_sites
from .probe_call import read_call
from .probe_checks import check_budget, check_capture_words, check_weights
from .probe_plan import Plan, build_plan, region_for
from .probe_routes import build_routes
from .probe_run import RunLog, RunRecord
from .probe_store import MAX_RESULTS, ProbeResult, ResultStore
from .probe_types import CallState, ProbeConfig, Region, Route, Shared, Site

__all__ = ["MAX_RESULTS", "SUPPORTED", "CallState", "ModelProbe", "Plan", "ProbeConfig", "ProbeResult", "Region",
           "Route", "RunRecord", "Shared", "Site", "block_count", "install", "model_family", "unet_attn2_sites"]

log = logging.getLogger(__name__)

SUPPORTED = families.supported()
_ids = itertools.count()


class ModelProbe(Shared):
    """ENFOQUE_MODEL_PROBE from Enfoque Patch Model: its config, the current run and the finished ones.

    The pieces live in their own modules: checks before a run (`probe_checks`), which
    conditioning is which (`probe_routes`), the plan of an attention call (`probe_plan`),
    the run record and its log (`probe_run`), the finished runs (`probe_store`), the reading
    of ComfyUI's attention call (`probe_call`). This class ties them to one run's lifecycle.
    """

    kind = "model"

    def __init__(self, family: str, n_blocks: int, patch_size: int | tuple[int, int, int], config: ProbeConfig,
                 pad_multiple: int | None = None, concepts: Concepts | None = None,
                 stream: ConceptStream | None = None) -> None:
        self.family = family
        self.spec = families.FAMILIES[family]
        self.n_blocks = n_blocks
        self.patch = (1, patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        self.patch_size = self.patch[-1]
        self.pad_multiple = pad_multiple  # NextDiT pads text and image tokens to a multiple of this
        self.downscale = 8  # image pixels per latent cell (the model's latent format says)
        self.config = config
        self.key = f"enfoque_call_{next(_ids)}"
        self.site_key = self.key + "_site"
        self.run: RunRecord | None = None
        self.store = ResultStore()
        self.runs = 0
        self.outside_run = RunLog()  # for calls no run owns (reported once per probe)
        self.concepts = concepts  # EnfoqueConcepts: an extra stream through the joint blocks (`concepts`)
        self.stream = stream
        self.concept_key = self.key + "_concepts"

    @property
    def result(self) -> ProbeResult | None:
        """The last run, if it finished."""
        return self.store.last

    @property
    def results(self) -> list[ProbeResult]:
        """Finished runs, newest last, one per (batch, grid)."""
        return self.store.results

    @property
    def log(self) -> RunLog:
        return self.run.log if self.run is not None else self.outside_run

    # -- run lifecycle -------------------------------------------------------
    def grid_for(self, h: int, w: int) -> tuple[int, int]:
        """The common map grid for a latent of h x w: the latent itself (UNet) or its patches (DiT)."""
        return (math.ceil(h / self.patch[1]), math.ceil(w / self.patch[2]))

    def frames_of(self, shape: tuple[int, ...]) -> int:
        """Latent frames of a video latent ``[B, C, T, H, W]`` as the model patches them; 1 for an image."""
        return math.ceil(int(shape[-3]) / self.patch[0]) if len(shape) == 5 else 1

    def grid_of(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The map grid of a latent: its patches, a video's frames stacked on the rows (the model's token
        order is frame, row, column, so ``[frames * H, W]`` holds one ``H x W`` map per frame)."""
        h, w = self.grid_for(int(shape[-2]), int(shape[-1]))
        return (self.frames_of(shape) * h, w)

    def _shape(self, latent_shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
        return int(latent_shape[0]), self.grid_of(latent_shape)

    def begin_run(self, conds: dict[str, list[dict]], model_sampling: Any, latent_shape: tuple[int, ...] = (),
                  steps: int = 0) -> None:
        reset_fallback_log()  # the engine's fallback notes: once per sampling run
        run_log = RunLog()
        routes = build_routes(conds, self.config, run_log)
        check_weights(self.config, routes.values())
        check_capture_words(self.config, routes.values())
        grid = self.grid_of(latent_shape) if latent_shape else None
        if latent_shape:
            check_budget(self.config, routes.values(), int(latent_shape[0]), grid, steps, self.selected_blocks(),
                         len(self.concepts) if self.concepts is not None else 0)
        cfg = self.config
        hi = model_sampling.percent_to_sigma(cfg.start_percent)
        lo = model_sampling.percent_to_sigma(cfg.end_percent)
        self.run = RunRecord(routes=routes, sigma_hi=hi, sigma_lo=lo, grid=grid, log=run_log,
                             batch=int(latent_shape[0]) if latent_shape else 0,
                             frames=self.frames_of(latent_shape) if latent_shape else 1)
        self.store.forget(self._shape(latent_shape) if latent_shape else None)

    def end_run(self, ok: bool) -> None:
        run, self.run = self.run, None
        if not ok or run is None:
            return
        wanted = self.config.capture and any(self.config.captures(r.role) for r in run.routes.values())
        if wanted and (run.acc is None or not run.acc.records):
            # a known family whose run recorded nothing: never silent (the maps node reports it too)
            run.log.once(("nothing",), "%s: the %s model ran with capture on but no attention call of a prompt "
                         "was captured%s", families.NODE, self.spec.label,
                         "" if run.active_steps else " (no step fell inside start_percent..end_percent)")
        if run.acc is None:
            return
        self.runs += 1
        by_key = {(r.role, r.index): r for r in run.routes.values()}
        maps = {k: run.acc.mean(k) for k in run.acc.records}
        step_maps = {k: run.acc.step_means(k) for k in run.acc.records} if self.config.keep_steps else {}
        block_maps = {k: run.acc.block_means(k) for k in run.acc.records} if self.config.keep_blocks else {}
        cacc = run.concept_acc
        concept_maps = {k: cacc.mean(k) for k in cacc.records} if cacc is not None else {}
        concept_steps = {k: cacc.step_means(k) for k in concept_maps} if self.config.keep_steps else {}
        concept_blocks = {k: cacc.block_means(k) for k in concept_maps} if self.config.keep_blocks else {}
        self.store.add(ProbeResult(
            maps=maps,
            step_maps=step_maps,
            block_maps=block_maps,
            routes={k: by_key[k] for k in maps},
            grid=run.acc.grid,
            active_steps=sorted(run.active_steps),
            blocks=sorted(run.blocks_seen),
            run=self.runs,
            batch=run.batch,
            step_sigmas={k: run.step_sigmas[k] for k in sorted(run.active_steps) if k in run.step_sigmas},
            frames=run.frames,
            notes=tuple(run.log.messages),
            concepts=self.concepts.names if self.concepts is not None else (),
            concept_maps=concept_maps,
            concept_step_maps=concept_steps,
            concept_block_maps=concept_blocks,
        ))

    def result_for(self, latent_shape: tuple[int, ...] | None) -> ProbeResult | None:
        """The newest finished run whose latent had this shape (batch, grid); the newest run without a shape."""
        return self.store.find(self._shape(latent_shape) if latent_shape else None)

    def note_areas(self, conds: list, x_in: torch.Tensor) -> None:
        """Where the area conditionings of this batch of model calls sit (ComfyUI resolved them for it)."""
        run = self.run
        if run is None or x_in.ndim not in (4, 5):
            return
        hw = (int(x_in.shape[-2]), int(x_in.shape[-1]))
        grid = run.grid or self.grid_of(tuple(x_in.shape))
        for group in conds or []:
            for c in group or []:
                if not isinstance(c, dict) or "uuid" not in c or c["uuid"] in run.regions:
                    continue
                region = None
                if "area" in c:
                    dims = x_in.ndim - 2
                    area = comfy_samplers.add_area_dims(list(c["area"]), dims)
                    area = area[dims - 2 : dims] + area[2 * dims - 2 : 2 * dims]  # (h, w, y, x): the last two dims
                    route = run.routes.get(c["uuid"])
                    name = route.name if route is not None else "conditioning"
                    region = region_for(area, hw, self.patch[1], grid, name, run.log)
                run.regions[c["uuid"]] = region

    # -- per model call --------------------------------------------------------
    def call_state(self, x: torch.Tensor, sigma: torch.Tensor) -> CallState | None:
        run = self.run
        if run is None:
            return None
        s = float(sigma.max())  # one host read per model call, as ComfyUI's own step windows do
        if s != run.last_sigma:
            run.step += 1
            run.last_sigma = s
            run.step_sigmas[run.step] = s
        active = run.sigma_lo <= s <= run.sigma_hi
        if active:
            run.active_steps.add(run.step)
        grid = self.grid_of(tuple(x.shape))
        if run.acc is None:
            cfg = self.config
            run.acc = MapAccumulator(run.grid or grid, keep_steps=cfg.keep_steps, keep_blocks=cfg.keep_blocks,
                                     budget_bytes=int(cfg.budget_mb * 2**20))
            if self.concepts is not None and cfg.capture:
                run.concept_acc = MapAccumulator(run.grid or grid, keep_steps=cfg.keep_steps,
                                                 keep_blocks=cfg.keep_blocks, budget_bytes=int(cfg.budget_mb * 2**20))
        return CallState(active=active, step=run.step, grid=grid, capture=not run.guidance)

    def selected_blocks(self) -> int:
        blocks = self.config.blocks
        return self.n_blocks if blocks is None else len(blocks)

    def wants_block(self, index: int) -> bool:
        blocks = self.config.blocks
        return blocks is None or index in blocks

    # -- per attention call --------------------------------------------------
    def plan(self, site: Site, uuids: list, state: CallState, q: torch.Tensor, q_len: int, k_len: int,
             batch: int) -> Plan | None:
        run = self.run
        key = (tuple(uuids), site.txt_len, site.seq_len, q_len, k_len, batch, state.grid, q.device)
        key = (*key, site.txt_start, site.query_start)
        if key not in run.plans:
            run.plans[key] = build_plan(site, uuids, run.routes, run.regions, self.config, state.grid, q_len, k_len,
                                        batch, q.device, run.log, self.placement, run.frames)
        return run.plans[key]

    def placement(self, length: int) -> tuple[int, int]:
        return families.placement(self.spec, length)

    def record_concepts(self, scores: torch.Tensor, uuids: list, state: CallState, block: int) -> None:
        """One block call's concept scores ``[B, image tokens, concepts]``, into the maps of the prompts whose
        rows they are (the rows of a batch follow ``uuids``, as the maps' captures do)."""
        run = self.run
        if run is None or run.concept_acc is None or not uuids or scores.shape[0] % len(uuids):
            return
        rows = scores.shape[0] // len(uuids)
        for i, u in enumerate(uuids):
            route = run.routes.get(u)
            if route is None or not self.config.captures(route.role):
                continue
            if run.regions.get(u) is not None:
                run.log.once(("concept-area", u), "concept maps of the area conditioning %s are not recorded "
                             "(concept maps cover the whole picture)", route.name)
                continue
            run.concept_acc.add((route.role, route.index), scores[i * rows : (i + 1) * rows], 1, step=state.step,
                                block=block)

    def record(self, plan: Plan, maps: list[torch.Tensor], heads: int, step: int, block: int) -> None:
        run = self.run
        run.blocks_seen.add(block)
        for key, m, reps, region in zip(plan.keys, maps, plan.copies, plan.regions, strict=True):
            if reps > 1:
                m = m.view(m.shape[0], m.shape[1], reps, -1).sum(2)
            place = None if region is None else (region.y, region.x, region.h, region.w)
            run.acc.add(key, m, heads, step=step, block=block, region=place)


class OuterSampleWrapper(Shared):
    """Resets the probe at each sampling run and frees its running sums at the end."""

    def __init__(self, probe: ModelProbe) -> None:
        self.probe = probe

    def __call__(self, executor, *args, **kwargs):
        guider = executor.class_obj
        sampling = guider.model_patcher.get_model_object("model_sampling")
        noise = args[0] if args else kwargs["noise"]
        sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
        steps = max(int(sigmas.shape[-1]) - 1, 0) if sigmas is not None else 0
        self.probe.begin_run(guider.conds, sampling, tuple(noise.shape), steps)
        ok = False
        try:
            out = executor(*args, **kwargs)
            ok = True
            return out
        except BudgetExceeded as exc:  # more maps than estimated before the run (e.g. several sigmas per step)
            raise ValueError(f"{families.NODE}: while sampling, {exc}. Raise budget_mb, turn off keep_steps / "
                             "keep_blocks, or capture fewer words (capture_words).") from exc
        finally:
            self.probe.end_run(ok)


class PredictNoiseWrapper(Shared):
    """One noise prediction of the sampler: its first batch of model calls is the one captured."""

    def __init__(self, probe: ModelProbe) -> None:
        self.probe = probe

    def __call__(self, executor, *args, **kwargs):
        run = self.probe.run
        if run is not None:
            run.batch_calls = 0
        try:
            return executor(*args, **kwargs)
        finally:
            if run is not None:
                run.batch_calls = None


class CalcCondBatchWrapper(Shared):
    """Marks the model passes guidance patches (SAG, PAG, skip-layer guidance) add to a prediction."""

    def __init__(self, probe: ModelProbe) -> None:
        self.probe = probe

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        self.probe.note_areas(conds, x_in)
        run = self.probe.run
        # context windows split one pass into several calls: every one of them counts as the pass itself
        if run is None or run.batch_calls is None or (model_options or {}).get("context_handler") is not None:
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
        run.batch_calls += 1
        before, run.guidance = run.guidance, run.batch_calls > 1
        try:
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
        finally:
            run.guidance = before


class ApplyModelWrapper(Shared):
    """Once per model call: the step window and the latent grid, on a copy of transformer_options."""

    def __init__(self, probe: ModelProbe) -> None:
        self.probe = probe

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kw):
        state = self.probe.call_state(x, t)
        if state is not None and state.active:
            if isinstance(c_crossattn, torch.Tensor) and c_crossattn.ndim == 3:
                state.context_len = int(c_crossattn.shape[1])
            transformer_options = dict(transformer_options or {})
            transformer_options[self.probe.key] = state
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)


class DitBlockReplace(Shared):
    """``dit`` double/single block replace: marks the block for the override, then runs it. Where the text
    sits in the block's attention is the family's (`families.dit_site`)."""

    def __init__(self, probe: ModelProbe, index: int, single: bool, previous: Callable | None) -> None:
        self.probe, self.index, self.single, self.previous = probe, index, single, previous

    def __call__(self, args: dict, extra: dict) -> dict:
        to = args.get("transformer_options") or {}
        state: CallState | None = to.get(self.probe.key)
        if state is not None:
            site = families.dit_site(self.probe.spec, self.index, self.single, args, state)
            if site is not None and self.probe.wants_block(self.index):
                to = dict(to)
                to[self.probe.site_key] = site
                args = dict(args)
                args["transformer_options"] = to
        concept = self._concept_call(args, state)
        if concept is not None:
            call, ctx = concept
            args = dict(args)
            args["transformer_options"] = {**args["transformer_options"], self.probe.concept_key: call}
        out = self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        if concept is not None:
            self._concept_after(state, *concept)
        return out

    def _concept_call(self, args: dict, state: CallState | None) -> tuple[ConceptCall, tuple] | None:
        """The concepts' q, k, v at this double block, from the stream (started at block 0)."""
        probe = self.probe
        stream = probe.stream
        if stream is None or state is None or self.single or not state.capture or state.concept_stopped:
            return None
        blocks = probe.config.blocks
        if blocks is not None and self.index > max(blocks):
            return None  # no chosen block is left: the stream has nothing more to give
        txt, img = args.get("txt"), args.get("img")
        if not isinstance(txt, torch.Tensor) or not isinstance(img, torch.Tensor):
            return None
        if state.concept_x is None:
            if self.index != 0:
                return None
            state.concept_x = stream.start(probe.concepts.embeddings, int(img.shape[0]), txt)
        qkv, ctx = stream.pre(self.index, state.concept_x, args["vec"])
        call = ConceptCall(*qkv, block=self.index, record=probe.wants_block(self.index),
                           txt_len=int(txt.shape[1]), seq_len=int(txt.shape[1]) + int(img.shape[1]))
        return call, ctx

    def _concept_after(self, state: CallState, call: ConceptCall, ctx: tuple) -> None:
        if call.out is None:
            state.concept_stopped = True
            self.probe.log.once(("concept-stopped", self.index), "block %d: the concept stream saw no joint "
                                "attention call of the block (another pack replaced it?); concept maps stop at "
                                "this block", self.index)
            return
        state.concept_x = self.probe.stream.post(state.concept_x, call.out, ctx)


class UnetAttn2Replace(Shared):
    """UNet ``attn2`` replace: cross-attention runs through the stock attention with a site mark,
    or through the replace that was there before (another EnfoquePatchModel, another pack)."""

    def __init__(self, probe: ModelProbe, index: int, previous: Callable | None = None) -> None:
        self.probe, self.index, self.previous = probe, index, previous

    def __call__(self, q, k, v, extra_options: dict):
        to = extra_options
        state: CallState | None = extra_options.get(self.probe.key)
        if state is not None and self.probe.wants_block(self.index):
            to = dict(extra_options)
            to[self.probe.site_key] = Site(self.index, k.shape[1], None)
        if self.previous is not None:
            return self.previous(q, k, v, to)
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
            transformer_options=to,
        )


_REWEIGHTED = "enfoque_reweighted"  # set on the transformer_options an override passes on once it reweighted

# ComfyUI's SDPA backend (the default on GPUs), for a batch it runs in one SDPA call: the engine calls
# the kernel SDPA picks itself, in ComfyUI's sdpa_kernel context (`comfy_sdpa`), and gets the identical
# output plus the log-sum-exp in one pass. Any other backend, an override in front, or a larger batch
# gives the output as it is; the capture then gets its normaliser from one fused kernel call over the
# captured rows (`engine.row_normaliser`), or the exact chunked route where no kernel gives one.
_STOCK_PYTORCH = getattr(comfy_attention.attention_pytorch, "__wrapped__", comfy_attention.attention_pytorch)


class AttentionOverride(Shared):
    """``optimized_attention_override``: the engine where a block asked for it, else a call-through.

    The call is read by parameter name (`probe_call.read_call`); one it cannot read, or q/k/v
    that are not plain tensors (a tensor subclass or container of a newer ComfyUI or another
    pack), is passed on unchanged and logged once per run with the reason.
    """

    def __init__(self, probe: ModelProbe, previous: Callable | None) -> None:
        self.probe, self.previous = probe, previous

    def _next(self, func, args: tuple, kwargs: dict):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        out = self._attention(func, args, kwargs)
        concept: ConceptCall | None = (kwargs.get("transformer_options") or {}).get(self.probe.concept_key)
        if concept is not None and concept.out is None:
            self._concepts(concept, args, kwargs, out)
        return out

    def _concepts(self, concept: ConceptCall, args: tuple, kwargs: dict, out) -> None:
        """The concepts' attention over ``[concepts; image]`` at this block's joint attention, and their
        scores against the image tokens' attention output."""
        call = read_call(args, kwargs)
        if isinstance(call, str) or not all(type(t) is torch.Tensor for t in (call.q, call.k, call.v)):
            return
        skip = call.skip_reshape
        if call.k.shape[2 if skip else 1] != concept.seq_len:
            return  # another attention of the block (SD3.5's image-only one)
        if call.mask is not None:
            self.probe.log.once(("concept-mask",), "block %d: the joint attention carries a mask; concept maps "
                                "are not computed under a mask", concept.block)
            return
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            return
        heads, n_txt = call.heads, concept.txt_len
        k, v = to_bhnd(call.k, heads, skip), to_bhnd(call.v, heads, skip)
        o_c = concept_attention(concept.q, concept.k, concept.v, k[:, :, n_txt:], v[:, :, n_txt:])
        concept.out = from_bhnd(o_c, False)
        to = kwargs.get("transformer_options") or {}
        state: CallState | None = to.get(self.probe.key)
        if concept.record and state is not None and state.capture and self.probe.run is not None:
            scores = concept_scores(out[:, n_txt:], concept.out)
            self.probe.record_concepts(scores, to.get("uuids") or [], state, concept.block)

    def _attention(self, func, args: tuple, kwargs: dict):
        to = kwargs.get("transformer_options") or {}
        site: Site | None = to.get(self.probe.site_key)
        state: CallState | None = to.get(self.probe.key)
        # a family without block replaces (NextDiT): the site comes from the call itself, once it is read
        by_call = site is None and state is not None and self.probe.spec.hook == "block_index"
        if (site is None and not by_call) or state is None or self.probe.run is None:
            return self._next(func, args, kwargs)
        where = f"block {site.block}" if site is not None else "an attention call"
        run_log = self.probe.log
        call = read_call(args, kwargs)
        if isinstance(call, str):
            run_log.once(("call", call), "%s: cannot read the attention call (%s); it runs as it is, neither "
                         "captured nor reweighted", where, call)
            return self._next(func, args, kwargs)
        q, k, v = call.q, call.k, call.v
        if not all(type(t) is torch.Tensor for t in (q, k, v)):
            kinds = ", ".join(sorted({type(t).__name__ for t in (q, k, v)}))
            run_log.once(("container", kinds), "%s: q/k/v come as %s, not plain tensors; those attention "
                         "calls run as they are, neither captured nor reweighted", where, kinds)
            return self._next(func, args, kwargs)
        heads, mask, skip = call.heads, call.mask, call.skip_reshape
        seq_dim = 2 if skip else 1
        q_len, k_len = q.shape[seq_dim], k.shape[seq_dim]
        if by_call:
            site = families.option_site(self.probe.spec, to, state, self.probe.pad_multiple, k_len, run_log)
            if site is None or not self.probe.wants_block(site.block):
                return self._next(func, args, kwargs)
        site.calls += 1
        if site.seq_len is not None and k_len != site.seq_len:
            return self._next(func, args, kwargs)  # e.g. SD3.5's image-only attention: not a text attention
        if site.cross_in_block and (site.calls == 1 or k_len != site.txt_len):
            # Wan: the block's self-attention comes first (WanAttentionBlock.forward); an image-to-video
            # block's cross-attention to the CLIP-vision tokens has their length, not the text's
            return self._next(func, args, kwargs)
        plan = self.probe.plan(site, to.get("uuids") or [], state, q, q_len, k_len, q.shape[0])
        if plan is None:
            return self._next(func, args, kwargs)
        captures = plan.captures if state.capture else []
        # an outer EnfoquePatchModel already applied the prompt's weights (they are on mask/v): not twice
        reweight = None if to.get(_REWEIGHTED) else plan.reweight
        if not captures and reweight is None:
            return self._next(func, args, kwargs)
        marked = {**to, _REWEIGHTED: True} if reweight is not None and "transformer_options" in kwargs else None

        def compute_out(q_, k_, v_, mask_):
            a, kw = call.rebuilt(q_, k_, v_, mask_, marked)
            return self._next(func, a, kw)

        # the stock SDPA backend ignores every argument but q, k, v, heads, mask and the reshapes: the fused
        # kernel gives its output (and the LSE) whatever else the call carries
        fused = self.previous is None and func is _STOCK_PYTORCH and bool(captures) and one_sdpa_call(q.shape[0])
        with fused_route(fused):
            out, maps = attend(
                q, k, v, heads, mask=mask, skip_reshape=skip,
                skip_output_reshape=call.skip_output_reshape,
                reweight=reweight, captures=captures, query_range=plan.query_range,
                compute_out=None if fused else compute_out,
            )
        if maps:
            self.probe.record(plan, maps, heads, state.step, site.block)
        return out


# -- installing on a clone -------------------------------------------------------

def model_family(model) -> tuple[str, Any]:
    """The family key of a MODEL and its diffusion network (`families.detect`: a ValueError for others)."""
    family, dm = families.detect(model)
    return family.key, dm


def block_count(family: str, dm) -> int:
    return families.block_count(families.FAMILIES[family], dm)


def concept_stream(spec, dm, concepts: Concepts) -> ConceptStream:
    """The concept stream for this model, or a ValueError a user can act on."""
    if spec.key not in ConceptStream.families:
        raise ValueError(
            f"{families.NODE}: concepts work on the joint blocks of SD3 / SD3.5 and Flux.1; this model is "
            f"{spec.label}. Disconnect concepts, or use one of those models."
        )
    stream = ConceptStream(spec.key, dm)
    dim = int(concepts.embeddings.shape[-1])
    if dim != stream.context_dim():
        raise ValueError(
            f"{families.NODE}: the concepts ({', '.join(concepts.names)}) were encoded into {dim} channels, this "
            f"{spec.label} model reads text of {stream.context_dim()}; encode them with the text encoder this "
            "model uses (the CLIP that encodes its prompt) in Enfoque Concepts."
        )
    return stream


def install(model, config: ProbeConfig, concepts: Concepts | None = None):
    """A clone of ``model`` with the probe's hooks, and the probe. The original is untouched."""
    spec, dm = families.detect(model)
    stream = concept_stream(spec, dm, concepts) if concepts is not None else None
    probe = ModelProbe(spec.key, families.block_count(spec, dm), families.patch_size(spec, dm), config,
                       pad_multiple=getattr(dm, "pad_tokens_multiple", None), concepts=concepts, stream=stream)
    latent_format = getattr(getattr(model, "model", None), "latent_format", None)
    probe.downscale = int(getattr(latent_format, "spacial_downscale_ratio", 8) or 8)
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    previous = to.get("optimized_attention_override")
    to["optimized_attention_override"] = AttentionOverride(probe, previous)
    m.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, probe.key, OuterSampleWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.APPLY_MODEL, probe.key, ApplyModelWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.PREDICT_NOISE, probe.key, PredictNoiseWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.CALC_COND_BATCH, probe.key, CalcCondBatchWrapper(probe))
    if spec.hook == "dit":
        families.install_blocks(spec, m, dm, lambda i, single, prev: DitBlockReplace(probe, i, single, prev))
    elif spec.hook == "attn2":
        attn2 = to.get("patches_replace", {}).get("attn2", {})
        for i, (name, number, t) in enumerate(unet_attn2_sites(dm)):
            # ComfyUI prefers the (block, number, index) key over (block, number): chain to either
            prev = attn2.get((name, number, t)) or attn2.get((name, number))
            if prev is not None and not isinstance(prev, UnetAttn2Replace):
                log.info("Enfoque: %s attn2 %s already has a replace patch; running it inside ours "
                         "(its maps are captured only if it calls ComfyUI's attention)", name, number)
            m.set_model_attn2_replace(UnetAttn2Replace(probe, i, prev), name, number, t)
    return m, probe
