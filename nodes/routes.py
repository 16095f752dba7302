"""HTTP routes for the frontend extension (`js/enfoque.js`).

``GET /enfoque/info`` (also ``/api/enfoque/info``, the prefix ComfyUI adds to every route) answers what
the frontend must not keep a copy of: the nodes' display names, the probe socket types, and the model
family table (`model_patch.families.TEXTS`): which CLIP loader ``type`` and which ComfyUI nodes name
which family, so every family in the support table gets its own words on the chips.

``POST /enfoque/tokenize`` with a JSON object ``{"text": "...", "family": "sd3"}`` answers ``{"words":
[...], "family": "sd3", "tokenizer": "clip_l", "encoders": ["l", "g", "t5xxl"], "chunks": n}``: the words
the token layout of an encode of that text will have for that model family, so the EnfoqueTokenWeights
chips offer exactly the words its ``weights`` can name.

``family`` is a key of ``TEXTS`` (sd15, sdxl, sd3, flux, flux2, qwen_image, z_image, lumina2, chroma,
wan) or a CLIP loader type that names one (stable_diffusion, sdxl, sd3, flux, flux2, qwen_image, lumina2,
chroma, wan); without it, sd15 (CLIP-L alone).

How the words are found (kept honest): the family's own ComfyUI tokenizer (``SD1Tokenizer``,
``SDXLTokenizer``, ``SD3Tokenizer`` with CLIP-L, CLIP-G and T5, ``FluxTokenizer`` with CLIP-L and T5;
ComfyUI's bundled vocabulary files) tokenizes the text with ``tokenize_with_weights``, as a
CLIPTextEncode does, so ComfyUI's prompt syntax (``(red cat:1.2)``, escapes, ``embedding:name``,
77-token chunks) is parsed as in a real encode; then the layout is built from those tokens by the very
code EnfoquePatchCLIP's encode runs (``clip_patch.encoders.token_streams`` and ``layout_of``), with the
encoders that reach the family's context. Flux 2, Wan and Lumina 2 ship their tokenizer inside the
text-encoder file, which this route does not load: their words are the prompt's words by the rule every
layout of an LLM or sentencepiece encoder follows (the text's whitespace words less edge punctuation,
after ComfyUI's own ``(word:w)`` parser), answered with ``"tokenizer": "text"``.

Input is validated (a JSON object whose ``text`` is a string and ``family``, if given, a known family)
and the body is limited to ``MAX_BODY_BYTES``: 400 for bad input, 413 for too much of it, each with a
JSON ``{"error": "..."}`` that says what to send instead.

Registration: ComfyUI 0.8.0 does not call ``ComfyExtension.on_load``, so the routes are added when this
module is imported (from ``nodes/extension.py``), once, on the running ``server.PromptServer.instance``.
When the pack is imported without a server (tests that load ComfyUI in-process) nothing is registered.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import threading

import torch
from aiohttp import web

from ..attention.layout import layout_of
from ..attention.words import text_words
from .clip_patch.encoders import parse_weighted, token_streams
from .model_patch.families import TEXTS
from .names import CATEGORY, DISPLAY_NAMES, PROBE_SOCKETS

log = logging.getLogger(__name__)

TOKENIZE_PATH = "/enfoque/tokenize"
INFO_PATH = "/enfoque/info"
MAX_BODY_BYTES = 16 * 1024
_EXAMPLE = '{"text": "a red cat on a blue chair", "family": "sd3"}'
_lock = threading.Lock()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


ALIASES = {"sd1": "sd15", "sd1.5": "sd15", "qwen": "qwen_image", "zimage": "z_image", "wan2.1": "wan",
           "wan2.2": "wan", "flux.2": "flux2"}
_TOKENIZER_NAMES = {"l": "clip_l", "g": "clip_g", "t5xxl": "t5xxl"}


def loader_types() -> dict[str, str]:
    """CLIP loader type -> family key; the first family that names a type wins (lumina2: Lumina 2)."""
    out: dict[str, str] = {}
    for text in reversed(list(TEXTS.values())):
        out.update(dict.fromkeys(text.clip_types, text.key))
    return out


def family_name(family: str | None) -> str | None:
    """The family a request names (None: not one Enfoque knows)."""
    name = (family or "sd15").strip().lower()
    name = ALIASES.get(name, loader_types().get(name, name))
    return name if name in TEXTS else None


@functools.lru_cache(maxsize=len(TEXTS))
def _tokenizer(family: str):
    """The family's ComfyUI tokenizer (bundled vocabulary files); built once per family."""
    import importlib

    import folder_paths

    module, name = TEXTS[family].tokenizer
    cls = getattr(importlib.import_module(module), name)
    return cls(embedding_directory=folder_paths.get_folder_paths("embeddings"))


def text_only_words(text: str, family: str) -> dict:
    """Words of a family whose tokenizer comes with its text-encoder file: the prompt's words after ComfyUI's
    ``(word:w)`` parser, as every LLM and sentencepiece layout has them (``tokens.text_words``)."""
    plain, _ = parse_weighted(text)
    return {"words": [w for w, _, _ in text_words(plain)], "family": family, "tokenizer": "text",
            "encoders": list(TEXTS[family].encoders), "chunks": 1}


def prompt_words(text: str, family: str = "sd15") -> dict:
    """The words of the token layout an encode of ``text`` gets for this model family."""
    spec = TEXTS[family]
    in_context = spec.encoders
    if spec.tokenizer is None:
        return text_only_words(text, family)
    if in_context[0] not in _TOKENIZER_NAMES:  # ComfyUI passes (word:w) to an LLM as text; Enfoque Patch
        text = parse_weighted(text)[0]  # CLIP (attention, both) reads it and hands the LLM the rest
    with _lock:  # the tokenizers are not documented as thread-safe
        tok = _tokenizer(family)
        tokens = tok.tokenize_with_weights(text)
        streams = token_streams(tokens, tok, set(in_context), text=text)
    lengths = {s.key: sum(len(c) for c in s.chunks) for s in streams}
    clip = max((lengths[k] for k in ("l", "g") if k in lengths), default=0)
    t5 = lengths.get("t5xxl", 0)
    context = t5 if family in ("flux", "chroma") else clip + t5
    if in_context[0] not in _TOKENIZER_NAMES:  # one LLM stream: its template's tokens stay in the context
        context = lengths.get(in_context[0], 0)
    layout = layout_of(streams, context)
    words_out = list(layout.words) if layout is not None else []
    primary = "t5xxl" if family in ("flux", "chroma") else "l" if "l" in in_context else in_context[0]
    chunks = next((len(s.chunks) for s in streams if s.key == primary), 0)
    return {"words": words_out, "family": family, "tokenizer": _TOKENIZER_NAMES.get(primary, primary),
            "encoders": [s.key for s in streams], "chunks": chunks}


async def tokenize(request: web.Request) -> web.Response:
    """POST {"text": str} -> {"words": [...]}; 400 on bad input, 413 over MAX_BODY_BYTES."""
    too_big = (
        f"the request body is larger than {MAX_BODY_BYTES // 1024} kB; "
        f"send a shorter prompt (at most {MAX_BODY_BYTES} bytes of JSON)"
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, too_big)
    parts: list[bytes] = []
    size = 0
    while True:  # read() returns what has arrived so far: loop to the end (or past the limit)
        part = await request.content.read(MAX_BODY_BYTES + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
        if size > MAX_BODY_BYTES:
            return _error(413, too_big)
    raw = b"".join(parts)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _error(400, f"the request body is not valid JSON ({exc}); send e.g. {_EXAMPLE}")
    if not isinstance(body, dict):
        return _error(400, f"the request body must be a JSON object, got {type(body).__name__}; send e.g. {_EXAMPLE}")
    if "text" not in body:
        return _error(400, f"the JSON object has no 'text'; send e.g. {_EXAMPLE}")
    text = body["text"]
    if not isinstance(text, str):
        return _error(400, f"'text' must be a string, got {type(text).__name__}; send e.g. {_EXAMPLE}")
    family = body.get("family")
    if family is not None and not isinstance(family, str):
        return _error(400, f"'family' must be a string, got {type(family).__name__}; send e.g. {_EXAMPLE}")
    name = family_name(family)
    if name is None:
        known = ", ".join(dict.fromkeys([*TEXTS, *loader_types(), *ALIASES]))
        return _error(400, f"'family' {family[:40]!r} is not a model family Enfoque knows ({known}); "
                           f"send one of them or leave it out (sd15), e.g. {_EXAMPLE}")
    try:
        result = await asyncio.to_thread(prompt_words, text, name)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # a tokenizer failure is reported, never a bare 500 page
        log.warning("Enfoque: %s could not tokenize a prompt: %s", TOKENIZE_PATH, exc)
        return _error(500, f"could not split the prompt into words: {exc}")
    return web.json_response(result)


def info() -> dict:
    """What the frontend reads once: display names, probe sockets and the family table."""
    return {
        "category": CATEGORY,
        "display_names": DISPLAY_NAMES,
        "probe_sockets": {kind: DISPLAY_NAMES[node] for kind, node in PROBE_SOCKETS.items()},
        "families": {t.key: {"encoders": list(t.encoders), "tokenizer": "text" if t.tokenizer is None else "comfy",
                             "clip_types": list(t.clip_types), "nodes": list(t.nodes)} for t in TEXTS.values()},
        "loader_types": loader_types(),
        "node_families": {n: t.key for t in TEXTS.values() for n in t.nodes},
    }


async def get_info(request: web.Request) -> web.Response:
    return web.json_response(info())


def register_routes() -> bool:
    """Add the routes to the running ComfyUI server, once. False when there is no server."""
    server = sys.modules.get("server")  # ComfyUI's main.py imports it before loading custom nodes
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    routes = getattr(instance, "routes", None)
    if routes is None:
        log.debug("Enfoque: no running PromptServer; %s not registered", TOKENIZE_PATH)
        return False
    paths = {r.path for r in routes if isinstance(r, web.RouteDef)}
    if TOKENIZE_PATH not in paths:
        routes.post(TOKENIZE_PATH)(tokenize)
    if INFO_PATH not in paths:
        routes.get(INFO_PATH)(get_info)
    return True


register_routes()
