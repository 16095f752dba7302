"""What EnfoquePatchModel refuses before a sampling run starts, with messages a user can act on:
weights attention cannot apply, capture words that are not words of the prompt, and a capture
whose running sums would not fit the memory budget."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ...attention.formats import brief
from ...attention.selection import parse_items, picked
from ..common.errors import not_a_word
from ..names import PATCH_CLIP
from ..names import PATCH_MODEL as NODE
from .state import ProbeConfig, Route


def check_weights(config: ProbeConfig, routes: Iterable[Route]) -> None:
    """Weights attention cannot apply are refused before sampling, naming the word."""
    mode = config.reweight
    if mode == "off":
        return
    for r in routes:
        for pos, w in r.layout.weights.items():
            if math.isfinite(w) and (w >= 0 or mode != "bias"):
                continue
            word = r.layout.word_at(pos)
            if not math.isfinite(w):
                raise ValueError(
                    f"{NODE}: the {r.role} prompt gives {brief(word)!r} the weight {w}; weights must "
                    "be finite numbers >= 0. Change the weight in the prompt or in Enfoque Token Weights"
                )
            raise ValueError(
                f"{NODE}: the {r.role} prompt gives {brief(word)!r} the weight {w:g}; bias mode needs "
                "weights >= 0 (0 removes a word). Change the weight or use reweight 'scale' or 'off'"
            )


def check_capture_words(config: ProbeConfig, routes: Iterable[Route]) -> None:
    """Every capture word must be a word of a positive prompt: a typo would otherwise capture everything."""
    positive = [r.layout for r in routes if r.role == "positive"]
    if not config.capture or not config.capture_words or not positive:
        return
    missing = [w for w in config.capture_words
               if not any(picked(lay.labelled_spans()[0], item) for lay in positive for item in parse_items(w))]
    if not missing:
        return
    if not all(lay.labelled for lay in positive):
        raise ValueError(
            f"{NODE}: capture_words {brief(', '.join(missing))!r}: the prompt was encoded by a stock CLIP, so "
            f"it has no words (only positions #0, #1, ...); put {PATCH_CLIP} before the text encode, or leave "
            "capture_words empty"
        )
    words = [w for lay in positive for w in lay.words]
    raise not_a_word(NODE, missing[0], "capture_words", "a word of the positive prompt", words, "its words",
                     "Fix capture_words, or leave it empty to capture every word.")


def capture_words(text: str) -> tuple[str, ...]:
    """The items of a capture_words text (`selection`'s rule), as written."""
    return tuple(item.text for item in parse_items(text))


def capture_bytes(config: ProbeConfig, routes: Iterable[Route], images: int, grid: tuple[int, int], steps: int,
                  blocks: int, concepts: int = 0) -> tuple[int, int]:
    """(kept token maps, bytes) the running sums of a run take: float32 ``[images, maps, H, W]``, once
    for the mean and once more per kept step / block; refined maps count each token twice, concept maps as
    ``concepts`` more tokens per captured prompt."""
    tokens = sum(len(r.groups) * (2 if config.refines else 1) + concepts for r in routes if config.captures(r.role))
    copies = 1 + (steps if config.keep_steps else 0) + (blocks if config.keep_blocks else 0)
    return tokens, images * tokens * grid[0] * grid[1] * 4 * copies


def check_budget(config: ProbeConfig, routes: Iterable[Route], images: int, grid: tuple[int, int], steps: int,
                 blocks: int, concepts: int = 0) -> None:
    """Refuse, before sampling starts, a capture whose running sums would not fit the budget."""
    if not config.capture:
        return
    tokens, need = capture_bytes(config, routes, images, grid, steps, blocks, concepts)
    if need > config.budget_bytes:
        raise ValueError(
            f"{NODE}: capturing {tokens} token maps{' and concepts' if concepts else ''} for {images} image(s) on a "
            f"{grid[0]}x{grid[1]} grid needs {need / 2**20:.0f} MB, over the budget of {config.budget_mb:.0f} MB; "
            "raise budget_mb, capture fewer words (capture_words) or use a smaller batch"
        )
