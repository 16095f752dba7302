"""Notices: settings that make part of a graph do nothing, said in the log and on the node.

Not errors: the graph runs as configured. A notice goes to the browser that queued the prompt as the
``enfoque.notice`` message ``{"node": <node id>, "text": <message, or "" once it no longer applies>}``;
js/enfoque.js shows it on that node.
"""

from __future__ import annotations

NOTICE_EVENT = "enfoque.notice"


def notify(node_id: str | None, text: str) -> None:
    """Send a notice for a node to the browser that queued the prompt (nothing without a live server)."""
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # ComfyUI used as a library
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    server.send_sync(NOTICE_EVENT, {"node": str(node_id), "text": text}, getattr(server, "client_id", None))
