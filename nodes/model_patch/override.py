"""``optimized_attention_override``: the engine where a block asked for it, a call-through everywhere else.

Per attention call: read ComfyUI's call by parameter name (`call`), find where it sits (the block
hook's `Site`, or for NextDiT the call itself), take the run's plan for this call shape (`record.
RunRecord.plan`), run `attention.engine.attend`, and hand the captured maps back to the run. The run
is the one the model call's `CallState` carries.

Output neutrality: where ComfyUI's SDPA backend is in use and runs the batch in one call, the engine
makes that call itself (`common.sdpa`) and gets the identical output plus the log-sum-exp in one pass.
Any other backend, an override in front, or a larger batch gives the output as it is; the capture
then gets its normaliser from one fused kernel call over the captured rows
(`engine.row_normaliser`), or the exact chunked route where no kernel gives one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ...attention.concepts import concept_attention, concept_scores
from ...attention.engine import attend, from_bhnd, sdpa_mask, to_bhnd
from ...attention.refine import refine
from ...attention.regions import attend_split
from ...attention.sdpa import additive_mask
from ..common.clones import SharedByClones
from ..common.sdpa import fused_route, is_stock_sdpa, one_sdpa_call
from . import families
from .call import AttentionCall, read_call
from .concepts import ConceptCall
from .state import CallState, Patch, Site

_REWEIGHTED = "enfoque_reweighted"  # set on the transformer_options an override passes on once it reweighted


class AttentionOverride(SharedByClones):
    """``optimized_attention_override`` of one Enfoque Patch Model.

    A call it cannot read, or q/k/v that are not plain tensors (a tensor subclass or container of a newer
    ComfyUI or another pack), is passed on unchanged and logged once per run with the reason.
    """

    def __init__(self, patch: Patch, previous: Callable | None) -> None:
        self.patch, self.previous = patch, previous

    def _next(self, func, args: tuple, kwargs: dict):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        out = self._attention(func, args, kwargs)
        options = kwargs.get("transformer_options") or {}
        concept: ConceptCall | None = options.get(self.patch.keys.concepts)
        if concept is not None and concept.out is None:
            self._concepts(concept, options.get(self.patch.keys.call), args, kwargs, out)
        return out

    def _site(self, options: dict, state: CallState, call: AttentionCall, k_len: int) -> Site | None:
        """Where this call sits: the block hook's mark, or for a family without block hooks (NextDiT) the
        call itself; None for a call to pass through."""
        site: Site | None = options.get(self.patch.keys.site)
        if site is None and self.patch.spec.hook == "block_index":
            site = families.option_site(self.patch.spec, options, state, self.patch.pad_multiple, k_len, state.run.log)
            if site is None or not self.patch.config.wants_block(site.block):
                return None
        if site is None:
            return None
        site.calls += 1
        if site.seq_len is not None and k_len != site.seq_len:
            return None  # e.g. SD3.5's image-only attention: not a text attention
        if site.cross_in_block and (site.calls == 1 or k_len != site.txt_len):
            # Wan: the block's self-attention comes first (WanAttentionBlock.forward); an image-to-video
            # block's cross-attention to the CLIP-vision tokens has their length, not the text's
            return None
        return site

    def _attention(self, func, args: tuple, kwargs: dict):
        options = kwargs.get("transformer_options") or {}
        state: CallState | None = options.get(self.patch.keys.call)
        if state is None:
            return self._next(func, args, kwargs)
        marked_site = options.get(self.patch.keys.site)
        by_call = self.patch.spec.hook == "block_index"  # NextDiT: no block hook, the call itself says
        # refined maps of a cross-attention family take the block's self-attention, which runs just before
        keep_self = self.patch.config.refines and self.patch.spec.attention == "cross" and state.capture
        if marked_site is None and not by_call and not keep_self:
            return self._next(func, args, kwargs)
        run = state.run
        where = f"block {marked_site.block}" if marked_site is not None else "an attention call"
        call = read_call(args, kwargs)
        if isinstance(call, str):
            run.log.once(("call", call), "%s: cannot read the attention call (%s); it runs as it is, neither "
                         "captured nor reweighted", where, call)
            return self._next(func, args, kwargs)
        q, k, v = call.q, call.k, call.v
        if not all(type(t) is torch.Tensor for t in (q, k, v)):
            kinds = ", ".join(sorted({type(t).__name__ for t in (q, k, v)}))
            run.log.once(("container", kinds), "%s: q/k/v come as %s, not plain tensors; those attention "
                         "calls run as they are, neither captured nor reweighted", where, kinds)
            return self._next(func, args, kwargs)
        heads, skip = call.heads, call.skip_reshape
        seq_dim = 2 if skip else 1
        q_len, k_len = q.shape[seq_dim], k.shape[seq_dim]
        if keep_self and q_len == k_len:
            state.self_attention = (q, k, heads, skip)
        if marked_site is None and not by_call:
            return self._next(func, args, kwargs)
        site = self._site(options, state, call, k_len)
        if site is None:
            return self._next(func, args, kwargs)
        plan = run.plan(site, options.get("uuids") or [], state, q, q_len, k_len, q.shape[0])
        if plan is None:
            return self._next(func, args, kwargs)
        captures = plan.captures if state.capture else []
        # an outer EnfoquePatchModel already applied the prompt's weights (they are on mask/v): not twice
        reweight = None if options.get(_REWEIGHTED) else plan.reweight
        n_img = plan.query_range[1] - plan.query_range[0]
        regions = [] if options.get(_REWEIGHTED) else run.region_biases(plan, state, n_img, q.device)
        if regions:
            return self._regions(call, state, plan, site, regions, reweight, captures, func)
        if not captures and reweight is None:
            return self._next(func, args, kwargs)
        marked = {**options, _REWEIGHTED: True} if reweight is not None and "transformer_options" in kwargs else None

        def compute_out(q_, k_, v_, mask_):
            a, kw = call.rebuilt(q_, k_, v_, mask_, marked)
            return self._next(func, a, kw)

        # the stock SDPA backend ignores every argument but q, k, v, heads, mask and the reshapes: the fused
        # kernel gives its output (and the LSE) whatever else the call carries
        fused = self.previous is None and is_stock_sdpa(func) and bool(captures) and one_sdpa_call(q.shape[0])
        with fused_route(fused):
            out, maps = attend(
                q, k, v, heads, mask=call.mask, skip_reshape=skip,
                skip_output_reshape=call.skip_output_reshape,
                reweight=reweight, captures=captures, query_range=plan.query_range,
                compute_out=None if fused else compute_out,
            )
        self._record(call, state, plan, maps, site)
        return out

    def _regions(self, call: AttentionCall, state: CallState, plan, site: Site, regions: list, reweight, captures,
                 func):
        """An attention call with Enfoque Region's biases: the split attention of `attention.regions` (its
        output, not the backend's, whatever the backend), with its maps."""
        if self.previous is not None or not is_stock_sdpa(func):
            state.run.log.once(("region-route",), "attention calls with a region (Enfoque Region) are computed by "
                               "Enfoque's own exact attention, not by the attention backend or override in use",
                               level=logging.INFO)
        out, maps = attend_split(call.q, call.k, call.v, call.heads, text=plan.text_range,
                                 image_queries=plan.query_range, biases=regions, mask=call.mask,
                                 skip_reshape=call.skip_reshape, skip_output_reshape=call.skip_output_reshape,
                                 reweight=reweight, captures=captures,
                                 words_see_mask=any(rb.words_see_mask for _, rb, _ in plan.regions.rows))
        self._record(call, state, plan, maps, site)
        return out

    def _record(self, call: AttentionCall, state: CallState, plan, maps: list, site: Site) -> None:
        """This call's captured maps (summed over heads) into the run, and their refined maps with refine on."""
        if not maps:
            return
        state.run.record(plan, maps, call.heads, state.step, site.block)
        if state.run.refined_acc is not None:
            refined = self._refined(call, state, plan, maps, site)
            if refined is not None:
                state.run.record(plan, refined, 1, state.step, site.block, refined=True)

    def _refined(self, call: AttentionCall, state: CallState, plan, maps: list, site: Site) -> list | None:
        """The refined maps of this call's captures (`attention.refine`): through this joint attention's own
        image x image attention, or the self-attention the block ran before its cross-attention."""
        heads, skip = call.heads, call.skip_reshape
        if self.patch.spec.attention == "joint":
            q, k = to_bhnd(call.q, heads, skip), to_bhnd(call.k, heads, skip)
            q_range = k_range = plan.query_range
            mask = additive_mask(sdpa_mask(call.mask, None, call.q), call.q.dtype)
        else:
            kept, state.self_attention = state.self_attention, None
            n = plan.query_range[1] - plan.query_range[0]
            if kept is None or kept[0].shape[2 if kept[3] else 1] != n:
                state.run.log.once(("refine-self", site.block), "block %d: no self-attention of its %d image tokens "
                                   "ran before its cross-attention; its refined maps are left out", site.block, n)
                return None
            q, k = to_bhnd(kept[0], kept[2], kept[3]), to_bhnd(kept[1], kept[2], kept[3])
            q_range = k_range = (0, n)
            mask = None
        return [refine(q, k, m / heads, cap.rows, q_range, k_range, mask) for cap, m in zip(plan.captures, maps,
                                                                                             strict=True)]

    def _concepts(self, concept: ConceptCall, state: CallState | None, args: tuple, kwargs: dict, out) -> None:
        """The concepts' attention over ``[concepts; image]`` at this block's joint attention, and their
        scores against the image tokens' attention output."""
        call = read_call(args, kwargs)
        if isinstance(call, str) or not all(type(t) is torch.Tensor for t in (call.q, call.k, call.v)):
            return
        skip = call.skip_reshape
        if call.k.shape[2 if skip else 1] != concept.seq_len:
            return  # another attention of the block (SD3.5's image-only one)
        if call.mask is not None:
            if state is not None:
                state.run.log.once(("concept-mask",), "block %d: the joint attention carries a mask; concept "
                                   "maps are not computed under a mask", concept.block)
            return
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            return
        heads, n_txt = call.heads, concept.txt_len
        k, v = to_bhnd(call.k, heads, skip), to_bhnd(call.v, heads, skip)
        o_c = concept_attention(concept.q, concept.k, concept.v, k[:, :, n_txt:], v[:, :, n_txt:])
        concept.out = from_bhnd(o_c, False)
        if concept.record and state is not None and state.capture:
            scores = concept_scores(out[:, n_txt:], concept.out)
            options = kwargs.get("transformer_options") or {}
            state.run.record_concepts(scores, options.get("uuids") or [], state, concept.block)
