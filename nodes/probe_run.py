"""One sampling run of a patched model: its record, and the log that says what it skipped.

Whatever a run cannot capture or reweight (a prompt whose length does not fit the text the
model attends to, an attention call it cannot read, q/k/v that are not plain tensors) is
logged once per run with the reason, never skipped in silence.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..attention.aggregate import MapAccumulator
from .probe_types import Region, Route

log = logging.getLogger(__name__)


class RunLog:
    """Warnings of one run, each reason once."""

    def __init__(self) -> None:
        self.seen: set[Hashable] = set()
        self.messages: list[str] = []  # what was said, in order (a run that captured nothing reports them)

    def once(self, reason: Hashable, message: str, *args: Any, level: int = logging.WARNING) -> None:
        if reason in self.seen:
            return
        self.seen.add(reason)
        if level >= logging.WARNING:
            self.messages.append(message % args if args else message)
        log.log(level, "Enfoque: " + message, *args)


@dataclass
class RunRecord:
    routes: dict[Any, Route]
    sigma_hi: float
    sigma_lo: float
    grid: tuple[int, int] | None = None  # the map grid of the whole latent
    acc: MapAccumulator | None = None
    concept_acc: MapAccumulator | None = None  # concept maps (EnfoqueConcepts), keyed like acc
    step: int = -1
    last_sigma: float | None = None
    plans: dict[tuple, Any] = field(default_factory=dict)
    blocks_seen: set[int] = field(default_factory=set)
    active_steps: set[int] = field(default_factory=set)
    step_sigmas: dict[int, float] = field(default_factory=dict)  # the sigma of each step
    batch: int = 0
    frames: int = 1  # latent frames (video); the grid holds them stacked on its rows
    batch_calls: int | None = None  # calc_cond_batch calls in the current noise prediction
    guidance: bool = False  # inside a guidance pass
    regions: dict[Any, Region | None] = field(default_factory=dict)  # uuid -> area on the grid (None: none)
    log: RunLog = field(default_factory=RunLog)
