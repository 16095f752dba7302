"""The pack's custom socket types, and the check of what arrives on a maps socket.

The model's probe and the CLIP's probe are different socket types, so the canvas refuses a CLIP probe
in a model-probe input (and the other way round) before anything runs. Workflows saved before the
split carry the old single type, ``ENFOQUE_PROBE``, on their links and slots: js/enfoque.js rewrites
it to the right new type when such a workflow is loaded, and the server checks links against the node
classes, so old API-format prompts run unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..attention.maps import AttentionMaps
from .names import ATTENTION_MAPS, CATEGORY, DESCRIPTIONS, DISPLAY_NAMES, LOAD_MAPS

ModelProbeType = io.Custom("ENFOQUE_MODEL_PROBE")
ClipProbeType = io.Custom("ENFOQUE_CLIP_PROBE")
Maps = io.Custom("ENFOQUE_MAPS")
ConceptsType = io.Custom("ENFOQUE_CONCEPTS")

MAPS_FROM = f"Attention maps from {ATTENTION_MAPS} or {LOAD_MAPS}."


def check_maps(maps: Any, node: str) -> AttentionMaps:
    """The ENFOQUE_MAPS value, checked again here because tensors stay mutable after creation."""
    if not isinstance(maps, AttentionMaps):
        raise ValueError(
            f"{node}: maps is {type(maps).__name__}, not ENFOQUE_MAPS; connect the maps output of "
            f"{ATTENTION_MAPS} or {LOAD_MAPS}."
        )
    if not bool(torch.isfinite(maps.maps).all()):
        raise ValueError(
            f"{node}: the attention maps contain NaN or inf values, so nothing can be drawn or saved. "
            "Re-run the sampling (a model or precision problem produced them), e.g. with fp32 or another sampler."
        )
    return maps


def schema(node_id: str, inputs: list, outputs: list, more: str = "", **extra) -> io.Schema:
    """A node's schema: its display name, category and description from `names` (the one source of what
    users read), ``more`` said after the description."""
    description = DESCRIPTIONS[node_id] + (f" {more}" if more else "")
    return io.Schema(node_id=node_id, display_name=DISPLAY_NAMES[node_id], category=CATEGORY,
                     description=description, inputs=inputs, outputs=outputs, **extra)
