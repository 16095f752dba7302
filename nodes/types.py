"""The pack's custom socket types."""

from comfy_api.latest import io

Probe = io.Custom("ENFOQUE_PROBE")
Maps = io.Custom("ENFOQUE_MAPS")
