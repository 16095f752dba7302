"""Maps that also hold one map per kept step, block or latent frame (Enfoque Heatmaps' ``over``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from .maps import AttentionMaps


class Frame(NamedTuple):
    """The word maps of one kept step, block or latent frame: ``[batch, words, H, W]`` like the mean,
    and its caption."""

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
