"""The V3 extension: the list of nodes ComfyUI registers."""

from comfy_api.latest import ComfyExtension, io

from .model_nodes import EnfoqueAttentionMaps, EnfoquePatchModel


class EnfoqueExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [EnfoquePatchModel, EnfoqueAttentionMaps]
