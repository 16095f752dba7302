"""The object patch for a patched CLIP's ``cond_stage_model.encode_token_weights``: it sees every
encoder's tokens and weights, applies weight_mode, runs the encode with the probe's `EncodeState` for
the attention patches, and writes the prompt's token layout (and which record holds its maps) onto
the conditioning."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ...attention.layout import LAYOUT_KEY, TokenLayout, layout_of
from ...attention.words import token_labels, words_from_text
from ..common.clones import SharedByClones
from ..names import PATCH_CLIP
from .encoders import token_streams
from .probe import RECORD_KEY, ClipProbe, EncodeState, TextRecord

log = logging.getLogger(__name__)


class EncodeTokenWeights(SharedByClones):
    """Object patch for ``cond_stage_model.encode_token_weights``."""

    def __init__(self, probe: ClipProbe, original, tokenizer, present: set[str] | None = None) -> None:
        self.probe, self.original, self.tokenizer = probe, original, tokenizer
        # encoders the model has: a tokenizer tokenizes for all (SD3 without T5 still gives T5 tokens,
        # padded to CLIP's length, which would otherwise pass for a T5-only context)
        self.present = present

    def __call__(self, token_weight_pairs):
        probe = self.probe
        streams = token_streams(token_weight_pairs, self.tokenizer, self.present, probe.text_words)
        for s in streams:
            if not words_from_text(s):
                why = ("its prompt text is not known here (the tokens were not made by this CLIP's tokenizer, or "
                       "the prompt names an embedding)" if s.text_words is None else
                       "its prompt text's words do not tokenize to these tokens")
                log.info("Enfoque: %s: word boundaries read from the tokens alone, as %s", s.key, why)
        weights = {}
        attention_only = {s.key for s in streams if s.key in probe.attention_only}
        if probe.weight_mode in ("attention", "both"):
            for s in streams:
                w = torch.tensor([[float(it[1]) for it in c] for c in s.chunks], dtype=torch.float32)
                if not bool(torch.isfinite(w).all()):
                    raise ValueError(
                        f"{PATCH_CLIP}: the prompt weight {float(w[~torch.isfinite(w)][0]):g} is not a finite "
                        "number, which attention cannot apply; write weights such as (cat:1.2), 0 removes a word"
                    )
                if bool((w < 0).any()):
                    raise ValueError(
                        f"{PATCH_CLIP}: the prompt weight {float(w.min()):g} is negative, which attention cannot "
                        "apply (it biases by log w); use weights >= 0 (0 removes a word) or weight_mode 'comfy'"
                    )
                if bool((w != 1.0).any()):
                    weights[s.key] = w
        pairs = token_weight_pairs
        # attention mode: the encode itself sees no weights; weights Enfoque parsed for an LLM encoder never
        # reach ComfyUI's encode (ComfyUI reads no weights for these encoders)
        flat = {s.key for s in streams} if probe.weight_mode == "attention" else attention_only
        if flat and isinstance(token_weight_pairs, dict):
            pairs = {k: [[(it[0], 1.0, *it[2:]) for it in c] for c in v] if k in flat else v
                     for k, v in token_weight_pairs.items()}
        probe.state = EncodeState(weights=weights, capture=probe.capture)
        try:
            out = self.original(pairs)
        finally:
            state, probe.state = probe.state, None
        cond = out[0]
        layout = layout_of(streams, int(cond.shape[1]))
        if layout is None:
            log.warning("Enfoque: could not place this encoder's tokens in the context; maps use positions")
            layout = TokenLayout.positional(int(cond.shape[1]))
        if probe.weight_mode == "comfy":
            # ComfyUI's interpolation has applied the prompt's weights to the embedding already: they do not
            # reach the diffusion model's attention as well (EnfoqueTokenWeights' weights do)
            layout = replace(layout, weights={})
        extra = dict(out[2]) if len(out) > 2 else {}
        extra[LAYOUT_KEY] = layout
        if state.capture and (state.maps or state.skipped):
            extra[RECORD_KEY] = probe.keep(
                TextRecord(layout, {s.key: token_labels(s) for s in streams}, state.maps, dict(state.skipped))
            )
        return (out[0], out[1], extra)
