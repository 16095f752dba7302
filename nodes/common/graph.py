"""Reading the queued prompt (ComfyUI's API-format graph) where a node must say something about the graph
around it, e.g. that a sampler it feeds uses a model that no Enfoque Patch Model patched."""

from __future__ import annotations

from collections import deque


def _links(inputs: dict) -> list[tuple[str, str]]:
    """(input name, source node id) of each linked input."""
    return [(name, str(v[0])) for name, v in (inputs or {}).items()
            if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[1], int)]


def downstream_with_model(prompt: dict, start: str) -> list[str]:
    """The nodes fed, directly or through other nodes, by ``start`` that take a ``model`` input (samplers,
    guiders), each once; the walk stops at them."""
    consumers: dict[str, list[str]] = {}
    for nid, node in prompt.items():
        for _, src in _links(node.get("inputs")):
            consumers.setdefault(src, []).append(str(nid))
    seen, out, todo = {start}, [], deque([start])
    while todo:
        for nid in consumers.get(todo.popleft(), []):
            if nid in seen:
                continue
            seen.add(nid)
            if "model" in (prompt[nid].get("inputs") or {}):
                out.append(nid)
            else:
                todo.append(nid)
    return out


def model_passes_through(prompt: dict, node_id: str, class_type: str) -> bool:
    """Whether the ``model`` input of ``node_id`` comes, through any chain of models, from a node of
    ``class_type``."""
    seen, todo = set(), deque([node_id])
    while todo:
        nid = todo.popleft()
        for name, src in _links(prompt.get(nid, {}).get("inputs")):
            if name != "model" or src in seen or src not in prompt:
                continue
            if prompt[src].get("class_type") == class_type:
                return True
            seen.add(src)
            todo.append(src)
    return False
