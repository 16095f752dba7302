"""Block hooks: tell the attention override which block it is in and how long the text is.

- ``dit`` double/single block replaces: where the text sits is the family's (`families.dit_site`);
  a double block of SD3 or Flux.1 also moves the concept stream (EnfoqueConcepts) through itself.
- UNet ``attn2`` replaces: cross-attention runs through the stock attention with a site mark, or
  through the replace that was there before (another EnfoquePatchModel, another pack).

Families without block replaces (NextDiT: Lumina 2, Z-Image) are read from the ``block_index``
ComfyUI writes into transformer_options (`override`).
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..common.clones import SharedByClones
from . import families
from .concepts import ConceptCall
from .state import CallState, Patch, Site


class DitBlockReplace(SharedByClones):
    """``dit`` double/single block replace: marks the block for the override, then runs it."""

    def __init__(self, patch: Patch, index: int, single: bool, previous: Callable | None) -> None:
        self.patch, self.index, self.single, self.previous = patch, index, single, previous

    def __call__(self, args: dict, extra: dict) -> dict:
        keys = self.patch.keys
        options = args.get("transformer_options") or {}
        state: CallState | None = options.get(keys.call)
        if state is not None:
            site = families.dit_site(self.patch.spec, self.index, self.single, args, state)
            if site is not None and self.patch.config.wants_block(self.index):
                args = {**args, "transformer_options": {**options, keys.site: site}}
        concept = self._concept_call(args, state)
        if concept is not None:
            call, _ = concept
            args = {**args, "transformer_options": {**args["transformer_options"], keys.concepts: call}}
        out = self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        if concept is not None:
            self._concept_after(state, *concept)
        return out

    def _concept_call(self, args: dict, state: CallState | None) -> tuple[ConceptCall, tuple] | None:
        """The concepts' q, k, v at this double block, from the stream (started at block 0)."""
        patch = self.patch
        stream = patch.stream
        if stream is None or state is None or self.single or not state.capture or state.concept_stopped:
            return None
        blocks = patch.config.blocks
        if blocks is not None and self.index > max(blocks):
            return None  # no chosen block is left: the stream has nothing more to give
        txt, img = args.get("txt"), args.get("img")
        if not isinstance(txt, torch.Tensor) or not isinstance(img, torch.Tensor):
            return None
        if state.concept_x is None:
            if self.index != 0:
                return None
            state.concept_x = stream.start(patch.concepts.embeddings, int(img.shape[0]), txt)
        qkv, ctx = stream.pre(self.index, state.concept_x, args["vec"])
        call = ConceptCall(*qkv, block=self.index, record=patch.config.wants_block(self.index),
                           txt_len=int(txt.shape[1]), seq_len=int(txt.shape[1]) + int(img.shape[1]))
        return call, ctx

    def _concept_after(self, state: CallState, call: ConceptCall, ctx: tuple) -> None:
        if call.out is None:
            state.concept_stopped = True
            state.run.log.once(("concept-stopped", self.index), "block %d: the concept stream saw no joint "
                               "attention call of the block (another pack replaced it?); concept maps stop at "
                               "this block", self.index)
            return
        state.concept_x = self.patch.stream.post(state.concept_x, call.out, ctx)


class UnetAttn2Replace(SharedByClones):
    """UNet ``attn2`` replace: cross-attention runs through the stock attention with a site mark,
    or through the replace that was there before (another EnfoquePatchModel, another pack)."""

    def __init__(self, patch: Patch, index: int, previous: Callable | None = None) -> None:
        self.patch, self.index, self.previous = patch, index, previous

    def __call__(self, q, k, v, extra_options: dict):
        keys = self.patch.keys
        options = extra_options
        if extra_options.get(keys.call) is not None and self.patch.config.wants_block(self.index):
            options = {**extra_options, keys.site: Site(self.index, k.shape[1], None)}
        if self.previous is not None:
            return self.previous(q, k, v, options)
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
            transformer_options=options,
        )
