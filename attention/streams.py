"""One encoder's tokens as ComfyUI hands them to ``encode_token_weights``, and how its vocabulary
pieces read as text. Pure Python: `words` splits a stream into the prompt's words, `layout` places
the streams in the diffusion model's context."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Stream:
    """One encoder's tokens as ComfyUI hands them to ``encode_token_weights``.

    ``chunks`` are lists of ``(token, weight[, word_id])``; a token is an int or an
    embedding tensor. ``pieces`` turns an int token into its vocabulary string.
    ``kind`` is "bpe" (CLIP: a piece ends with ``</w>``), "sentencepiece" (T5, umT5,
    Gemma: a word starts with ``▁``) or "bytelevel" (the byte-level BPE of Qwen,
    Mistral and Llama 3: each piece is bytes in GPT-2's printable form, ``Ġ`` a space).
    ``text_words``, where the prompt text is known, gives the token ids of each
    whitespace-separated word of that text, in order, as this encoder's tokenizer
    splits them: the word boundaries CLIP's tokens alone do not keep ("3.5kg" and
    "3 . 5 kg" tokenize alike).

    LLM encoders tokenize the prompt inside a chat template. ``text`` is the whole
    text the tokenizer saw (template included) and ``prompt`` the character span of
    the user's prompt in it; ``templates`` are the template format strings (``{}``
    for the prompt) the tokenizer may have used, to find the prompt when ``text`` is
    not known. Tokens outside the prompt are template tokens, never words. ``pad``
    is the padding token (left padding included). ``embed_piece`` is the piece an
    embedding in the tokens stands for (Qwen-Image Edit's images replace its
    ``<|image_pad|>`` tokens): such tokens are read as that text, and are template.
    """

    key: str
    chunks: list
    pieces: dict[int, str]
    kind: str
    start: int | None
    end: int | None
    text_words: tuple[tuple[int, ...], ...] | None = None
    text: str | None = None
    prompt: tuple[int, int] | None = None
    templates: tuple[str, ...] = ()
    pad: int | None = None
    embed_piece: str | None = None


# GPT-2's reversible byte <-> printable character table: the pieces of byte-level BPE vocabularies
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def piece_bytes(piece: str, kind: str) -> bytes:
    """The text bytes of a vocabulary piece: byte-level BPE pieces through GPT-2's table (a special token
    such as ``<|im_start|>`` is its own text), sentencepiece pieces with ``▁`` as a space and ``<0x0A>``
    byte fallbacks."""
    if kind == "bytelevel":
        if all(c in BYTE_DECODER for c in piece):
            return bytes(BYTE_DECODER[c] for c in piece)
        return piece.encode("utf-8")
    m = _BYTE_FALLBACK.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def piece_label(piece: str, kind: str) -> str:
    """A piece as a token label: its text without word markers, whitespace shown as ``_``."""
    if kind == "bytelevel":
        text = piece_bytes(piece, kind).decode("utf-8", errors="replace")
    else:
        text = bare_piece(piece)
    return text.strip() or "_"



def prompt_tokens(stream: Stream) -> list[tuple[int, object, float, int]]:
    """(flat index, token, weight, word id) of the prompt's own tokens: no start/end/padding (an LLM
    tokenizer's padding, which may come first, included)."""
    out = []
    flat = 0
    for chunk in stream.chunks:
        started = stream.start is None
        lead = stream.pad is not None and stream.kind == "bytelevel"  # left padding before anything else
        for item in chunk:
            tok, w = item[0], float(item[1])
            wid = item[2] if len(item) > 2 else -1
            i = flat
            flat += 1
            if lead and isinstance(tok, int) and tok == stream.pad:
                continue
            lead = False
            if isinstance(tok, int) and not started and tok == stream.start:
                started = True
                continue
            if isinstance(tok, int) and tok == stream.end:
                started = False  # the rest of the chunk is end/padding
                continue
            if started:
                out.append((i, tok, w, wid))
    if stream.kind == "bytelevel" and stream.pad is not None:
        while out and isinstance(out[-1][1], int) and out[-1][1] == stream.pad:
            out.pop()  # right padding (no end token marks it)
    return out


def stream_length(stream: Stream) -> int:
    return sum(len(c) for c in stream.chunks)


def bare_piece(piece: str) -> str:
    """A vocabulary piece without its word markers (``</w>``, ``▁``)."""
    return piece.replace("</w>", "").replace("▁", "")


def tokens_text(stream: Stream) -> str | None:
    """The text a byte-level BPE stream's prompt tokens spell (start and padding left out); None for other
    kinds, or tokens that are not plain ids."""
    if stream.kind != "bytelevel":
        return None
    parts = []
    for _, tok, _, _ in prompt_tokens(stream):
        if not isinstance(tok, int) and stream.embed_piece is None:
            return None
        parts.append(piece_bytes(stream.pieces.get(tok, "") if isinstance(tok, int) else stream.embed_piece,
                                 "bytelevel"))
    try:
        return b"".join(parts).decode("utf-8")
    except UnicodeDecodeError:
        return None


def char_spans(pieces: list[bytes]) -> tuple[str, list[tuple[int, int]]] | None:
    """The text of consecutive byte pieces and each piece's character span in it (a character split across
    pieces counts in each of them); None when the bytes are not UTF-8."""
    try:
        text = b"".join(pieces).decode("utf-8")
    except UnicodeDecodeError:
        return None
    spans, chars = [], 0
    for p in pieces:
        starts = sum(1 for byte in p if byte & 0xC0 != 0x80)
        if starts == 0 and p and chars > 0:  # only the rest of a character: it belongs to that character
            spans.append((chars - 1, chars))
        else:
            spans.append((chars, chars + starts))
        chars += starts
    return text, spans
