"""Enfoque: exact attention maps and in-attention token weights for ComfyUI.

Only `comfy_entrypoint` lives here (V3 API). The engine in `attention/` is pure
torch; the glue in `nodes/` is imported lazily so tools and engine tests can
import the package without ComfyUI.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import EnfoqueExtension

    return EnfoqueExtension()
