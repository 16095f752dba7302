"""The V3 extension: the list of nodes ComfyUI registers."""

from comfy_api.latest import ComfyExtension, io

from . import routes  # noqa: F401  (registers the /enfoque/ HTTP routes on the running server)
from .concepts import EnfoqueConcepts, EnfoqueImageMaps
from .files import EnfoqueLoadAttentionMaps, EnfoqueSaveAttentionMaps
from .model import EnfoqueAttentionMaps, EnfoquePatchModel
from .pictures import EnfoqueHeatmaps, EnfoqueMapsToMask
from .regions import EnfoqueRegion
from .text import EnfoquePatchCLIP, EnfoqueTextAttentionMaps, EnfoqueTokenWeights


class EnfoqueExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            EnfoquePatchModel,
            EnfoqueAttentionMaps,
            EnfoquePatchCLIP,
            EnfoqueTokenWeights,
            EnfoqueTextAttentionMaps,
            EnfoqueHeatmaps,
            EnfoqueMapsToMask,
            EnfoqueSaveAttentionMaps,
            EnfoqueLoadAttentionMaps,
            EnfoqueConcepts,
            EnfoqueImageMaps,
            EnfoqueRegion,
        ]
