"""The small value types the phases of a patched model's run pass each other.

- `ProbeConfig`: what EnfoquePatchModel was asked for.
- `Geometry`: how the model turns a latent into image tokens (patch size, pixels per latent cell).
- `Route`: one conditioning of a sampling run (role, index, its token layout fitted to its own
  context length, the context positions captured).
- `CallState`: what the APPLY_MODEL wrapper tells the hooks of one model call.
- `Site`: what a block hook tells the attention override (block index, text length).
- `Area`: where an area conditioning's queries sit on the run's map grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...attention.layout import TokenLayout

REWEIGHT = ("off", "bias", "scale")  # how word weights act in the diffusion model's attention
REFINE = ("off", "self-attention")  # refined maps: each call's maps through the image tokens' own attention


@dataclass
class ProbeConfig:
    capture: bool = True
    reweight: str = "bias"
    blocks: frozenset[int] | None = None
    start_percent: float = 0.0
    end_percent: float = 1.0
    capture_negative: bool = False
    capture_words: tuple[str, ...] = ()
    keep_steps: bool = False
    keep_blocks: bool = False
    budget_mb: float = 1024.0
    refine: str = "off"

    @property
    def refines(self) -> bool:
        """Whether refined maps are recorded beside the maps."""
        return self.capture and self.refine != "off"

    def captures(self, role: str) -> bool:
        """Whether the maps of a conditioning of this role are recorded."""
        return self.capture and (role == "positive" or self.capture_negative)

    def wants_block(self, index: int) -> bool:
        """Whether block ``index`` is captured and reweighted (``blocks``)."""
        return self.blocks is None or index in self.blocks

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_mb * 2**20)


@dataclass(frozen=True)
class Geometry:
    """(frames, rows, columns) of latent cells per image token, and image pixels per latent cell."""

    patch: tuple[int, int, int]
    downscale: int = 8

    def frames(self, shape: tuple[int, ...]) -> int:
        """Latent frames of a video latent ``[B, C, T, H, W]`` as the model patches them; 1 for an image."""
        return math.ceil(int(shape[-3]) / self.patch[0]) if len(shape) == 5 else 1

    def grid(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The map grid of a latent: its patches, a video's frames stacked on the rows (the model's token
        order is frame, row, column, so ``[frames * H, W]`` holds one ``H x W`` map per frame)."""
        h = math.ceil(int(shape[-2]) / self.patch[1])
        w = math.ceil(int(shape[-1]) / self.patch[2])
        return (self.frames(shape) * h, w)


@dataclass
class Route:
    """One conditioning of a run. ``layout`` covers exactly ``length`` context positions (the
    conditioning's own length): positions past the words it was encoded with are labelled ``#p``."""

    role: str
    index: int
    layout: TokenLayout
    columns: list[int]
    length: int = 0
    regions: tuple = ()  # the `regions.RegionSpec`s on the conditioning (Enfoque Region)
    groups: tuple[tuple[int, ...], ...] = ()  # the maps kept: each the mean of these columns (default: one each)

    def __post_init__(self) -> None:
        if not self.length:
            self.length = self.layout.context_length
        if not self.groups:
            self.groups = tuple((i,) for i in range(len(self.columns)))

    def group_of(self, positions) -> list[int]:
        """The kept maps of these context positions: each position's own, or the one group that is exactly them
        (an encoder's padding)."""
        at = {tuple(self.columns[c] for c in g): k for k, g in enumerate(self.groups)}
        whole = at.get(tuple(positions))
        if whole is not None and len(tuple(positions)) > 1:
            return [whole]
        return [at[(p,)] for p in positions if (p,) in at]

    def reducer(self):
        """``[columns, groups]`` weights that turn the captured columns into the kept maps (each group's
        mean); None where every group is one column, in order."""
        if all(g == (i,) for i, g in enumerate(self.groups)):
            return None
        r = torch.zeros(len(self.columns), len(self.groups))
        for k, g in enumerate(self.groups):
            r[list(g), k] = 1.0 / len(g)
        return r

    @property
    def name(self) -> str:
        return f"{self.role} conditioning #{self.index}"


@dataclass(frozen=True)
class Area:
    """An area conditioning's queries on the map grid: rows ``y..y+h``, columns ``x..x+w``."""

    y: int
    x: int
    h: int
    w: int


@dataclass
class CallState:
    """Per model call: the run it belongs to, whether the step is in the window, which step, the grid of
    this call's input (an area conditioning's crop, or the whole latent; a video's frames stacked on its
    rows)."""

    run: Any  # the `record.RunRecord` of the sampling run
    active: bool
    step: int
    grid: tuple[int, int]
    txt_len: int | None = None  # text tokens of the joint sequence, set by the first double block
    capture: bool = True  # False in a guidance pass (a second model pass for the same prediction)
    context_len: int | None = None  # tokens of the text context (c_crossattn) this model call was given
    joint_calls: int = 0  # main-layer attention calls seen (NextDiT on a ComfyUI that writes no block index)
    concept_x: object = None  # the concept stream between blocks (EnfoqueConcepts), a tensor once started
    concept_stopped: bool = False  # the stream could not go on in this model call (said in the run's log)
    self_attention: tuple | None = None  # (q, k, heads, skip_reshape) of the last self-attention (refine, cross)


@dataclass
class Site:
    """Where an attention call sits: its block, the text it attends to and where the image queries are.

    The ``txt_len`` text tokens are the first keys; ``seq_len`` is the key length of a joint attention
    (None: a cross-attention whose keys are the text). Image queries start at ``img_start`` (None: right
    after the text in a joint sequence, the first query in a cross-attention). ``cross_in_block``: the
    block also runs a self-attention first (Wan), told apart by call order."""

    block: int
    txt_len: int
    seq_len: int | None
    img_start: int | None = None
    cross_in_block: bool = False
    calls: int = 0  # attention calls seen in this block call so far

    @property
    def query_start(self) -> int:
        if self.img_start is not None:
            return self.img_start
        return self.txt_len if self.seq_len is not None else 0


@dataclass(frozen=True)
class HookKeys:
    """The transformer_options keys one patch's hooks talk through: the model call's `CallState`, the
    block's `Site`, the block's concept call."""

    call: str
    site: str
    concepts: str


@dataclass(frozen=True)
class Patch:
    """What the hooks of one Enfoque Patch Model know for good: its keys, the model family (`families.Family`),
    the settings, NextDiT's pad multiple, and the concept stream. What changes per run they read from the
    `CallState` of each model call."""

    keys: HookKeys
    spec: Any
    config: ProbeConfig
    pad_multiple: int | None = None
    concepts: Any = None  # `concepts.Concepts`
    stream: Any = None  # `concepts.ConceptStream`

    def __deepcopy__(self, memo: dict) -> Patch:
        return self
