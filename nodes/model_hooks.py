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
  attention override which block it is in and how long the text is.
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
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension as patcher_extension
import torch

from ..attention.aggregate import MapAccumulator
from ..attention.engine import Capture, Reweight, attend
from ..attention.tokens import LAYOUT_KEY, TokenLayout, brief, shown_words

log = logging.getLogger(__name__)

SUPPORTED = "SD3/SD3.5 (MMDiT), Flux, SD1.5/SDXL (UNet)"
_ids = itertools.count()


class Shared:
    """Hooks are shared by every clone of the patched model."""

    def __deepcopy__(self, memo: dict) -> Shared:
        return self


@dataclass
class ProbeConfig:
    capture: bool = True
    reweight: str = "bias"
    blocks: frozenset[int] | None = None
    start_percent: float = 0.0
    end_percent: float = 1.0
    capture_negative: bool = False
    capture_words: tuple[str, ...] = ()
    keep_steps: bool = False
    keep_blocks: bool = False
    budget_mb: float = 1024.0


@dataclass
class Route:
    role: str
    index: int
    layout: TokenLayout
    columns: list[int]


@dataclass
class CallState:
    """Per model call: whether the step is in the window, which step, the latent grid."""

    active: bool
    step: int
    grid: tuple[int, int]
    txt_len: int | None = None
    capture: bool = True  # False in a guidance pass (a second model pass for the same prediction)


@dataclass
class Site:
    block: int
    txt_len: int
    seq_len: int | None  # joint key length (DiT); None for UNet cross-attention


@dataclass
class Plan:
    captures: list[Capture]
    keys: list[Hashable]
    copies: list[int]
    reweight: Reweight | None
    query_range: tuple[int, int] | None


@dataclass
class RunRecord:
    routes: dict[Any, Route]
    sigma_hi: float
    sigma_lo: float
    acc: MapAccumulator | None = None
    step: int = -1
    last_sigma: float | None = None
    plans: dict[tuple, Plan | None] = field(default_factory=dict)
    blocks_seen: set[int] = field(default_factory=set)
    active_steps: set[int] = field(default_factory=set)
    step_sigmas: dict[int, float] = field(default_factory=dict)  # the sigma of each step
    batch: int = 0
    batch_calls: int | None = None  # calc_cond_batch calls in the current noise prediction
    guidance: bool = False  # inside a guidance pass


@dataclass
class ProbeResult:
    """What one finished run captured, per (role, index): token maps on the grid."""

    maps: dict[tuple[str, int], torch.Tensor]
    step_maps: dict[tuple[str, int], dict[int, torch.Tensor]]  # per step, with keep_steps
    block_maps: dict[tuple[str, int], dict[int, torch.Tensor]]  # per block, with keep_blocks
    routes: dict[tuple[str, int], Route]
    grid: tuple[int, int]
    active_steps: list[int]
    blocks: list[int]
    run: int
    batch: int = 0  # images in the run (the latent's batch)
    step_sigmas: dict[int, float] = field(default_factory=dict)  # step -> its sigma


MAX_RESULTS = 4  # finished runs kept per probe, one per latent shape (e.g. both passes of a hires fix)


class ModelProbe(Shared):
    """ENFOQUE_PROBE from EnfoquePatchModel: config, the current run and the last result."""

    kind = "model"

    def __init__(self, family: str, n_blocks: int, patch_size: int, config: ProbeConfig) -> None:
        self.family = family
        self.n_blocks = n_blocks
        self.patch_size = patch_size
        self.config = config
        self.key = f"enfoque_call_{next(_ids)}"
        self.site_key = self.key + "_site"
        self.run: RunRecord | None = None
        self.result: ProbeResult | None = None  # the last run, if it finished
        self.results: list[ProbeResult] = []  # finished runs, newest last, one per (batch, grid)
        self.runs = 0

    # -- run lifecycle -------------------------------------------------------
    def grid_for(self, h: int, w: int) -> tuple[int, int]:
        """The common map grid for a latent of h x w: the latent itself (UNet) or its patches (DiT)."""
        if self.family == "unet":
            return (h, w)
        return (math.ceil(h / self.patch_size), math.ceil(w / self.patch_size))

    def check_weights(self, routes: dict[Any, Route]) -> None:
        """Weights attention cannot apply are refused before sampling, naming the word."""
        mode = self.config.reweight
        if mode == "off":
            return
        for r in routes.values():
            for pos, w in r.layout.weights.items():
                if math.isfinite(w) and (w >= 0 or mode != "bias"):
                    continue
                word = next((wd for wd, sp in zip(r.layout.words, r.layout.spans, strict=True) if pos in sp),
                            f"#{pos}")
                if not math.isfinite(w):
                    raise ValueError(
                        f"EnfoquePatchModel: the {r.role} prompt gives {brief(word)!r} the weight {w}; weights must "
                        "be finite numbers >= 0. Change the weight in the prompt or in EnfoqueTokenWeights"
                    )
                raise ValueError(
                    f"EnfoquePatchModel: the {r.role} prompt gives {brief(word)!r} the weight {w:g}; bias mode needs "
                    "weights >= 0 (0 removes a word). Change the weight or use reweight 'scale' or 'off'"
                )

    def check_budget(self, routes: dict[Any, Route], latent_shape: tuple[int, ...], steps: int) -> None:
        """Refuse, before sampling starts, a capture whose running sums would not fit the budget."""
        cfg = self.config
        if not cfg.capture:
            return
        gh, gw = self.grid_for(latent_shape[-2], latent_shape[-1])
        tokens = sum(len(r.columns) for r in routes.values() if r.role == "positive" or cfg.capture_negative)
        copies = 1 + (steps if cfg.keep_steps else 0) + (self.selected_blocks() if cfg.keep_blocks else 0)
        need = latent_shape[0] * tokens * gh * gw * 4 * copies
        budget = cfg.budget_mb * 2**20
        if need > budget:
            raise ValueError(
                f"EnfoquePatchModel: capturing {tokens} tokens for {latent_shape[0]} image(s) on a {gh}x{gw} grid "
                f"needs {need / 2**20:.0f} MB, over the budget of {cfg.budget_mb:.0f} MB; raise budget_mb, "
                "capture fewer words (capture_words) or use a smaller batch"
            )

    def begin_run(self, conds: dict[str, list[dict]], model_sampling: Any, latent_shape: tuple[int, ...] = (),
                  steps: int = 0) -> None:
        routes: dict[Any, Route] = {}
        for role in ("positive", "negative"):
            for i, c in enumerate(conds.get(role) or []):
                cross = c.get("cross_attn")
                if cross is None or "uuid" not in c:
                    continue
                layout = c.get(LAYOUT_KEY) or TokenLayout.positional(int(cross.shape[1]))
                routes[c["uuid"]] = Route(role, i, layout, self._columns(layout))
        self.check_weights(routes)
        self.check_capture_words(routes)
        if latent_shape:
            self.check_budget(routes, latent_shape, steps)
        cfg = self.config
        hi = model_sampling.percent_to_sigma(cfg.start_percent)
        lo = model_sampling.percent_to_sigma(cfg.end_percent)
        self.run = RunRecord(routes=routes, sigma_hi=hi, sigma_lo=lo,
                             batch=int(latent_shape[0]) if latent_shape else 0)
        self.result = None
        if latent_shape:  # a new run of this shape supersedes the kept one, finished or not
            shape = self._shape(latent_shape)
            self.results = [r for r in self.results if (r.batch, r.grid) != shape]

    def end_run(self, ok: bool) -> None:
        run, self.run = self.run, None
        if not ok or run is None or run.acc is None:
            return
        self.runs += 1
        by_key = {(r.role, r.index): r for r in run.routes.values()}
        maps = {k: run.acc.mean(k) for k in run.acc.records}
        step_maps = {k: run.acc.step_means(k) for k in run.acc.records} if self.config.keep_steps else {}
        block_maps = {k: run.acc.block_means(k) for k in run.acc.records} if self.config.keep_blocks else {}
        self.result = ProbeResult(
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
        )
        kept = [r for r in self.results if (r.batch, r.grid) != (self.result.batch, self.result.grid)]
        self.results = [*kept, self.result][-MAX_RESULTS:]

    def _shape(self, latent_shape: tuple[int, ...]) -> tuple[int, tuple[int, int]]:
        return int(latent_shape[0]), self.grid_for(latent_shape[-2], latent_shape[-1])

    def result_for(self, latent_shape: tuple[int, ...] | None) -> ProbeResult | None:
        """The newest finished run whose latent had this shape (batch, grid); the newest run without a shape."""
        if not latent_shape:
            return self.results[-1] if self.results else None
        shape = self._shape(latent_shape)
        for r in reversed(self.results):
            if (r.batch, r.grid) == shape:
                return r
        return None

    def check_capture_words(self, routes: dict[Any, Route]) -> None:
        """Every capture word must be a word of a positive prompt: a typo would otherwise capture everything."""
        cfg = self.config
        positive = [r.layout for r in routes.values() if r.role == "positive"]
        if not cfg.capture or not cfg.capture_words or not positive:
            return
        missing = [w for w in cfg.capture_words if not any(lay.find(w) for lay in positive)]
        if not missing:
            return
        if not all(lay.labelled for lay in positive):
            raise ValueError(
                f"EnfoquePatchModel: capture_words {brief(', '.join(missing))!r}: the prompt was encoded by a stock CLIP, so "
                "it has no words (only positions #0, #1, ...); put EnfoquePatchCLIP before the text encode, or leave "
                "capture_words empty"
            )
        shown = shown_words(dict.fromkeys(w for lay in positive for w in lay.words))
        raise ValueError(
            f"EnfoquePatchModel: capture_words {brief(', '.join(missing))!r} are not words of the positive prompt "
            f"({shown}); fix capture_words or leave it empty to capture every word"
        )

    def _columns(self, layout: TokenLayout) -> list[int]:
        words = self.config.capture_words
        if not words:
            return layout.positions()
        picked: dict[int, None] = {}
        for w in words:
            for i in layout.find(w):
                for p in layout.spans[i]:
                    picked.setdefault(p, None)
        return list(picked) or layout.positions()

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
        grid = self.grid_for(x.shape[-2], x.shape[-1])
        if run.acc is None:
            cfg = self.config
            run.acc = MapAccumulator(grid, keep_steps=cfg.keep_steps, keep_blocks=cfg.keep_blocks,
                                     budget_bytes=int(cfg.budget_mb * 2**20))
        return CallState(active=active, step=run.step, grid=grid, capture=not run.guidance)

    def selected_blocks(self) -> int:
        blocks = self.config.blocks
        return self.n_blocks if blocks is None else len(blocks)

    def wants_block(self, index: int) -> bool:
        blocks = self.config.blocks
        return blocks is None or index in blocks

    # -- per attention call --------------------------------------------------
    def plan(self, site: Site, uuids: list, q: torch.Tensor, q_len: int, k_len: int, batch: int) -> Plan | None:
        run = self.run
        key = (tuple(uuids), site.txt_len, site.seq_len, q_len, k_len, batch, q.device)
        if key in run.plans:
            return run.plans[key]
        plan = self._build_plan(site, uuids, q, q_len, k_len, batch, run)
        run.plans[key] = plan
        return plan

    def _build_plan(self, site: Site, uuids: list, q: torch.Tensor, q_len: int, k_len: int, batch: int,
                    run: RunRecord) -> Plan | None:
        if not uuids or batch % len(uuids):
            return None
        rows = batch // len(uuids)
        cfg = self.config
        captures, keys, copies = [], [], []
        weights = None
        for i, u in enumerate(uuids):
            route = run.routes.get(u)
            if route is None:
                continue
            length = route.layout.context_length
            reps = site.txt_len // length if length and site.txt_len % length == 0 else 0
            if reps == 0:
                continue
            sl = slice(i * rows, (i + 1) * rows)
            if cfg.capture and (route.role == "positive" or cfg.capture_negative) and route.columns:
                cols = torch.tensor(route.columns, dtype=torch.long)
                cols = torch.cat([cols + m * length for m in range(reps)]).to(q.device)
                captures.append(Capture(sl, cols))
                keys.append((route.role, route.index))
                copies.append(reps)
            if cfg.reweight != "off" and route.layout.weights:
                if weights is None:
                    weights = torch.ones(batch, k_len)
                for pos, wt in route.layout.weights.items():
                    for m in range(reps):
                        weights[sl, pos + m * length] = wt
        reweight = Reweight.build(weights.to(q.device), cfg.reweight) if weights is not None else None
        if site.seq_len is None:
            query_range = (0, q_len)
        else:
            gh, gw = run.acc.grid
            n_img = gh * gw
            if q_len < site.txt_len + n_img:
                captures, keys, copies = [], [], []
            query_range = (site.txt_len, site.txt_len + n_img)
        if not captures and reweight is None:
            return None
        return Plan(captures, keys, copies, reweight, query_range)

    def record(self, plan: Plan, maps: list[torch.Tensor], heads: int, step: int, block: int) -> None:
        run = self.run
        run.blocks_seen.add(block)
        for key, m, reps in zip(plan.keys, maps, plan.copies, strict=True):
            if reps > 1:
                m = m.view(m.shape[0], m.shape[1], reps, -1).sum(2)
            run.acc.add(key, m, heads, step=step, block=block)


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
            transformer_options = dict(transformer_options or {})
            transformer_options[self.probe.key] = state
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)


class DitBlockReplace(Shared):
    """``dit`` double/single block replace: marks the block for the override, then runs it."""

    def __init__(self, probe: ModelProbe, index: int, single: bool, previous: Callable | None) -> None:
        self.probe, self.index, self.single, self.previous = probe, index, single, previous

    def __call__(self, args: dict, extra: dict) -> dict:
        to = args.get("transformer_options") or {}
        state: CallState | None = to.get(self.probe.key)
        if state is not None:
            if not self.single:
                txt = args["txt"].shape[1]
                state.txt_len = txt
                seq = txt + args["img"].shape[1]
            else:
                txt = state.txt_len
                seq = args["img"].shape[1]
            if txt is not None and self.probe.wants_block(self.index):
                to = dict(to)
                to[self.probe.site_key] = Site(self.index, txt, seq)
                args = dict(args)
                args["transformer_options"] = to
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


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

# Where ComfyUI's SDPA backend is in use, the fused kernel SDPA dispatches to gives
# the identical output plus the log-sum-exp. Other backends are called as they are
# and the capture takes the exact chunked route.
_STOCK_PYTORCH = getattr(comfy_attention.attention_pytorch, "__wrapped__", comfy_attention.attention_pytorch)


class AttentionOverride(Shared):
    """``optimized_attention_override``: the engine where a block asked for it, else a call-through."""

    def __init__(self, probe: ModelProbe, previous: Callable | None) -> None:
        self.probe, self.previous = probe, previous

    def _next(self, func, args: tuple, kwargs: dict):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        site: Site | None = to.get(self.probe.site_key)
        state: CallState | None = to.get(self.probe.key)
        if site is None or state is None or self.probe.run is None:
            return self._next(func, args, kwargs)
        q, k, v = args[:3]
        if not all(type(t) is torch.Tensor for t in (q, k, v)):
            return self._next(func, args, kwargs)
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        skip = bool(kwargs.get("skip_reshape", False))
        seq_dim = 2 if skip else 1
        q_len, k_len = q.shape[seq_dim], k.shape[seq_dim]
        if site.seq_len is not None and k_len != site.seq_len:
            return self._next(func, args, kwargs)  # e.g. SD3.5's image-only attention
        plan = self.probe.plan(site, to.get("uuids") or [], q, q_len, k_len, q.shape[0])
        if plan is None:
            return self._next(func, args, kwargs)
        captures = plan.captures if state.capture else []
        # an outer EnfoquePatchModel already applied the prompt's weights (they are on mask/v): not twice
        reweight = None if to.get(_REWEIGHTED) else plan.reweight
        if not captures and reweight is None:
            return self._next(func, args, kwargs)

        rest = {n: kwargs[n] for n in kwargs if n not in ("mask", "heads")}
        if reweight is not None and "transformer_options" in rest:
            rest["transformer_options"] = {**to, _REWEIGHTED: True}
        tail = args[5:]

        def compute_out(q_, k_, v_, mask_):
            return self._next(func, (q_, k_, v_, heads, mask_, *tail), rest)

        fused = self.previous is None and func is _STOCK_PYTORCH and not tail
        out, maps = attend(
            q, k, v, heads, mask=mask, skip_reshape=skip,
            skip_output_reshape=bool(kwargs.get("skip_output_reshape", False)),
            reweight=reweight, captures=captures, query_range=plan.query_range,
            compute_out=None if (fused and captures) else compute_out,
        )
        if maps:
            self.probe.record(plan, maps, heads, state.step, site.block)
        return out


# -- installing on a clone -------------------------------------------------------

def model_family(model) -> tuple[str, Any]:
    dm = model.get_model_object("diffusion_model")
    names = {c.__name__ for c in type(dm).__mro__}
    if "MMDiT" in names:
        return "sd3", dm
    if "Flux" in names and hasattr(dm, "double_blocks"):
        return "flux", dm
    if "UNetModel" in names:
        return "unet", dm
    raise ValueError(
        f"EnfoquePatchModel: the model {type(dm).__name__} is not supported yet; supported families: {SUPPORTED}"
    )


def unet_attn2_sites(dm) -> list[tuple[str, int, int]]:
    """(block_name, number, transformer_index) of every cross-attention, in forward order."""
    sites = []
    for name, blocks in (("input", dm.input_blocks), ("middle", [dm.middle_block]), ("output", dm.output_blocks)):
        for number, block in enumerate(blocks):
            for mod in block:
                tbs = getattr(mod, "transformer_blocks", None)
                if tbs is None:
                    continue
                for t, tb in enumerate(tbs):
                    if getattr(tb, "attn2", None) is not None:
                        sites.append((name, number, t))
    return sites


def block_count(family: str, dm) -> int:
    if family == "sd3":
        return len(dm.joint_blocks)
    if family == "flux":
        return len(dm.double_blocks) + len(dm.single_blocks)
    return len(unet_attn2_sites(dm))


def install(model, config: ProbeConfig):
    """A clone of ``model`` with the probe's hooks, and the probe. The original is untouched."""
    family, dm = model_family(model)
    patch = int(getattr(dm, "patch_size", 2) or 2) if family != "unet" else 1
    probe = ModelProbe(family, block_count(family, dm), patch, config)
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    previous = to.get("optimized_attention_override")
    to["optimized_attention_override"] = AttentionOverride(probe, previous)
    m.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, probe.key, OuterSampleWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.APPLY_MODEL, probe.key, ApplyModelWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.PREDICT_NOISE, probe.key, PredictNoiseWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.CALC_COND_BATCH, probe.key, CalcCondBatchWrapper(probe))
    existing = to.get("patches_replace", {})
    if family in ("sd3", "flux"):
        dit = existing.get("dit", {})
        doubles = len(dm.joint_blocks) if family == "sd3" else len(dm.double_blocks)
        for i in range(doubles):
            prev = dit.get(("double_block", i))
            m.set_model_patch_replace(DitBlockReplace(probe, i, False, prev), "dit", "double_block", i)
        if family == "flux":
            for i in range(len(dm.single_blocks)):
                prev = dit.get(("single_block", i))
                m.set_model_patch_replace(DitBlockReplace(probe, doubles + i, True, prev), "dit", "single_block", i)
    else:
        attn2 = existing.get("attn2", {})
        for i, (name, number, t) in enumerate(unet_attn2_sites(dm)):
            # ComfyUI prefers the (block, number, index) key over (block, number): chain to either
            prev = attn2.get((name, number, t)) or attn2.get((name, number))
            if prev is not None and not isinstance(prev, UnetAttn2Replace):
                log.info("Enfoque: %s attn2 %s already has a replace patch; running it inside ours "
                         "(its maps are captured only if it calls ComfyUI's attention)", name, number)
            m.set_model_attn2_replace(UnetAttn2Replace(probe, i, prev), name, number, t)
    return m, probe
