"""Which conditioning is which, when a sampling run starts.

Each conditioning of the guider (positive and negative lists) gets a `Route`, keyed by the
uuid ComfyUI gives it: its role and index, its token layout and the context positions to
capture. The layout is fitted to the conditioning's *own* length, read from its
``cross_attn`` tensor: a conditioning that is longer than the words it was encoded with
(stock ConditioningConcat, a style model's tokens appended) keeps its words where the
layout puts them, and the positions past them are labelled by position (``#80``) and never
weighted. That own length is what later tells ComfyUI's repeat-to-common-length (several
conditionings of different lengths batched together: each is repeated to their least
common multiple) apart from a longer conditioning.
"""

from __future__ import annotations

from typing import Any

from ...attention.layout import LAYOUT_KEY, TokenLayout
from ...attention.oncelog import OnceLog
from ...attention.selection import parse_items, picked
from .regions import REGIONS_KEY
from .state import ProbeConfig, Route


def capture_columns(layout: TokenLayout, capture_words: tuple[str, ...]) -> tuple[list[int], tuple[tuple[int, ...], ...]]:
    """Context positions to capture, and how they are kept: the positions of the words ``capture_words``
    selects (`selection`'s rule, with ``<start>`` and the like), or, when it is empty or selects none of this
    prompt's words, every word and every start, end, padding and template token (their maps on request,
    their share of the attention in the maps' metadata).

    Each position is kept as a map of its own, but an encoder's padding, which can be hundreds of tokens,
    is kept as one map, their mean: the groups are tuples of indices into the positions."""
    labels, spans = layout.labelled_spans()
    chosen = list(range(len(labels)))
    if capture_words:
        items = parse_items(", ".join(capture_words))
        picks = list(dict.fromkeys(i for item in items for i in picked(labels, item)))
        chosen = picks or chosen
    columns: dict[int, int] = {}
    groups: dict[tuple[int, ...], None] = {}
    for i in chosen:
        cols = tuple(columns.setdefault(p, len(columns)) for p in spans[i])
        for g in ([cols] if labels[i].startswith(("<pad:", "<other:")) else [(c,) for c in cols]):
            groups.setdefault(g, None)
    return list(columns), tuple(groups)


def fitted_layout(layout: TokenLayout | None, length: int, name: str, log: OnceLog) -> TokenLayout:
    """The layout of a conditioning of ``length`` context positions (see the module's doc)."""
    if layout is None:
        return TokenLayout.positional(length)
    if layout.context_length == length:
        return layout
    known = layout.context_length
    if length > known:
        log.once(
            ("longer", name),
            "the %s is %d context tokens long but its words cover the first %d (ConditioningConcat or tokens "
            "appended to it); positions %d-%d get maps labelled by position (#%d ...) and no weights",
            name, length, known, known, length - 1, known,
        )
    else:
        log.once(
            ("shorter", name),
            "the %s is %d context tokens long, shorter than the %d its words were encoded with; words past "
            "position %d get no maps and no weights",
            name, length, known, length - 1,
        )
    return layout.fitted(length)


def build_routes(conds: dict[str, list[dict]], config: ProbeConfig, log: OnceLog) -> dict[Any, Route]:
    routes: dict[Any, Route] = {}
    for role in ("positive", "negative"):
        for i, c in enumerate(conds.get(role) or []):
            name = f"{role} conditioning #{i}"
            cross = c.get("cross_attn")
            if cross is None or "uuid" not in c:
                log.once(("no-context", name), "the %s has no text context (cross_attn); it gets no maps and "
                         "no weights", name)
                continue
            length = int(cross.shape[1])
            layout = fitted_layout(c.get(LAYOUT_KEY), length, name, log)
            columns, groups = capture_columns(layout, config.capture_words)
            routes[c["uuid"]] = Route(role, i, layout, columns, length, tuple(c.get(REGIONS_KEY, ())), groups)
    return routes
