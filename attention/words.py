"""A stream's tokens grouped into the prompt's words, and the template tokens an LLM encoder keeps.

A word is what the prompt separates by whitespace, less punctuation at its ends ("cat," is "cat",
"3.5kg" and "don't" stay whole); a piece of punctuation alone is no word. Where the prompt text is
known the words come from it (CLIP's tokens alone do not keep word boundaries); else they are
read from the tokens. Which words a ``words`` text then selects is `selection`'s rule.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .streams import Stream, bare_piece, char_spans, piece_bytes, piece_label, prompt_tokens


@dataclass
class _Word:
    text: str
    tokens: list[int]  # flat indices into the stream
    weights: list[float]  # the stream's weight of each of those tokens


def _alnum(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


# pieces CLIP's pre-tokenizer splits off a word ("don't" -> don, 't); they join the word before them
_CONTRACTIONS = frozenset({"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"})


def _groups_from_text(stream: Stream, content: list) -> list[list[int]] | None:
    """Indices into ``content`` grouped by the prompt's whitespace words; None unless the
    text's words, tokenized one by one, give exactly the stream's tokens."""
    if stream.text_words is None or any(not isinstance(c[1], int) for c in content):
        return None
    ids = [c[1] for c in content]
    groups: list[list[int]] = []
    i = 0
    for word in stream.text_words:
        n = len(word)
        if n == 0:
            continue
        if list(word) != ids[i : i + n]:
            return None
        groups.append(list(range(i, i + n)))
        i += n
    return groups if i == len(ids) else None


def words_from_text(stream: Stream) -> bool:
    """Whether this stream's words come from its prompt text (else from its tokens alone)."""
    return _groups_from_text(stream, prompt_tokens(stream)) is not None


def _digit_end(text: str) -> bool:
    return bool(text) and text[-1].isdigit()


def _groups_from_pieces(stream: Stream, content: list) -> list[list[int]]:
    """Word groups from the tokens alone (no text known). T5 marks every word start with ``▁``, so its
    groups are the text's words. CLIP's ``</w>`` ends each pre-tokenizer piece, not each word: pieces
    of one word are re-joined where the text almost surely had no space (a contraction such as "'t",
    the digits of a number, "3.5")."""
    groups: list[list[int]] = []
    bares = [bare_piece(stream.pieces.get(c[1], "")) if isinstance(c[1], int) else "" for c in content]
    last_embed = None
    for k, (_, tok, _, wid) in enumerate(content):
        if not isinstance(tok, int):  # a textual-inversion embedding vector: one word per embedding
            key = wid if wid != -1 else "run"
            if groups and last_embed == key:
                groups[-1].append(k)
            else:
                groups.append([k])
            last_embed = key
            continue
        joined_embedding = last_embed is not None
        last_embed = None
        piece = stream.pieces.get(tok, "")
        bare = bares[k]
        if not groups or joined_embedding:
            groups.append([k])
            continue
        prev = groups[-1][-1]
        prev_piece = stream.pieces.get(content[prev][1], "") if isinstance(content[prev][1], int) else ""
        prev_bare = bares[prev]
        if stream.kind == "bpe":
            nxt = bares[k + 1] if k + 1 < len(content) else ""
            join = (
                not prev_piece.endswith("</w>")
                or (bare.lower() in _CONTRACTIONS and _alnum(prev_bare))
                or (bare.isdigit() and _digit_end(prev_bare))
                or (bare in (".", ",") and _digit_end(prev_bare) and nxt[:1].isdigit())
                or (bare[:1].isdigit() and prev_bare in (".", ",") and len(groups[-1]) > 1)
            )
        else:
            join = not piece.startswith("▁")
        if join:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def prompt_region(text: str, prompt: tuple[int, int] | None = None, templates: tuple[str, ...] = ()) -> tuple[int, int]:
    """The character span of the user's prompt in ``text`` (what an LLM tokenizer saw): ``prompt`` when
    given, else the one template of ``templates`` that ``text`` fills (its prefix and suffix around the
    prompt), else the whole text."""
    if prompt is not None:
        return prompt
    for tpl in templates:
        if tpl.count("{}") != 1:
            continue
        pre, post = tpl.split("{}")
        if text.startswith(pre) and text.endswith(post) and len(text) >= len(pre) + len(post):
            return len(pre), len(text) - len(post)
    return 0, len(text)


def text_words(text: str) -> list[tuple[str, int, int]]:
    """The words of a prompt text: (word, start, end) of each whitespace-separated piece, less the
    punctuation at its ends ("cat," is "cat", "(cute" is "cute"; "3.5kg" and "don't" stay whole); a
    piece of punctuation alone is no word."""
    out = []
    for m in re.finditer(r"\S+", text):
        a, b = m.start(), m.end()
        while a < b and not text[a].isalnum():
            a += 1
        while b > a and not text[b - 1].isalnum():
            b -= 1
        if a < b:
            out.append((text[a:b], a, b))
    return out


def _bytelevel_split(stream: Stream, content: list) -> tuple[list[_Word], list[int]] | None:
    """Words and template tokens of a byte-level BPE stream, by the characters each token covers.

    The tokens' bytes, joined, are the text the tokenizer saw (byte-level BPE is lossless; Qwen's
    tokenizer applies NFC first). The prompt's span in it comes from ``stream.prompt`` (or a matching
    template); tokens wholly outside it are template tokens. Inside, a token belongs to the first word
    (`text_words`) whose letters it covers; tokens of spaces or edge punctuation belong to none. None
    where the tokens cannot be read as text (an image embedding among them, broken UTF-8)."""
    pieces, embeds = [], set()
    for k, (_, tok, _, _) in enumerate(content):
        if not isinstance(tok, int):
            if stream.embed_piece is None:
                return None
            embeds.add(k)
            tok_piece = stream.embed_piece
        else:
            tok_piece = stream.pieces.get(tok, "")
        pieces.append(piece_bytes(tok_piece, "bytelevel"))
    got = char_spans(pieces)
    if got is None:
        return None
    text, spans = got
    known = stream.text is not None and unicodedata.normalize("NFC", stream.text) == text
    if known and stream.prompt is not None:
        pa, pb = stream.prompt
        a = len(unicodedata.normalize("NFC", stream.text[:pa]))
        b = a + len(unicodedata.normalize("NFC", stream.text[pa:pb]))
    else:
        a, b = prompt_region(text, None, stream.templates)
    words = [(w, wa + a, wb + a) for w, wa, wb in text_words(text[a:b])]
    out: list[_Word] = [_Word(w, [], []) for w, _, _ in words]
    template: list[int] = []
    wi = 0
    for k, (c0, c1) in enumerate(spans):
        flat, w = content[k][0], content[k][2]
        if c1 <= a or c0 >= b or k in embeds:
            template.append(flat)
            continue
        while wi < len(words) and words[wi][2] <= c0:
            wi += 1
        for j in range(wi, len(words)):
            _, wa, wb = words[j]
            if wa >= c1:
                break
            if c0 < wb and wa < c1:
                out[j].tokens.append(flat)
                out[j].weights.append(w)
                break
    return [wd for wd in out if wd.tokens], template


def split_words(stream: Stream) -> tuple[list[tuple[str, list[int]]], list[int]]:
    """(word, its flat token indices) of each word of the stream, and the flat indices of its template
    tokens (chat template, system prompt)."""
    words, template = split(stream)
    return [(w.text, list(w.tokens)) for w in words], template


_SPECIAL_PIECE = re.compile(r"^(<\|[^|]*\|>|\[/?[A-Z_]+\]|<[a-z/]+>)$")


def _bytelevel_pieces_split(stream: Stream, content: list) -> tuple[list[_Word], list[int]]:
    """Words of a byte-level stream whose tokens cannot be read as text (an embedding with no placeholder):
    from the pieces alone, a word starting at a piece that starts with a space or a line break; special
    tokens (``<|im_start|>``, ``[INST]``, ``<s>``) and embeddings are template, and the text between them
    cannot be told from the prompt, so it is labelled by its words as they come."""
    groups: list[list[int]] = []
    template: list[int] = []
    fresh = True
    for k, (flat, tok, _, _) in enumerate(content):
        piece = stream.pieces.get(tok, "") if isinstance(tok, int) else ""
        if not isinstance(tok, int) or _SPECIAL_PIECE.match(piece):
            template.append(flat)
            fresh = True
            continue
        text = piece_bytes(piece, "bytelevel").decode("utf-8", errors="replace")
        if fresh or text[:1].isspace():
            groups.append([])
        groups[-1].append(k)
        fresh = text[-1:].isspace()
    out = []
    for g in groups:
        text = b"".join(piece_bytes(stream.pieces.get(content[k][1], ""), "bytelevel") for k in g).decode(
            "utf-8", errors="replace")
        found = text_words(text)
        if found:
            out.append(_Word(" ".join(w for w, _, _ in found), [content[k][0] for k in g],
                             [content[k][2] for k in g]))
    return out, template


def _template_words(stream: Stream) -> int:
    """How many of the text's leading whitespace words are template (a sentencepiece stream whose
    ``prompt`` starts after them, e.g. Lumina 2's system prompt)."""
    if stream.text is None or stream.prompt is None:
        return 0
    return len(stream.text[: stream.prompt[0]].split())


def split(stream: Stream) -> tuple[list[_Word], list[int]]:
    """The stream's words and its template tokens (flat indices)."""
    content = prompt_tokens(stream)
    if stream.kind == "bytelevel":
        got = _bytelevel_split(stream, content)
        return got if got is not None else _bytelevel_pieces_split(stream, content)
    words = _words(stream, content)
    skip = _template_words(stream)
    if skip and _groups_from_text(stream, content) is not None:
        n_tpl = sum(len(g) for g in _groups_from_text(stream, content)[: skip])
        template = [content[k][0] for k in range(n_tpl)]
        keep = set(template)
        words = [wd for wd in words if not set(wd.tokens) & keep]
        return words, template
    return words, []


def _words(stream: Stream, content: list | None = None) -> list[_Word]:
    """The prompt's words in this stream: the text's whitespace words where the text is known, else
    word groups read from the tokens. Punctuation at either end of a word belongs to no word
    ("cat," is "cat"); inside it stays ("3.5kg", "don't"); a word of punctuation alone ("'", ",")
    is no word. Labels are the encoder's own pieces joined (CLIP lower-cases)."""
    if content is None:
        content = prompt_tokens(stream)
    groups = _groups_from_text(stream, content)
    if groups is None:
        groups = _groups_from_pieces(stream, content)
    out: list[_Word] = []
    for g in groups:
        if not isinstance(content[g[0]][1], int):
            out.append(_Word("embedding", [content[k][0] for k in g], [content[k][2] for k in g]))
            continue
        bares = [bare_piece(stream.pieces.get(content[k][1], "")) for k in g]
        edge = [bool(b) and not _alnum(b) for b in bares]  # punctuation pieces
        lo, hi = 0, len(g)
        while lo < hi and edge[lo]:
            lo += 1
        while hi > lo and edge[hi - 1]:
            hi -= 1
        text = "".join(bares[lo:hi]).strip()
        if not _alnum(text):
            continue
        core = g[lo:hi]
        out.append(_Word(text, [content[k][0] for k in core], [content[k][2] for k in core]))
    return out


def token_kinds(stream: Stream) -> list[str]:
    """What each token of the stream is: "start", "end", "pad" (after the end token, or a byte-level
    stream's padding id), "emb" (an embedding), "template" (chat template, system prompt) or "text"."""
    template = set(split(stream)[1])
    out = []
    flat = 0
    for chunk in stream.chunks:
        ended = False
        for item in chunk:
            t = item[0]
            if not isinstance(t, int):
                out.append("emb")
            elif ended or (stream.kind == "bytelevel" and t == stream.pad):  # CLIP-G's pad id 0 is also "!"
                out.append("pad")  # CLIP-L pads with its end token: only the first end is the end
            elif t == stream.start:
                out.append("start")
            elif t == stream.end:
                out.append("end")
                ended = True
            else:
                out.append("template" if flat in template else "text")
            flat += 1
    return out


def token_labels(stream: Stream) -> list[str]:
    """One label per token of the stream: its piece, ``<start>`` / ``<end>`` / ``<pad>``, ``<emb>`` for an
    embedding, and a chat-template token in brackets."""
    out = []
    flat = [it[0] for c in stream.chunks for it in c]
    for t, kind in zip(flat, token_kinds(stream), strict=True):
        if kind in ("start", "end", "pad", "emb"):
            out.append(f"<{kind}>")
        elif stream.kind == "bytelevel" or kind == "template":
            label = piece_label(stream.pieces.get(t, str(t)), stream.kind)
            out.append(f"[{label}]" if kind == "template" else label)
        else:
            out.append(stream.pieces.get(t, str(t)).replace("</w>", "").replace("▁", "") or "_")
    return out
