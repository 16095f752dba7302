"""Where a prompt's words sit in the context sequence the diffusion model sees (`TokenLayout`), and
how it is built from the encoder streams of an encode.

The layout travels on the conditioning dict (key `LAYOUT_KEY`) so that maps get word labels and
weights reach exactly the context positions of the prompt they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .selection import Pick, parse_items, picked, select
from .streams import Stream, stream_length
from .words import split, token_kinds

LAYOUT_KEY = "enfoque_layout"


@dataclass(frozen=True)
class TokenLayout:
    """Where a prompt's words sit in the context sequence the diffusion model sees.

    ``spans[i]`` lists the context positions of ``words[i]`` (several encoders or
    sub-tokens give several positions). ``weights`` maps context positions to a
    weight for in-attention reweighting; positions not listed keep weight 1.
    ``encoder_spans`` keeps, per encoder stream, each word's token indices in that
    encoder (provenance for exports). ``template`` lists the context positions of
    chat-template and system-prompt tokens the encoder kept (LLM text encoders):
    they are neither words nor weighted, and maps of the words leave them out.
    ``specials`` gives, per encoder stream in the context, the positions of its start, end and
    padding tokens, and of its other tokens that belong to no word (punctuation alone: ``other``)
    (``{"l": {"start": (0,), "end": (8,), "pad": (9, ...), "other": (4,)}}``): never words, never
    weighted, their maps only on request (``<start>``, ``<end:t5xxl>``, `selection`).
    """

    words: tuple[str, ...]
    spans: tuple[tuple[int, ...], ...]
    context_length: int
    weights: dict[int, float] = field(default_factory=dict)
    encoder_spans: dict[str, list[list[int]]] = field(default_factory=dict)
    specials: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    labelled: bool = True
    template: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.words) != len(self.spans):
            raise ValueError("TokenLayout: words and spans differ in length")
        for w, s in zip(self.words, self.spans, strict=True):
            if any(p < 0 or p >= self.context_length for p in s):
                raise ValueError(f"TokenLayout: word {w!r} has a position outside the context ({self.context_length})")

    @classmethod
    def positional(cls, context_length: int) -> TokenLayout:
        """A layout for a conditioning with no word information: one label per position."""
        return cls(
            words=tuple(f"#{i}" for i in range(context_length)),
            spans=tuple((i,) for i in range(context_length)),
            context_length=context_length,
            labelled=False,
        )

    def positions(self) -> list[int]:
        """All positions covered by words, in first-seen order, without repeats."""
        seen: dict[int, None] = {}
        for s in self.spans:
            for p in s:
                seen.setdefault(p, None)
        return list(seen)

    def find(self, words: str) -> list[int]:
        """Indices of the words a ``words`` text selects, by `selection`'s rule (none: [])."""
        return list(dict.fromkeys(i for item in parse_items(words) for i in picked(self.words, item)))

    def select(self, words: str) -> list[Pick]:
        """What a ``words`` text selects among the prompt's words (`selection.select`; empty: each word)."""
        return select(self.words, words)

    def positions_of(self, indices) -> list[int]:
        """The context positions of these words, each once, in order."""
        return list(dict.fromkeys(p for i in indices for p in self.spans[i]))

    def special_positions(self) -> list[tuple[str, tuple[int, ...]]]:
        """(label, positions) of each encoder's start, end and padding tokens and of the template tokens,
        the labels as `selection` reads them (``<start:l>``, ``<template>``); empty ones left out."""
        out = [(f"<{kind}:{key}>", ps) for key, kinds in self.specials.items() for kind, ps in kinds.items() if ps]
        if self.template:
            out.append(("<template>", tuple(self.template)))
        return out

    def labelled_spans(self) -> tuple[list[str], list[tuple[int, ...]]]:
        """Every label the maps of this prompt can have, and its positions: the words, then the special
        labels (`special_positions`), which only an explicit ``<start>`` (...) item selects."""
        specials = self.special_positions()
        return [*self.words, *(label for label, _ in specials)], [*self.spans, *(ps for _, ps in specials)]

    def word_at(self, position: int) -> str:
        """The word at a context position, or ``#position`` where no word is."""
        return next((w for w, s in zip(self.words, self.spans, strict=True) if position in s), f"#{position}")

    def fitted(self, length: int) -> TokenLayout:
        """This layout on a context of ``length`` positions, as a conditioning carries it into sampling.

        Longer (ConditioningConcat, a style model's tokens appended): the positions past the
        layout become words of their own labelled by position (``#80``), with no weight. Shorter
        (a trimmed context): words and weights past its end are dropped.
        """
        if length == self.context_length:
            return self
        if length > self.context_length:
            extra = range(self.context_length, length)
            return replace(
                self,
                words=self.words + tuple(f"#{p}" for p in extra),
                spans=self.spans + tuple((p,) for p in extra),
                context_length=length,
                encoder_spans={k: [*v, *([] for _ in extra)] for k, v in self.encoder_spans.items()},
            )
        keep = [i for i, s in enumerate(self.spans) if any(p < length for p in s)]
        return replace(
            self,
            words=tuple(self.words[i] for i in keep),
            spans=tuple(tuple(p for p in self.spans[i] if p < length) for i in keep),
            context_length=length,
            weights={p: w for p, w in self.weights.items() if p < length},
            encoder_spans={k: [v[i] for i in keep] for k, v in self.encoder_spans.items()},
            specials={k: {kind: tuple(p for p in ps if p < length) for kind, ps in v.items()}
                      for k, v in self.specials.items()},
            template=tuple(p for p in self.template if p < length),
        )

    def with_weights(self, weights: dict[int, float]) -> TokenLayout:
        merged = dict(self.weights)
        merged.update(weights)
        return replace(self, weights=merged)


_DIFFLIB_MAX_CELLS = 250_000  # difflib is quadratic (worse on repetitive text): short prompts only
_LOOKAHEAD = 24


def _align(primary: list[str], other: list[str]) -> dict[int, int]:
    """Index map other -> primary for words that agree (case-insensitive), in order.

    Identical word lists map one to one; short ones go through difflib; long ones
    (thousands of words) through a linear walk that re-synchronises within a few words,
    which is all two tokenisations of the same text need.
    """
    a = [w.lower() for w in primary]
    b = [w.lower() for w in other]
    if a == b:
        return {i: i for i in range(len(b))}
    if len(a) * len(b) > _DIFFLIB_MAX_CELLS:
        return _align_walk(a, b)
    import difflib

    out: dict[int, int] = {}
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            out[block.b + k] = block.a + k
    return out


def _align_walk(a: list[str], b: list[str]) -> dict[int, int]:
    """In-order alignment in linear time: on a mismatch, find the nearest place where two words in a row
    agree again (within ``_LOOKAHEAD`` words on either side), align the few skipped words with difflib,
    and go on from there."""
    import difflib

    out: dict[int, int] = {}
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            out[j] = i
            i += 1
            j += 1
            continue
        best = None
        for d in range(1, 2 * _LOOKAHEAD):
            for di in range(max(0, d - _LOOKAHEAD), min(d, _LOOKAHEAD) + 1):
                ii, jj = i + di, j + d - di
                if ii < len(a) and jj < len(b) and a[ii] == b[jj]:
                    if ii + 1 >= len(a) or jj + 1 >= len(b) or a[ii + 1] == b[jj + 1]:
                        best = (ii, jj)
                        break
            if best:
                break
        if best is None:  # nothing agrees nearby: step over one word on each side
            i += 1
            j += 1
            continue
        for block in difflib.SequenceMatcher(a=a[i:best[0]], b=b[j:best[1]], autojunk=False).get_matching_blocks():
            for k in range(block.size):
                out[j + block.b + k] = i + block.a + k
        i, j = best
    return out


def context_offsets(lengths: dict[str, int], context_length: int) -> dict[str, int] | None:
    """Where each stream lands in the context, told apart by lengths alone.

    CLIP streams (``l``, ``g``) share positions (their channels are joined);
    T5 follows them (SD3) or stands alone (Flux, whose CLIP only gives the
    pooled vector). A single stream of another encoder (an LLM, umT5) is the
    whole context, or, when longer, its end: ComfyUI's Qwen-Image encoder drops
    the template's first tokens. None when the lengths fit no known arrangement.
    """
    others = [k for k in lengths if k not in ("l", "g", "t5xxl")]
    if others:
        if len(others) != 1 or len(lengths) != 1 or lengths[others[0]] < context_length:
            return None
        return {others[0]: context_length - lengths[others[0]]}
    clip = max((lengths[k] for k in ("l", "g") if k in lengths), default=0)
    t5 = lengths.get("t5xxl", 0)
    if clip and t5 and clip + t5 == context_length:
        return {"l": 0, "g": 0, "t5xxl": clip}
    if t5 and t5 == context_length:
        return {"t5xxl": 0}
    if clip and clip == context_length:
        return {"l": 0, "g": 0}
    return None


def build_layout(streams: list[Stream], context_length: int, in_context: dict[str, int]) -> TokenLayout:
    """Words, their context positions, weights and per-encoder spans.

    ``in_context`` gives, for each stream key that reaches the diffusion model's
    context, the position its first token lands on (CLIP-L and CLIP-G share
    positions, T5 follows them in SD3; Flux keeps only T5). Words come from the
    first stream; the others are aligned to them word by word.
    """
    if not streams:
        return TokenLayout.positional(context_length)
    split_ = {s.key: split(s) for s in streams}
    kinds_of = {s.key: token_kinds(s) for s in streams if s.key in in_context}
    per_stream = {k: v[0] for k, v in split_.items()}
    template = sorted({in_context[k] + t for k, (_, tpl) in split_.items() if k in in_context for t in tpl
                       if 0 <= in_context[k] + t < context_length})
    ordered = sorted(streams, key=lambda s: (s.key not in in_context, s.kind != "bpe"))
    primary = per_stream[ordered[0].key]
    words = [w.text for w in primary]
    spans: list[list[int]] = [[] for _ in words]
    enc_spans: dict[str, list[list[int]]] = {}
    weights: dict[int, float] = {}
    for s in streams:
        ws = per_stream[s.key]
        mapping = {i: i for i in range(len(ws))} if ws is primary else _align(words, [w.text for w in ws])
        enc = [[] for _ in words]
        for j, wd in enumerate(ws):
            if j not in mapping:
                continue
            i = mapping[j]
            enc[i].extend(t for t in wd.tokens if t not in enc[i])
            if s.key in in_context:
                for t, w in zip(wd.tokens, wd.weights, strict=True):
                    pos = in_context[s.key] + t
                    if 0 <= pos < context_length and pos not in spans[i]:
                        spans[i].append(pos)
                        if w != 1.0:
                            weights[pos] = w
        enc_spans[s.key] = enc
    keep = [i for i, s in enumerate(spans) if s]
    # each encoder's start, end and padding tokens, and its other tokens that are no word (punctuation alone)
    in_words = {p for s in spans for p in s}
    specials: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, kinds in kinds_of.items():
        found: dict[str, list[int]] = {"start": [], "end": [], "pad": [], "other": []}
        for t, kind in enumerate(kinds):
            pos = in_context[key] + t
            kind = "other" if kind in ("text", "emb") else kind
            if kind in found and 0 <= pos < context_length and pos not in in_words:
                found[kind].append(pos)
        specials[key] = {k: tuple(v) for k, v in found.items()}
    return TokenLayout(
        words=tuple(words[i] for i in keep),
        spans=tuple(tuple(spans[i]) for i in keep),
        context_length=context_length,
        weights=weights,
        encoder_spans={k: [v[i] for i in keep] for k, v in enc_spans.items()},
        specials=specials,
        template=tuple(template),
    ) if keep else TokenLayout(words=(), spans=(), context_length=context_length, specials=specials,
                               template=tuple(template))


def layout_of(streams: list[Stream], context_length: int) -> TokenLayout | None:
    """The token layout of an encode whose conditioning has ``context_length`` positions; None when the
    streams fit no known arrangement of the context."""
    offsets = context_offsets({s.key: stream_length(s) for s in streams}, context_length)
    if offsets is None:
        return None
    return build_layout(streams, context_length, offsets)
