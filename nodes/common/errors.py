"""How the pack words an error: the node's display name once in front, the bad value, what is
available, and the fix. Node faces and the machinery raise `ValueError`s built here."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ...attention.formats import brief, listed
from ..names import DISPLAY_NAMES

_INTERNAL_PREFIX = re.compile(r"^(?:[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*: )+")


def engine_message(exc: Exception) -> str:
    """An engine error as a user reads it: no internal function name in front, nodes by their display names."""
    text = _INTERNAL_PREFIX.sub("", str(exc))
    for node_id, name in DISPLAY_NAMES.items():
        text = re.sub(rf"\b{node_id}\b", name, text)
    return text


def in_node(node: str, exc: Exception, fix: str = "") -> ValueError:
    """An engine error with the node's display name in front (once), and the fix if the engine gave none."""
    if str(exc).startswith(f"{node}: "):
        return ValueError(str(exc))
    return ValueError(f"{node}: {engine_message(exc)}{' ' + fix if fix else ''}")


def check_option(node: str, name: str, value: object, options: Iterable[str]) -> None:
    """Refuse a COMBO value that is not one of its options (an API prompt can send anything)."""
    options = list(options)
    if value not in options:
        raise ValueError(f"{node}: {name} {brief(value)!r} is not an option; options: {', '.join(options)}. "
                         "Pick one of them.")


def not_a_word(node: str, item: str, field: str, what: str, available: Iterable[str], listing: str,
               fix: str) -> ValueError:
    """An item of a words text that selects nothing: ``'<item>' in <field> is not <what>; <listing>: ...``."""
    return ValueError(f"{node}: {brief(item)!r} in {field} is not {what}; {listing}: {listed(available)}. {fix}")
