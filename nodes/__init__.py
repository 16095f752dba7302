"""Glue between ComfyUI and the engine: the only code that imports comfy."""
