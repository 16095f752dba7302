"""The patched model's wrappers around a sampling run, through ComfyUI's ``patcher_extension``.

- OUTER_SAMPLE: one sampling run = one record (`probe.ModelProbe.begin_run` / ``end_run``); its running
  sums are freed when the run ends, however it ends. `IgnoredWeightsNotice` says, at each run, when
  ``reweight`` off leaves the prompt's weights unused.
- PREDICT_NOISE / CALC_COND_BATCH: only the first batch of model calls of each noise prediction is
  captured; the extra passes guidance patches run for the same prediction (SAG, PAG, skip-layer
  guidance: perturbed copies of the model) still get the prompt's weights but do not blur its maps.
- APPLY_MODEL: once per model call, reads the sigma (step window, step count) and the latent grid, and
  hands the hooks a `CallState` on a copy of transformer_options.
"""

from __future__ import annotations

import logging

import torch

from ...attention.aggregate import BudgetExceeded
from ...attention.formats import brief, listed
from ...attention.layout import LAYOUT_KEY
from ..common.clones import SharedByClones
from ..common.notify import notify
from ..names import PATCH_MODEL as NODE
from .probe import ModelProbe

log = logging.getLogger(__name__)


class OuterSampleWrapper(SharedByClones):
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
        ok, out = False, None
        try:
            out = executor(*args, **kwargs)
            ok = True
            return out
        except BudgetExceeded as exc:  # more maps than estimated before the run (e.g. several sigmas per step)
            raise ValueError(f"{NODE}: while sampling, {exc}. Raise budget_mb, turn off keep_steps / "
                             "keep_blocks, or capture fewer words (capture_words).") from exc
        finally:
            self.probe.end_run(ok, out)


class PredictNoiseWrapper(SharedByClones):
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


class CalcCondBatchWrapper(SharedByClones):
    """Marks the model passes guidance patches (SAG, PAG, skip-layer guidance) add to a prediction."""

    def __init__(self, probe: ModelProbe) -> None:
        self.probe = probe

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        run = self.probe.run
        if run is not None:
            run.note_areas(conds, x_in)
        # context windows split one pass into several calls: every one of them counts as the pass itself
        if run is None or run.batch_calls is None or (model_options or {}).get("context_handler") is not None:
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
        run.batch_calls += 1
        before, run.guidance = run.guidance, run.batch_calls > 1
        try:
            return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)
        finally:
            run.guidance = before


class ApplyModelWrapper(SharedByClones):
    """Once per model call: the step window and the latent grid, on a copy of transformer_options."""

    def __init__(self, probe: ModelProbe) -> None:
        self.probe = probe

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kw):
        run = self.probe.run
        state = run.call_state(x, t) if run is not None else None
        if state is not None and state.active:
            if isinstance(c_crossattn, torch.Tensor) and c_crossattn.ndim == 3:
                state.context_len = int(c_crossattn.shape[1])
            transformer_options = {**(transformer_options or {}), self.probe.keys.call: state}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)


def ignored_weights(conds: dict) -> list[str]:
    """'word 1.5' for each word weight the conditionings of a sampling run carry (weight 1 is no weight)."""
    out: dict[str, None] = {}
    for role in ("positive", "negative"):
        for c in conds.get(role) or []:
            layout = c.get(LAYOUT_KEY) if isinstance(c, dict) else None
            if layout is None or not layout.weights:
                continue
            for pos, w in layout.weights.items():
                if w != 1.0:
                    out.setdefault(f"{brief(layout.word_at(pos), 40)!r} {w:g}", None)
    return list(out)


def ignored_weights_text(conds: dict) -> str:
    words = ignored_weights(conds)
    if not words:
        return ""
    return (
        f"{NODE}: reweight is off, so the diffusion model ignores the word weights of the prompt "
        f"({listed(words, limit=8)}). Set reweight to bias or scale to apply them, or remove the weights."
    )


class IgnoredWeightsNotice(SharedByClones):
    """OUTER_SAMPLE wrapper of a patched model: with reweight off, says when the prompt carries word weights;
    with reweight on, clears such a notice (the node may have said it in an earlier run). Every clone of
    the model reports to one node."""

    def __init__(self, node_id: str | None, active: bool = True) -> None:
        self.node_id = node_id
        self.active = active  # reweight is off; otherwise only clear a notice of an earlier setting

    def __call__(self, executor, *args, **kwargs):
        conds = getattr(executor.class_obj, "conds", None) or {}
        text = ignored_weights_text(conds) if self.active else ""
        if text:
            log.warning(text)
        notify(self.node_id, text)
        return executor(*args, **kwargs)
