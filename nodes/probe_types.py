"""The small value types the model probe's pieces pass each other.

- `ProbeConfig`: what EnfoquePatchModel was asked for.
- `Route`: one conditioning of a sampling run (role, index, its token layout fitted to its own
  context length, the context positions captured).
- `CallState`: what the APPLY_MODEL wrapper tells the attention calls of one model call.
- `Site`: what a block replace tells the attention override (block index, text length).
- `Region`: where an area conditioning's queries sit on the run's map grid.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention.tokens import TokenLayout


class Shared:
    """Hooks are shared by every clone of the patched model: ModelPatcher.clone() deep-copies
    model_options, and all clones must report to the same probe."""

    def __deepcopy__(self, memo: dict) -> Shared:
        return self


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

    def captures(self, role: str) -> bool:
        """Whether the maps of a conditioning of this role are recorded."""
        return self.capture and (role == "positive" or self.capture_negative)


@dataclass
class Route:
    """One conditioning of a run. ``layout`` covers exactly ``length`` context positions (the
    conditioning's own length): positions past the words it was encoded with are labelled ``#p``."""

    role: str
    index: int
    layout: TokenLayout
    columns: list[int]
    length: int = 0

    def __post_init__(self) -> None:
        if not self.length:
            self.length = self.layout.context_length

    @property
    def name(self) -> str:
        return f"{self.role} conditioning #{self.index}"


@dataclass(frozen=True)
class Region:
    """An area conditioning's queries on the map grid: rows ``y..y+h``, columns ``x..x+w``."""

    y: int
    x: int
    h: int
    w: int


@dataclass
class CallState:
    """Per model call: whether the step is in the window, which step, the grid of this call's input
    (an area conditioning's crop, or the whole latent; a video's frames stacked on its rows)."""

    active: bool
    step: int
    grid: tuple[int, int]
    txt_len: int | None = None  # text tokens of the joint sequence, set by the first double block
    capture: bool = True  # False in a guidance pass (a second model pass for the same prediction)
    context_len: int | None = None  # tokens of the text context (c_crossattn) this model call was given
    joint_calls: int = 0  # main-layer attention calls seen (NextDiT on a ComfyUI that writes no block index)
    concept_x: object = None  # the concept stream between blocks (EnfoqueConcepts), a tensor once started
    concept_stopped: bool = False  # the stream could not go on in this model call (said in the run's log)


@dataclass
class Site:
    """Where an attention call sits: its block, the text it attends to and where the image queries are.

    ``txt_len`` text tokens start at key ``txt_start``; ``seq_len`` is the key length of a joint
    attention (None: a cross-attention whose keys are the text). Image queries start at ``img_start``
    (None: right after the text in a joint sequence, the first query in a cross-attention).
    ``cross_in_block``: the block also runs a self-attention first (Wan), told apart by call order."""

    block: int
    txt_len: int
    seq_len: int | None
    txt_start: int = 0
    img_start: int | None = None
    cross_in_block: bool = False
    calls: int = 0  # attention calls seen in this block call so far

    @property
    def query_start(self) -> int:
        if self.img_start is not None:
            return self.img_start
        return self.txt_start + self.txt_len if self.seq_len is not None else 0
