"""The finished runs a model probe keeps, and how a maps node finds the one its latent came from.

A run is known by the latent it returned: two samplers on one probe with latents of the same shape
(or a sampler ComfyUI did not run again because its output was cached) each keep their own maps.
A latent that no kept run returned (changed after sampling) reads the newest run of its shape.
At most `MAX_RESULTS` runs are kept, within the probe's ``budget_mb``, the oldest dropped first."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from .state import Route

MAX_RESULTS = 4  # finished runs kept per probe (e.g. both passes of a hires fix, and the runs before)


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
    output: torch.Tensor | None = None  # the latent the run returned (a float32 CPU copy): what it is known by

    @property
    def shape(self) -> tuple[int, tuple[int, int]]:
        return self.batch, self.grid

    def returned(self, samples: torch.Tensor | None) -> bool:
        """Whether ``samples`` is the latent this run returned."""
        out = self.output
        return (out is not None and isinstance(samples, torch.Tensor) and tuple(samples.shape) == tuple(out.shape)
                and torch.equal(as_kept(samples), out))

    @property
    def nbytes(self) -> int:
        """The bytes of the tensors this result holds."""
        total = 0
        for f in fields(self):
            value = getattr(self, f.name)
            stack = [value]
            while stack:
                v = stack.pop()
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
                elif isinstance(v, dict):
                    stack.extend(v.values())
        return total


def as_kept(samples: torch.Tensor) -> torch.Tensor:
    """A latent as a result keeps it (float32, on the CPU), so the sampler's output and the latent a maps node
    gets compare equal wherever ComfyUI put them."""
    return samples.detach().to(device="cpu", dtype=torch.float32)


class ResultStore:
    """Finished runs, newest last: at most `MAX_RESULTS`, and within a byte budget (the newest always kept)."""

    def __init__(self) -> None:
        self.results: list[ProbeResult] = []
        self.last: ProbeResult | None = None  # the last run, if it finished

    def forget(self) -> None:
        """A run starts: the result of the last run is no longer the current one."""
        self.last = None

    def add(self, result: ProbeResult, budget_bytes: float | None = None) -> None:
        """Keep ``result``; a kept run that returned the same latent (the same run again) is replaced."""
        self.last = result
        kept = [r for r in self.results if not (r.shape == result.shape and result.output is not None
                                                 and r.returned(result.output))]
        kept.append(result)
        total = sum(r.nbytes for r in kept)
        while len(kept) > MAX_RESULTS or (budget_bytes is not None and total > budget_bytes and len(kept) > 1):
            total -= kept.pop(0).nbytes
        self.results = kept

    def find(self, shape: tuple[int, tuple[int, int]] | None,
             samples: torch.Tensor | None = None) -> ProbeResult | None:
        """The run that returned ``samples``; else the newest run of this shape; the newest run when no shape
        is given."""
        if shape is None:
            return self.results[-1] if self.results else None
        same = [r for r in reversed(self.results) if r.shape == shape]
        return next((r for r in same if r.returned(samples)), same[0] if same else None)
