"""Notices: settings that make part of a graph do nothing, said in the log and on the node.

Not errors: the graph runs as configured. A notice goes to the log (warning) and,
on a live server, to the browser as the ``enfoque.notice`` message
``{"node": <node id>, "text": <message, or "" once it no longer applies>}``;
js/enfoque.js shows it on that node.
"""

from __future__ import annotations

import logging

from ..attention.tokens import LAYOUT_KEY, brief
from .types import PATCH_MODEL, listed

log = logging.getLogger(__name__)

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


def ignored_weights(conds: dict) -> list[str]:
    """'word 1.5' for each word weight the conditionings of a sampling run carry (weight 1 is no weight)."""
    out: dict[str, None] = {}
    for role in ("positive", "negative"):
        for c in conds.get(role) or []:
            layout = c.get(LAYOUT_KEY) if isinstance(c, dict) else None
            if layout is None or not layout.weights:
                continue
            for pos, w in layout.weights.items():
                if w == 1.0:
                    continue
                word = next((wd for wd, sp in zip(layout.words, layout.spans, strict=True) if pos in sp), f"#{pos}")
                out.setdefault(f"{brief(word, 40)!r} {w:g}", None)
    return list(out)


def ignored_weights_text(conds: dict) -> str:
    words = ignored_weights(conds)
    if not words:
        return ""
    return (
        f"{PATCH_MODEL}: reweight is off, so the diffusion model ignores the word weights of the prompt "
        f"({listed(words, limit=8)}). Set reweight to bias or scale to apply them, or remove the weights."
    )


class IgnoredWeightsNotice:
    """OUTER_SAMPLE wrapper of a patched model: with reweight off, says when the prompt carries word weights;
    with reweight on, clears such a notice (the node may have said it in an earlier run).

    Returns itself on deepcopy, as the probe's hooks do: every clone of the model reports to one node.
    """

    def __init__(self, node_id: str | None, active: bool = True) -> None:
        self.node_id = node_id
        self.active = active  # reweight is off; otherwise only clear a notice of an earlier setting

    def __deepcopy__(self, memo: dict) -> IgnoredWeightsNotice:
        return self

    def __call__(self, executor, *args, **kwargs):
        conds = getattr(executor.class_obj, "conds", None) or {}
        text = ignored_weights_text(conds) if self.active else ""
        if text:
            log.warning(text)
        notify(self.node_id, text)
        return executor(*args, **kwargs)
