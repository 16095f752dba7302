"""The small text formats of the pack: user text quoted in messages, lists of what is available,
block lists and word:weight lists. Pure Python."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable


def brief(text: object, limit: int = 80) -> str:
    """User text as quoted in an error message: at most ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listed(items: Iterable, limit: int = 60, quote: bool = False) -> str:
    """What is available, for an error message: each item once, in order, the first ``limit`` (each
    at most 40 characters), then how many more; "none" for nothing."""
    seen = list(dict.fromkeys(str(x) for x in items))
    shown = [repr(brief(x, 40)) if quote else brief(x, 40) for x in seen[:limit]]
    more = f", ... ({len(seen) - limit} more)" if len(seen) > limit else ""
    return (", ".join(shown) + more) if shown else "none"


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
            raise ValueError(f"{node}: blocks {brief(spec)!r}: cannot read {brief(part.strip())!r}; "
                             "write 'all', a range like '8-16' or a list like '0,3,5'")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"{node}: blocks {brief(spec)!r}: range {a}-{b} runs backwards; write {b}-{a}")
        if b >= total:
            raise ValueError(
                f"{node}: blocks {brief(spec)!r}: block {b} is out of range; this model has {total} blocks (0-{total - 1}). "
                f"Pick blocks within 0-{total - 1}, or 'all'"
            )
        out.update(range(a, b + 1))
    return frozenset(out)


_WEIGHT_RE = re.compile(r"^\s*(\S.*?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_word_weights(text: str, node: str = "EnfoqueTokenWeights") -> list[tuple[str, float]]:
    """``"cat:1.5, red fur:0.5"`` -> ``[("cat", 1.5), ("red fur", 0.5)]``."""
    out: list[tuple[str, float]] = []
    for frag in (text or "").split(","):
        if not frag.strip():
            continue
        m = _WEIGHT_RE.match(frag)
        if not m:
            raise ValueError(
                f"{node}: cannot read {brief(frag.strip())!r}; write word:weight pairs separated by commas, "
                "e.g. 'cat:1.5, red fur:0.5'"
            )
        w = float(m.group(2))
        if not math.isfinite(w):
            raise ValueError(f"{node}: weight {brief(m.group(2))!r} for {brief(m.group(1))!r} is too large; use a weight such as 1.5")
        if w < 0:
            raise ValueError(f"{node}: weight {w:g} for {brief(m.group(1))!r} is negative; use 0 to remove a word")
        out.append((m.group(1), w))
    return out
