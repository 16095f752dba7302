"""Saying each reason once: the one log-once helper of the pack.

A fallback, a skipped prompt or an ignored setting is logged once per reason (never silently,
never on every attention call), and kept in ``messages`` so that what a run could not do can be
reported with its result.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any


class OnceLog:
    """Log a message once per reason until `reset`; warnings are kept in ``messages``, in order."""

    def __init__(self, logger: logging.Logger, prefix: str = "") -> None:
        self.logger = logger
        self.prefix = prefix
        self.seen: set[Hashable] = set()
        self.messages: list[str] = []

    def once(self, reason: Hashable, message: str, *args: Any, level: int = logging.WARNING) -> bool:
        """Log ``message % args`` if ``reason`` is new; whether it was."""
        if reason in self.seen:
            return False
        self.seen.add(reason)
        if level >= logging.WARNING:
            self.messages.append(message % args if args else message)
        self.logger.log(level, self.prefix + message, *args)
        return True

    def reset(self) -> None:
        self.seen.clear()
        self.messages.clear()
