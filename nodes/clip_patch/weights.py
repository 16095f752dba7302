"""Word weights written onto a conditioning (Enfoque Token Weights): the weights of the words a
``word:weight`` list selects, by the pack's one word rule, on the prompt's token layout. The diffusion
model applies them inside attention (Enfoque Patch Model, reweight bias or scale)."""

from __future__ import annotations

from ...attention.formats import parse_word_weights
from ...attention.layout import LAYOUT_KEY
from ..common.errors import not_a_word
from ..names import PATCH_CLIP

NEEDS_PATCHED_CLIP = f"Put {PATCH_CLIP} before the text encode so the conditioning knows its words."


def apply_word_weights(conditioning, text: str, node: str) -> list:
    """A copy of the conditioning whose layouts carry the weights (the original is left alone)."""
    pairs = parse_word_weights(text, node)
    out = []
    for t, d in conditioning:
        layout = d.get(LAYOUT_KEY)
        if layout is None or not layout.labelled:
            raise ValueError(f"{node}: the conditioning carries no words (it was encoded by a stock CLIP). "
                             f"{NEEDS_PATCHED_CLIP}")
        weights = {}
        for phrase, w in pairs:
            hits = layout.find(phrase)
            if not hits:
                raise not_a_word(node, phrase, "weights", "a word of the prompt", layout.words, "its words",
                                 "Weigh words from these.")
            for p in layout.positions_of(hits):
                weights[p] = w
        out.append([t, {**d, LAYOUT_KEY: layout.with_weights(weights)}])
    return out
