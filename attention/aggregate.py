"""Streaming aggregation of captured maps: running sums per conditioning.

Each call of the attention hook hands over one map per prompt, already summed
over heads. We keep ``sum / heads`` per call and a call count, so reading the
mean costs one division and memory stays ``[rows, tokens, H, W]`` float32 per
prompt however many blocks and steps run. Per-step or per-block maps are kept
only on request and only within a byte budget.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


class BudgetExceeded(ValueError):
    """Retained maps would exceed the byte budget the user allowed."""


def level_grid(grid: tuple[int, int], tokens: int) -> tuple[int, int]:
    """The (h, w) of an attention level with ``tokens`` image tokens.

    UNet levels halve the latent with stride-2 convolutions (ceil); DiT
    sequences equal the grid itself.
    """
    h, w = grid
    while h * w > tokens and (h > 1 or w > 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != tokens:
        raise ValueError(f"{tokens} image tokens do not form a level of a {grid[0]}x{grid[1]} grid")
    return h, w


def to_grid(probs: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[rows, queries, tokens]`` -> ``[rows, tokens, H, W]`` on the common grid."""
    r, n, c = probs.shape
    h, w = level_grid(grid, n)
    m = probs.transpose(1, 2).reshape(r, c, h, w)
    if (h, w) != tuple(grid):
        m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
    return m


@dataclass
class Record:
    """What one prompt's rows accumulated."""

    total: Tensor
    calls: int = 0
    steps: dict[int, Tensor] = field(default_factory=dict)
    blocks: dict[Hashable, Tensor] = field(default_factory=dict)
    step_calls: dict[int, int] = field(default_factory=dict)
    block_calls: dict[Hashable, int] = field(default_factory=dict)

    def mean(self) -> Tensor:
        return self.total / max(self.calls, 1)


class MapAccumulator:
    """Running sums of captured maps keyed by prompt (any hashable key)."""

    def __init__(
        self,
        grid: tuple[int, int],
        keep_steps: bool = False,
        keep_blocks: bool = False,
        budget_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.keep_steps = keep_steps
        self.keep_blocks = keep_blocks
        self.budget_bytes = budget_bytes
        self.records: dict[Hashable, Record] = {}

    def bytes_used(self) -> int:
        n = 0
        for r in self.records.values():
            for t in (r.total, *r.steps.values(), *r.blocks.values()):
                n += t.numel() * t.element_size()
        return n

    def _retain(self, store: dict, counts: dict, key: Hashable, m: Tensor) -> None:
        if key not in store:
            if self.bytes_used() + m.numel() * 4 > self.budget_bytes:
                raise BudgetExceeded(
                    f"keeping per-step/per-block maps needs more than the capture budget of "
                    f"{self.budget_bytes / 2**20:.3g} MB"
                )
            store[key] = torch.zeros_like(m)
            counts[key] = 0
        store[key].add_(m)
        counts[key] += 1

    def add(self, key: Hashable, probs: Tensor, heads: int, step: int = 0, block: Hashable = 0,
            region: tuple[int, int, int, int] | None = None) -> None:
        """Add one call's ``[rows, queries, tokens]`` map (summed over ``heads``).

        ``region`` ``(y, x, h, w)``: the queries cover only that part of the grid (an area
        conditioning); its map is placed there and is zero elsewhere.
        """
        if region is None:
            m = to_grid(probs.float(), self.grid) / heads
        else:
            y, x, h, w = region
            if y < 0 or x < 0 or h < 1 or w < 1 or y + h > self.grid[0] or x + w > self.grid[1]:
                raise ValueError(f"region {tuple(region)} is not inside the {self.grid[0]}x{self.grid[1]} grid")
            part = to_grid(probs.float(), (h, w)) / heads
            m = part.new_zeros((*part.shape[:2], *self.grid))
            m[:, :, y : y + h, x : x + w] = part
        rec = self.records.get(key)
        if rec is None:
            if self.bytes_used() + m.numel() * 4 > self.budget_bytes:
                raise BudgetExceeded(
                    f"attention maps of shape {tuple(m.shape)} exceed the capture budget of "
                    f"{self.budget_bytes / 2**20:.3g} MB"
                )
            rec = self.records[key] = Record(total=torch.zeros_like(m))
        elif rec.total.shape != m.shape:
            raise ValueError(f"map shape changed within one run: {tuple(rec.total.shape)} -> {tuple(m.shape)}")
        rec.total.add_(m)
        rec.calls += 1
        if self.keep_steps:
            self._retain(rec.steps, rec.step_calls, step, m)
        if self.keep_blocks:
            self._retain(rec.blocks, rec.block_calls, block, m)

    def mean(self, key: Hashable) -> Tensor:
        """Mean over every call so far: ``[rows, tokens, H, W]``."""
        return self.records[key].mean()

    def step_means(self, key: Hashable) -> dict[int, Tensor]:
        r = self.records[key]
        return {s: t / r.step_calls[s] for s, t in r.steps.items()}

    def block_means(self, key: Hashable) -> dict[Hashable, Tensor]:
        r = self.records[key]
        return {b: t / r.block_calls[b] for b, t in r.blocks.items()}
