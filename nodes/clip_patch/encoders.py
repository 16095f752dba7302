"""The text encoders Enfoque Patch CLIP knows, and what their tokenizers did with a prompt.

- `ENCODERS`: per token key (what ComfyUI's tokenizers return their tokens under), the attribute of the
  tokenizer and of the model, the kind of tokenizer, and the name users see.
- `token_streams`: the `attention.streams.Stream` of each encoder whose tokens reach the model, with the
  words of the prompt text: for CLIP and sentencepiece encoders the text's words tokenized one by one
  (`text_word_ids`), for byte-level LLM encoders the chat-template text the tokenizer saw (`llm_text`).
- `parse_weighted` / `weigh_tokens`: ComfyUI's ``(word:w)`` syntax read by ComfyUI's own parser, for the
  LLM encoders ComfyUI turns it off for.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import comfy.sd1_clip as sd1_clip

from ...attention.streams import Stream, char_spans, piece_bytes, tokens_text


@dataclass(frozen=True)
class Encoder:
    key: str  # token key of the tokenizer's output
    attr: str  # attribute of the tokenizer and of the encoder model: ComfyUI names both after the model
    kind: str  # "bpe" (CLIP), "sentencepiece" (T5, umT5, Gemma), "bytelevel" (Qwen, Mistral)
    name: str  # what users call it

    @property
    def llm(self) -> bool:
        """A byte-level LLM: ComfyUI wraps the prompt in a chat template and does not parse (word:w)."""
        return self.kind == "bytelevel"


# in the order "auto" picks an encoder's maps (Enfoque Text Attention Maps) and streams are read
ENCODERS: dict[str, Encoder] = {e.key: e for e in (
    Encoder("l", "clip_l", "bpe", "CLIP-L"),
    Encoder("g", "clip_g", "bpe", "CLIP-G"),
    Encoder("t5xxl", "t5xxl", "sentencepiece", "T5-XXL"),
    Encoder("umt5xxl", "umt5xxl", "sentencepiece", "umT5-XXL"),
    Encoder("gemma2_2b", "gemma2_2b", "sentencepiece", "Gemma 2"),
    Encoder("qwen25_7b", "qwen25_7b", "bytelevel", "Qwen2.5-VL"),
    Encoder("qwen3_4b", "qwen3_4b", "bytelevel", "Qwen3"),
    Encoder("mistral3_24b", "mistral3_24b", "bytelevel", "Mistral 3"),
)}
LUMINA_PROMPT_START = "<Prompt Start>"  # CLIPTextEncodeLumina2 joins its system prompt and the prompt by this
QWEN_IMAGE_PAD = 151655  # <|image_pad|>: comfy.text_encoders.qwen_image replaces it by an image embedding


@dataclass(frozen=True)
class LLMText:
    """What an LLM tokenizer was given: the text it tokenized (chat template included), the character
    span of the user's prompt in it, and the template strings it may have used (for the layout's
    fallback when the text is not known)."""

    text: str | None
    prompt: tuple[int, int] | None
    templates: tuple[str, ...] = ()



def sub_tokenizer(tokenizer, enc: Encoder):
    """An encoder's own tokenizer inside a CLIP's tokenizer (SD1Tokenizer names its tokenizer "clip_<name>"
    unless given a name: Chroma's PixArt T5 is clip_t5xxl)."""
    return (getattr(tokenizer, enc.attr, None) or getattr(tokenizer, enc.key, None)
            or getattr(tokenizer, f"clip_{enc.key}", None))


def stream_of(enc: Encoder, chunks: list, tok, words=None) -> Stream:
    """The stream of an encoder's tokens; ``words``: the text's word ids, an `LLMText`, or both (Lumina 2)."""
    extra = {}
    if isinstance(words, tuple) and len(words) == 2 and isinstance(words[1], LLMText):
        words, info = words
        extra = {"text": info.text, "prompt": info.prompt}
    if isinstance(words, LLMText):
        extra = {"text": words.text, "prompt": words.prompt, "templates": words.templates}
        words = None
    extra["pad"] = getattr(tok, "pad_token", None)
    if enc.key == "qwen25_7b":  # ComfyUI's Qwen-Image tokenizer puts an image's embedding where <|image_pad|> was
        extra["embed_piece"] = tok.inv_vocab.get(QWEN_IMAGE_PAD)
    return Stream(key=enc.key, chunks=chunks, pieces=tok.inv_vocab, kind=enc.kind,
                  start=getattr(tok, "start_token", None), end=getattr(tok, "end_token", None),
                  text_words=words, **extra)


def templates_of(tokenizer, kwargs: dict | None = None) -> tuple[str, ...]:
    """The chat templates an LLM tokenizer wraps a prompt in (``llama_template``, ComfyUI's attribute and
    keyword, and Qwen-Image's template for prompts with images), most likely first."""
    kwargs = kwargs or {}
    out = []
    if isinstance(kwargs.get("llama_template"), str):
        out.append(kwargs["llama_template"])
    if kwargs.get("images") and isinstance(getattr(tokenizer, "llama_template_images", None), str):
        out.append(tokenizer.llama_template_images)
    for attr in ("llama_template", "llama_template_images"):
        t = getattr(tokenizer, attr, None)
        if isinstance(t, str) and t not in out:
            out.append(t)
    return tuple(t for t in out if t.count("{}") == 1)


def llm_text(tokenizer, sub, enc: Encoder, chunks: list, prompt: str, kwargs: dict | None = None) -> LLMText:
    """Which text an LLM tokenizer tokenized for ``prompt``: the template that, filled with the prompt,
    spells exactly its tokens (ComfyUI skips the template for a prompt that starts with one, and may
    replace an empty prompt by a space); unknown (None) when none does."""
    templates = templates_of(tokenizer, kwargs)
    seen = tokens_text(stream_of(enc, chunks, sub))
    if seen is not None:
        for tpl in templates:
            for p in (prompt, " " if prompt == "" else None):
                if p is None:
                    continue
                pre = tpl.split("{}")[0]
                full = tpl.format(p)
                if unicodedata.normalize("NFC", full) == seen:
                    return LLMText(full, (len(pre), len(pre) + len(p)), templates)
        if unicodedata.normalize("NFC", prompt) == seen:
            return LLMText(prompt, (0, len(prompt)), templates)
    return LLMText(None, None, templates)


def parse_weighted(text: str) -> tuple[str, list[tuple[int, int, float]]]:
    """ComfyUI's ``(word:1.2)`` syntax read by ComfyUI's own parser: the text without it, and the
    character spans of its weighted parts (weight != 1) in that text."""
    plain, spans = [], []
    pos = 0
    for seg, w in sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0):
        seg = sd1_clip.unescape_important(seg)
        if w != 1.0:
            spans.append((pos, pos + len(seg), float(w)))
        plain.append(seg)
        pos += len(seg)
    return "".join(plain), spans


def weigh_tokens(chunks: list, sub, enc: Encoder, llm: LLMText, spans: list[tuple[int, int, float]]) -> list:
    """The token lists with the weight of the prompt part each token's characters fall in (the prompt
    starts at ``llm.prompt[0]`` of the tokenized text); template tokens keep 1."""
    stream = stream_of(enc, chunks, sub)
    flat = [it for c in chunks for it in c]
    skip = {stream.start, stream.pad} - {None}  # ComfyUI's start token and padding are not in the text
    pieces = [piece_bytes(stream.pieces.get(it[0], ""), "bytelevel") if isinstance(it[0], int) and it[0] not in skip
              else piece_bytes(stream.embed_piece or "", "bytelevel") if not isinstance(it[0], int) else b""
              for it in flat]
    got = char_spans(pieces)
    if got is None or llm.prompt is None or got[0] != unicodedata.normalize("NFC", llm.text or ""):
        return chunks
    _, token_spans = got
    a0 = llm.prompt[0]
    weights = []
    for c0, c1 in token_spans:
        w = 1.0
        for a, b, wt in spans:
            if c0 < a0 + b and a0 + a < c1:
                w = wt
                break
        weights.append(w)
    out, k = [], 0
    for c in chunks:
        row = []
        for it in c:
            row.append((it[0], weights[k], *it[2:]))
            k += 1
        out.append(row)
    return out


def text_word_ids(tok, text: str, disable_weights: bool = False) -> tuple[tuple[int, ...], ...] | None:
    """The token ids of each whitespace word of ``text``, as ``tok`` (a ComfyUI SDTokenizer) tokenizes a
    prompt: ComfyUI's own parser takes the ``(word:1.2)`` syntax and escapes apart, then each word of each
    weighted segment is tokenized alone. None where this cannot follow ComfyUI (embeddings, another
    tokenizer class); the layout then reads word groups from the tokens."""
    inner = getattr(tok, "tokenizer", None)
    start = getattr(tok, "tokens_start", None)
    if not callable(inner) or start is None or not isinstance(text, str):
        return None
    ident = getattr(tok, "embedding_identifier", "embedding:")
    if ident and ident in text:
        return None
    end = -1 if getattr(tok, "tokenizer_adds_end_token", True) else None
    if disable_weights or getattr(tok, "disable_weights", False):
        segments = [text]
    else:
        segments = [seg for seg, _ in sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0)]
    cache: dict[str, tuple[int, ...]] = {}
    out = []
    for seg in segments:
        for word in sd1_clip.unescape_important(seg).split():
            if word not in cache:
                ids = inner(word)["input_ids"]
                cache[word] = tuple(int(t) for t in ids[start:end])
            out.append(cache[word])
    return tuple(out)



def text_words_of(enc: Encoder, tok, text: str, disable_weights: bool = False):
    """The words of ``text`` for a CLIP or sentencepiece encoder: its words' token ids (`text_word_ids`), with
    Lumina 2's system prompt (before ``<Prompt Start>``) told apart as template; None where unknown."""
    words = text_word_ids(tok, text, disable_weights)
    start = text.find(LUMINA_PROMPT_START) if enc.key == "gemma2_2b" else -1
    if words is not None and start >= 0:
        return words, LLMText(text, (start + len(LUMINA_PROMPT_START), len(text)))
    return words


def token_streams(tokens, tokenizer, present: set[str] | None, remembered=None, text: str | None = None) -> list[Stream]:
    """The encoder streams of ``tokens`` (what a tokenizer returned) that reach the model's encoders, with
    the words of their text: ``text`` itself, or ``remembered(chunks)``, what a patched CLIP's tokenizer
    remembers of these very tokens (`probe.ClipProbe.text_words`)."""
    streams = []
    for enc in ENCODERS.values():
        if present is not None and enc.key not in present:
            continue
        chunks = tokens.get(enc.key) if isinstance(tokens, dict) else None
        tok = sub_tokenizer(tokenizer, enc)
        if not chunks or tok is None or not hasattr(tok, "inv_vocab"):
            continue
        if text is not None:
            words = llm_text(tokenizer, tok, enc, chunks, text) if enc.llm else text_words_of(enc, tok, text)
        else:
            words = remembered(chunks) if remembered is not None else None
            if words is None and enc.llm:  # not tokenized here: find the template
                words = LLMText(None, None, templates_of(tokenizer))
        streams.append(stream_of(enc, chunks, tok, words))
    return streams
