"""The one rule for which words a ``words`` text selects, in every node that takes words.

A ``words`` text is a comma separated list of items. Each item selects word labels of a prompt
(or concept names, or the labels of maps) and becomes one map, or one weight, or one set of
captured columns:

- case does not matter, nor punctuation at either end of a word ("Cat," selects "cat"), nor
  repeated whitespace;
- an item of several words is a phrase: it selects every run of consecutive labels that spells
  it ("red fur"); a label of several words (a concept "red circle") is selected by its words, and
  where labels spell the whole item on their own, those are what it selects;
- a word (or phrase) that occurs more than once selects every occurrence; ``word#2`` selects only
  the second one (``#1`` the first);
- ``#12`` alone is context position 12, the label of maps that have no words (a stock CLIP);
- ``<start>``, ``<end>``, ``<pad>`` select the start, end and padding tokens of every encoder (labels
  ``<start:l>``, ``<end:t5xxl>``, ...), ``<end:t5xxl>`` those of one encoder, ``<template>`` an LLM
  encoder's chat-template tokens, ``<other>`` tokens that belong to no word (punctuation alone); no other
  item selects them;
- an item repeated in the list counts once.

An item selects words, and its map is the mean of their maps (a word's map is the mean of its
tokens' maps). Pure Python: the nodes, the model's capture and the frontend (js/enfoque.js,
checked against this module by tests/test_word_rule.py) follow it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_POSITION = re.compile(r"^#\d+$")
_OCCURRENCE = re.compile(r"^(.*\S)\s*#(\d+)$")
SPECIAL = re.compile(r"^<(start|end|pad|template|other)(?::([\w.]+))?>$")


def normal_word(word: str) -> str:
    """A word as the rule compares it: case-folded, without punctuation at its ends (``#12`` kept)."""
    w = word.strip()
    if _POSITION.match(w):
        return w
    a, b = 0, len(w)
    while a < b and not w[a].isalnum():
        a += 1
    while b > a and not w[b - 1].isalnum():
        b -= 1
    return w[a:b].casefold()


def normal_words(text: str) -> tuple[str, ...]:
    """The words of a label or an item as the rule compares them (words of punctuation alone dropped)."""
    return tuple(n for n in (normal_word(w) for w in text.split()) if n)


@dataclass(frozen=True)
class Item:
    """One item of a ``words`` text: as written (for labels and messages), its words, and which
    occurrence it asks for (0: all)."""

    text: str
    words: tuple[str, ...]
    occurrence: int = 0
    special: tuple[str, str] | None = None  # (kind, encoder or "") of a special item such as <end:t5xxl>


def parse_items(query: str) -> list[Item]:
    """The items of a ``words`` text, each once, in order (empty items skipped)."""
    out: dict[tuple, Item] = {}
    for part in str(query or "").split(","):
        text = re.sub(r"\s+", " ", part.strip())
        if not text:
            continue
        sp = SPECIAL.match(text.casefold())
        if sp:
            item = Item(text, (), special=(sp.group(1), sp.group(2) or ""))
            out.setdefault(("special", *item.special), item)
            continue
        occurrence = 0
        body = text
        m = _OCCURRENCE.match(text)
        if m and not _POSITION.match(text):
            body, occurrence = m.group(1), int(m.group(2))
        item = Item(text, normal_words(body), occurrence)
        out.setdefault((item.words, item.occurrence) if item.words else (text,), item)
    return list(out.values())


def matches(labels: Sequence[str], item: Item) -> list[tuple[int, ...]]:
    """Every run of consecutive labels whose words spell the item's words, in order (labels that spell it
    on their own, where there are some); a special item's special labels."""
    if item.special is not None:
        kind, encoder = item.special
        found = []
        for i, label in enumerate(labels):
            m = SPECIAL.match(label)
            if m and m.group(1) == kind and (not encoder or m.group(2) == encoder):
                found.append((i,))
        return found
    want = item.words
    if not want:
        return []
    words = [() if SPECIAL.match(label) else normal_words(label) for label in labels]
    whole = [(i,) for i, w in enumerate(words) if w == want]
    if whole:
        return whole
    found = []
    for i in range(len(words)):
        got: tuple[str, ...] = ()
        j = i
        while j < len(words) and len(got) < len(want):
            if not words[j]:
                break
            got += words[j]
            j += 1
            if got != want[: len(got)]:
                break
        if got == want:
            found.append(tuple(range(i, j)))
    return found


def picked(labels: Sequence[str], item: Item) -> list[int]:
    """The label indices an item selects: every match, or only its ``occurrence``-th; [] for none."""
    runs = matches(labels, item)
    if item.occurrence:
        runs = runs[item.occurrence - 1 : item.occurrence]
    return list(dict.fromkeys(i for run in runs for i in run))


@dataclass(frozen=True)
class Pick:
    """What one item selected: its label (the item as written) and label indices, in prompt order."""

    label: str
    indices: tuple[int, ...]


class NotAWord(ValueError):
    """An item that selects nothing; ``item`` is it as written."""

    def __init__(self, item: str, labels: Sequence[str]) -> None:
        super().__init__(f"{item!r} is not among the words")
        self.item = item
        self.labels = list(labels)


def select(labels: Sequence[str], query: str) -> list[Pick]:
    """What a ``words`` text selects among ``labels``; empty text: every label on its own.

    Raises `NotAWord` for an item that selects nothing (the caller words the error in its node's name).
    """
    items = parse_items(query)
    if not items:
        return [Pick(label, (i,)) for i, label in enumerate(labels)]
    out = []
    for item in items:
        idx = picked(labels, item)
        if not idx:
            raise NotAWord(item.text, labels)
        out.append(Pick(item.text, tuple(idx)))
    return out
