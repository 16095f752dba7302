"""HTTP routes for the frontend extension (`js/enfoque.js`).

``POST /enfoque/tokenize`` (also reachable as ``/api/enfoque/tokenize``, the
prefix ComfyUI adds to every route) with a JSON object ``{"text": "..."}``
answers ``{"words": [...], "tokenizer": "clip_l", "chunks": n}``: the words of
the prompt as the pack's token layout labels them, so the EnfoqueTokenWeights
chips offer exactly the words its ``weights`` can name.

How the words are found (kept honest):
- The prompt goes through ComfyUI's own CLIP-L tokenizer
  (``comfy.sd1_clip.SDTokenizer`` with the BPE files bundled in ComfyUI), the
  same ``tokenize_with_weights`` a CLIPTextEncode calls, so ComfyUI's prompt
  syntax (``(red cat:1.2)``, escapes, ``embedding:name``, 77-token chunks) is
  parsed as in a real encode; then ``attention.tokens.build_layout`` groups
  the tokens into words exactly as EnfoquePatchCLIP does for the CLIP-L stream.
- For prompts encoded by CLIP-L/CLIP-G (SD1.5, SDXL, SD3) this is the layout's
  word list. Where T5 gives the words (Flux, T5-only SD3 encodes) a few words
  may differ: CLIP splits numbers into single digits ("2024" -> 2, 0, 2, 4)
  and splits "'s" off ("cat's" -> cat, 's); T5 keeps them whole.

Input is validated (a JSON object whose ``text`` is a string) and the body is
limited to ``MAX_BODY_BYTES``: 400 for bad input, 413 for too much of it, each
with a JSON ``{"error": "..."}`` that says what to send instead.

Registration: ComfyUI 0.8.0 does not call ``ComfyExtension.on_load``, so the
routes are added when this module is imported (from ``nodes/extension.py``),
once, on the running ``server.PromptServer.instance``. When the pack is
imported without a server (tests that load ComfyUI in-process) nothing is
registered.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import threading

from aiohttp import web

from ..attention.tokens import Stream, build_layout

log = logging.getLogger(__name__)

TOKENIZE_PATH = "/enfoque/tokenize"
MAX_BODY_BYTES = 16 * 1024
_EXAMPLE = '{"text": "a red cat on a blue chair"}'
_lock = threading.Lock()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@functools.lru_cache(maxsize=1)
def _clip_l_tokenizer():
    """ComfyUI's CLIP-L tokenizer (the bundled sd1_tokenizer BPE files); built once (about 0.3 s)."""
    import folder_paths
    from comfy.sd1_clip import SDTokenizer

    return SDTokenizer(
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        embedding_size=768,
        embedding_key="clip_l",
    )


def prompt_words(text: str) -> dict:
    """The prompt's words as EnfoquePatchCLIP's layout labels its CLIP-L stream."""
    with _lock:  # the tokenizer is not documented as thread-safe
        tok = _clip_l_tokenizer()
        chunks = tok.tokenize_with_weights(text, return_word_ids=True)
    stream = Stream(
        key="l", chunks=chunks, pieces=tok.inv_vocab, kind="bpe", start=tok.start_token, end=tok.end_token
    )
    length = sum(len(c) for c in chunks)
    layout = build_layout([stream], length, {"l": 0})
    return {"words": list(layout.words), "tokenizer": "clip_l", "chunks": len(chunks)}


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
    try:
        result = await asyncio.to_thread(prompt_words, text)
    except Exception as exc:  # a tokenizer failure is reported, never a bare 500 page
        log.warning("Enfoque: %s could not tokenize a prompt: %s", TOKENIZE_PATH, exc)
        return _error(500, f"could not split the prompt into words: {exc}")
    return web.json_response(result)


def register_routes() -> bool:
    """Add the routes to the running ComfyUI server, once. False when there is no server."""
    server = sys.modules.get("server")  # ComfyUI's main.py imports it before loading custom nodes
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    routes = getattr(instance, "routes", None)
    if routes is None:
        log.debug("Enfoque: no running PromptServer; %s not registered", TOKENIZE_PATH)
        return False
    if any(isinstance(r, web.RouteDef) and r.path == TOKENIZE_PATH for r in routes):
        return True
    routes.post(TOKENIZE_PATH)(tokenize)
    return True


register_routes()
