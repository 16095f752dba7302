"""Token layout of a prompt in the diffusion model's context, and the small
text formats users type (block lists, word weights).

The layout travels on the conditioning dict (key `LAYOUT_KEY`) so that maps
get word labels and weights reach exactly the context positions of the prompt
they belong to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

LAYOUT_KEY = "enfoque_layout"


@dataclass(frozen=True)
class TokenLayout:
    """Where a prompt's words sit in the context sequence the diffusion model sees.

    ``spans[i]`` lists the context positions of ``words[i]`` (several encoders or
    sub-tokens give several positions). ``weights`` maps context positions to a
    weight for in-attention reweighting; positions not listed keep weight 1.
    ``encoder_spans`` keeps, per encoder stream, each word's token indices in that
    encoder (provenance for exports).
    """

    words: tuple[str, ...]
    spans: tuple[tuple[int, ...], ...]
    context_length: int
    weights: dict[int, float] = field(default_factory=dict)
    encoder_spans: dict[str, list[list[int]]] = field(default_factory=dict)
    special: tuple[int, ...] = ()
    labelled: bool = True

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

    def find(self, query: str) -> list[int]:
        """Indices of the words matching ``query`` (a word, or a phrase of consecutive words)."""
        q = normalise_word(query).split()
        if not q:
            return []
        words = [normalise_word(w) for w in self.words]
        hits: list[int] = []
        for i in range(len(words) - len(q) + 1):
            if words[i : i + len(q)] == q:
                hits.extend(range(i, i + len(q)))
        return hits

    def with_weights(self, weights: dict[int, float]) -> TokenLayout:
        merged = dict(self.weights)
        merged.update(weights)
        return replace(self, weights=merged)


def normalise_word(w: str) -> str:
    return w.strip().lower()


_BLOCKS_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_blocks(spec: str, total: int, node: str = "EnfoquePatchModel") -> frozenset[int] | None:
    """``"all"`` -> None (every block); ``"8-16"`` and ``"0,3,5"`` -> a set of indices.

    Ranges are inclusive, as people read them. Out-of-range indices are an error.
    """
    s = (spec or "").strip().lower()
    if s in ("", "all", "*"):
        return None
    out: set[int] = set()
    for part in s.split(","):
        m = _BLOCKS_RE.match(part)
        if not m:
            raise ValueError(
                f"{node}: blocks {spec!r}: cannot read {part.strip()!r}; "
                "write 'all', a range like '8-16' or a list like '0,3,5'"
            )
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"{node}: blocks {spec!r}: range {a}-{b} runs backwards; write {b}-{a}")
        if b >= total:
            raise ValueError(
                f"{node}: blocks {spec!r}: block {b} is out of range; this model has {total} blocks (0-{total - 1})"
            )
        out.update(range(a, b + 1))
    return frozenset(out)


_WEIGHT_RE = re.compile(r"^\s*(.+?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_word_weights(text: str, node: str = "EnfoqueTokenWeights") -> list[tuple[str, float]]:
    """``"cat:1.5, red fur:0.5"`` -> ``[("cat", 1.5), ("red fur", 0.5)]``."""
    out: list[tuple[str, float]] = []
    for frag in (text or "").split(","):
        if not frag.strip():
            continue
        m = _WEIGHT_RE.match(frag)
        if not m:
            raise ValueError(
                f"{node}: cannot read {frag.strip()!r}; write word:weight pairs separated by commas, "
                "e.g. 'cat:1.5, red fur:0.5'"
            )
        w = float(m.group(2))
        if w < 0:
            raise ValueError(f"{node}: weight {w:g} for {m.group(1)!r} is negative; use 0 to remove a word")
        out.append((m.group(1), w))
    return out
