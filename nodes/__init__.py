"""Glue between ComfyUI and the engine: the only code that imports comfy.

The files at this level are node faces (schema, and an ``execute`` of a few lines) plus the names,
sockets and HTTP routes they share; what the patches install inside ComfyUI's models lives in
`model_patch` and `clip_patch`, what several of them use in `common`.
"""
