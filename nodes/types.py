"""The pack's custom socket types and the names users see.

The model's probe and the CLIP's probe are different socket types, so the
canvas refuses a CLIP probe in a model-probe input (and the other way round)
before anything runs. Workflows saved before the split carry the old single
type, ``ENFOQUE_PROBE``, on their links and slots: js/enfoque.js rewrites it
to the right new type when such a workflow is loaded, and the server checks
links against the node classes, so old API-format prompts run unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from comfy_api.latest import io
from torch import Tensor

from ..attention.maps import AttentionMaps

ModelProbeType = io.Custom("ENFOQUE_MODEL_PROBE")
ClipProbeType = io.Custom("ENFOQUE_CLIP_PROBE")
LEGACY_PROBE = "ENFOQUE_PROBE"  # the one probe type of workflows saved before the split
Maps = io.Custom("ENFOQUE_MAPS")
ConceptsType = io.Custom("ENFOQUE_CONCEPTS")

# node id -> display name: what the canvas shows, and how errors, notices and tooltips name a node
DISPLAY_NAMES = {
    "EnfoquePatchModel": "Enfoque Patch Model",
    "EnfoqueAttentionMaps": "Enfoque Attention Maps",
    "EnfoquePatchCLIP": "Enfoque Patch CLIP",
    "EnfoqueTokenWeights": "Enfoque Token Weights",
    "EnfoqueTextAttentionMaps": "Enfoque Text Attention Maps",
    "EnfoqueHeatmaps": "Enfoque Heatmaps",
    "EnfoqueMapsToMask": "Enfoque Maps To Mask",
    "EnfoqueSaveAttentionMaps": "Enfoque Save Attention Maps",
    "EnfoqueLoadAttentionMaps": "Enfoque Load Attention Maps",
    "EnfoqueConcepts": "Enfoque Concepts",
    "EnfoqueImageMaps": "Enfoque Image Maps",
}

PATCH_MODEL = DISPLAY_NAMES["EnfoquePatchModel"]
ATTENTION_MAPS = DISPLAY_NAMES["EnfoqueAttentionMaps"]
PATCH_CLIP = DISPLAY_NAMES["EnfoquePatchCLIP"]
TOKEN_WEIGHTS = DISPLAY_NAMES["EnfoqueTokenWeights"]
TEXT_ATTENTION_MAPS = DISPLAY_NAMES["EnfoqueTextAttentionMaps"]
HEATMAPS = DISPLAY_NAMES["EnfoqueHeatmaps"]
MAPS_TO_MASK = DISPLAY_NAMES["EnfoqueMapsToMask"]
SAVE_MAPS = DISPLAY_NAMES["EnfoqueSaveAttentionMaps"]
LOAD_MAPS = DISPLAY_NAMES["EnfoqueLoadAttentionMaps"]
CONCEPTS = DISPLAY_NAMES["EnfoqueConcepts"]
IMAGE_MAPS = DISPLAY_NAMES["EnfoqueImageMaps"]


def listed(items, limit: int = 60, quote: bool = False) -> str:
    """What is available, for an error message: each item once, in order, the first ``limit``."""
    seen = list(dict.fromkeys(str(x) for x in items))
    shown = [repr(x) if quote else x for x in seen[:limit]]
    more = f", ... ({len(seen) - limit} more)" if len(seen) > limit else ""
    return (", ".join(shown) + more) if shown else "none"


class Frame(NamedTuple):
    """The word maps of one kept step or block: ``[batch, words, H, W]`` like the mean, and its caption."""

    caption: str
    maps: Tensor


@dataclass(frozen=True)
class FramedMaps(AttentionMaps):
    """ENFOQUE_MAPS that also hold the maps of each kept step and block (EnfoquePatchModel's keep_steps,
    keep_blocks), for Enfoque Heatmaps' ``over`` input. Anything that derives new maps (a word selection,
    a file) keeps only the mean. A video model's maps (Wan) also hold one map per latent frame
    (``frames``); their mean over the frames is ``maps``."""

    steps: tuple[Frame, ...] = ()
    blocks: tuple[Frame, ...] = ()
    frames: tuple[Frame, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for frame in (*self.steps, *self.blocks, *self.frames):
            if tuple(frame.maps.shape) != tuple(self.maps.shape):
                raise ValueError(
                    f"FramedMaps: frame {frame.caption!r} has shape {tuple(frame.maps.shape)}, "
                    f"the mean {tuple(self.maps.shape)}; they must agree."
                )
