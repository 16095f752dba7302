"""The finished runs a model probe keeps: the last few, one per latent shape (batch, grid), so both
passes of a hires fix have their maps and EnfoqueAttentionMaps finds the run its latent came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .state import Route

MAX_RESULTS = 4  # finished runs kept per probe, one per latent shape (e.g. both passes of a hires fix)


@dataclass
class ProbeResult:
    """What one finished run captured, per (role, index): token maps on the grid."""

    maps: dict[tuple[str, int], torch.Tensor]
    step_maps: dict[tuple[str, int], dict[int, torch.Tensor]]  # per step, with keep_steps
    block_maps: dict[tuple[str, int], dict[int, torch.Tensor]]  # per block, with keep_blocks
    routes: dict[tuple[str, int], Route]
    grid: tuple[int, int]
    active_steps: list[int]
    blocks: list[int]
    run: int
    batch: int = 0  # images in the run (the latent's batch)
    step_sigmas: dict[int, float] = field(default_factory=dict)  # step -> its sigma
    frames: int = 1  # latent frames of a video: ``grid`` is ``[frames * H, W]``, one ``H x W`` map per frame
    notes: tuple[str, ...] = ()  # what the run could not capture or reweight, and why (its log)
    concepts: tuple[str, ...] = ()  # concept names, with EnfoqueConcepts on the patched model
    concept_maps: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # [B, concepts, H, W]
    concept_step_maps: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)
    concept_block_maps: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)
    refined: bool = False  # the run recorded refined maps (refine on)
    refined_maps: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # like maps
    refined_step_maps: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)
    refined_block_maps: dict[tuple[str, int], dict[int, torch.Tensor]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, tuple[int, int]]:
        return self.batch, self.grid


class ResultStore:
    """Finished runs, newest last, at most one per (batch, grid) and `MAX_RESULTS` in all."""

    def __init__(self) -> None:
        self.results: list[ProbeResult] = []
        self.last: ProbeResult | None = None  # the last run, if it finished

    def forget(self, shape: tuple[int, tuple[int, int]] | None) -> None:
        """A run starts: the result of the last run is no longer current, and a kept run of the same
        shape is superseded, finished or not."""
        self.last = None
        if shape is not None:
            self.results = [r for r in self.results if r.shape != shape]

    def add(self, result: ProbeResult) -> None:
        self.last = result
        kept = [r for r in self.results if r.shape != result.shape]
        self.results = [*kept, result][-MAX_RESULTS:]

    def find(self, shape: tuple[int, tuple[int, int]] | None) -> ProbeResult | None:
        """The newest finished run of this shape; the newest run when no shape is given."""
        if shape is None:
            return self.results[-1] if self.results else None
        for r in reversed(self.results):
            if r.shape == shape:
                return r
        return None
