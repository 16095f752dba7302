"""Token layout of a prompt in the diffusion model's context, and the small
text formats users type (block lists, word weights).

The layout travels on the conditioning dict (key `LAYOUT_KEY`) so that maps
get word labels and weights reach exactly the context positions of the prompt
they belong to.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field, replace

LAYOUT_KEY = "enfoque_layout"


@dataclass(frozen=True)
class TokenLayout:
    """Where a prompt's words sit in the context sequence the diffusion model sees.

    ``spans[i]`` lists the context positions of ``words[i]`` (several encoders or
    sub-tokens give several positions). ``weights`` maps context positions to a
    weight for in-attention reweighting; positions not listed keep weight 1.
    ``encoder_spans`` keeps, per encoder stream, each word's token indices in that
    encoder (provenance for exports). ``template`` lists the context positions of
    chat-template and system-prompt tokens the encoder kept (LLM text encoders):
    they are neither words nor weighted, and maps of the words leave them out.
    """

    words: tuple[str, ...]
    spans: tuple[tuple[int, ...], ...]
    context_length: int
    weights: dict[int, float] = field(default_factory=dict)
    encoder_spans: dict[str, list[list[int]]] = field(default_factory=dict)
    special: tuple[int, ...] = ()
    labelled: bool = True
    template: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.words) != len(self.spans):
            raise ValueError("TokenLayout: words and spans differ in length")
        for w, s in zip(self.words, self.spans, strict=True):
            if any(p < 0 or p >= self.context_length for p in s):
                raise ValueError(f"TokenLayout: word {w!r} has a position outside the context ({self.context_length})")

    @classmethod
    def positional(cls, context_length: int) -> TokenLayout:
        """A layout for a conditioning with no word information: one label per position."""
        return cls(
            words=tuple(f"#{i}" for i in range(context_length)),
            spans=tuple((i,) for i in range(context_length)),
            context_length=context_length,
            labelled=False,
        )

    def positions(self) -> list[int]:
        """All positions covered by words, in first-seen order, without repeats."""
        seen: dict[int, None] = {}
        for s in self.spans:
            for p in s:
                seen.setdefault(p, None)
        return list(seen)

    def find(self, query: str) -> list[int]:
        """Indices of the words matching ``query`` (a word, or a phrase of consecutive words)."""
        q = normalise_word(query).split()
        if not q:
            return []
        words = [normalise_word(w) for w in self.words]
        hits: list[int] = []
        for i in range(len(words) - len(q) + 1):
            if words[i : i + len(q)] == q:
                hits.extend(range(i, i + len(q)))
        return hits

    def fitted(self, length: int) -> TokenLayout:
        """This layout on a context of ``length`` positions, as a conditioning carries it into sampling.

        Longer (ConditioningConcat, a style model's tokens appended): the positions past the
        layout become words of their own labelled by position (``#80``), with no weight. Shorter
        (a trimmed context): words and weights past its end are dropped.
        """
        if length == self.context_length:
            return self
        if length > self.context_length:
            extra = range(self.context_length, length)
            return replace(
                self,
                words=self.words + tuple(f"#{p}" for p in extra),
                spans=self.spans + tuple((p,) for p in extra),
                context_length=length,
                encoder_spans={k: [*v, *([] for _ in extra)] for k, v in self.encoder_spans.items()},
            )
        keep = [i for i, s in enumerate(self.spans) if any(p < length for p in s)]
        return replace(
            self,
            words=tuple(self.words[i] for i in keep),
            spans=tuple(tuple(p for p in self.spans[i] if p < length) for i in keep),
            context_length=length,
            weights={p: w for p, w in self.weights.items() if p < length},
            encoder_spans={k: [v[i] for i in keep] for k, v in self.encoder_spans.items()},
            special=tuple(p for p in self.special if p < length),
            template=tuple(p for p in self.template if p < length),
        )

    def with_weights(self, weights: dict[int, float]) -> TokenLayout:
        merged = dict(self.weights)
        merged.update(weights)
        return replace(self, weights=merged)


def brief(text: object, limit: int = 80) -> str:
    """User text as quoted in an error message: at most ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_words(words, limit: int = 60) -> str:
    """A prompt's words for an error message: the first ``limit``, then how many more."""
    words = list(words)
    more = f" ... ({len(words) - limit} more)" if len(words) > limit else ""
    return ", ".join(brief(w, 40) for w in words[:limit]) + more


def normalise_word(w: str) -> str:
    return w.strip().lower()


_BLOCKS_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_blocks(spec: str, total: int, node: str = "EnfoquePatchModel") -> frozenset[int] | None:
    """``"all"`` -> None (every block); ``"8-16"`` and ``"0,3,5"`` -> a set of indices.

    Ranges are inclusive, as people read them. Out-of-range indices are an error.
    """
    s = (spec or "").strip().lower()
    if s in ("", "all", "*"):
        return None
    out: set[int] = set()
    for part in s.split(","):
        m = _BLOCKS_RE.match(part)
        if not m:
            raise ValueError(
                f"{node}: blocks {brief(spec)!r}: cannot read {brief(part.strip())!r}; "
                "write 'all', a range like '8-16' or a list like '0,3,5'"
            )
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"{node}: blocks {brief(spec)!r}: range {a}-{b} runs backwards; write {b}-{a}")
        if b >= total:
            raise ValueError(
                f"{node}: blocks {brief(spec)!r}: block {b} is out of range; this model has {total} blocks (0-{total - 1}). "
                f"Pick blocks within 0-{total - 1}, or 'all'"
            )
        out.update(range(a, b + 1))
    return frozenset(out)


_WEIGHT_RE = re.compile(r"^\s*(.+?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_word_weights(text: str, node: str = "EnfoqueTokenWeights") -> list[tuple[str, float]]:
    """``"cat:1.5, red fur:0.5"`` -> ``[("cat", 1.5), ("red fur", 0.5)]``."""
    out: list[tuple[str, float]] = []
    for frag in (text or "").split(","):
        if not frag.strip():
            continue
        m = _WEIGHT_RE.match(frag)
        if not m:
            raise ValueError(
                f"{node}: cannot read {brief(frag.strip())!r}; write word:weight pairs separated by commas, "
                "e.g. 'cat:1.5, red fur:0.5'"
            )
        w = float(m.group(2))
        if not math.isfinite(w):
            raise ValueError(f"{node}: weight {brief(m.group(2))!r} for {brief(m.group(1))!r} is too large; use a weight such as 1.5")
        if w < 0:
            raise ValueError(f"{node}: weight {w:g} for {brief(m.group(1))!r} is negative; use 0 to remove a word")
        out.append((m.group(1), w))
    return out


# -- building a layout from the tokens an encode sees ------------------------------

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


@dataclass
class _Word:
    text: str
    tokens: list[int]  # flat indices into the stream
    weights: list[float]  # the stream's weight of each of those tokens

    @property
    def weight(self) -> float:
        """The weight furthest from 1 (what the word was given in the prompt)."""
        return max(self.weights, key=lambda x: abs(x - 1.0), default=1.0)


def _content(stream: Stream) -> list[tuple[int, object, float, int]]:
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
    return _groups_from_text(stream, _content(stream)) is not None


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


def tokens_text(stream: Stream) -> str | None:
    """The text a byte-level BPE stream's prompt tokens spell (start and padding left out); None for other
    kinds, or tokens that are not plain ids."""
    if stream.kind != "bytelevel":
        return None
    parts = []
    for _, tok, _, _ in _content(stream):
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


def split_words(stream: Stream) -> tuple[list[tuple[str, list[int]]], list[int]]:
    """(word, its flat token indices) of each word of the stream, and the flat indices of its template
    tokens (chat template, system prompt)."""
    words, template = _split(stream)
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


def _split(stream: Stream) -> tuple[list[_Word], list[int]]:
    """The stream's words and its template tokens (flat indices)."""
    content = _content(stream)
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
        content = _content(stream)
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


_DIFFLIB_MAX_CELLS = 250_000  # difflib is quadratic (worse on repetitive text): short prompts only
_LOOKAHEAD = 24


def _align(primary: list[str], other: list[str]) -> dict[int, int]:
    """Index map other -> primary for words that agree (case-insensitive), in order.

    Identical word lists map one to one; short ones go through difflib; long ones
    (thousands of words) through a linear walk that re-synchronises within a few words,
    which is all two tokenisations of the same text need.
    """
    a = [w.lower() for w in primary]
    b = [w.lower() for w in other]
    if a == b:
        return {i: i for i in range(len(b))}
    if len(a) * len(b) > _DIFFLIB_MAX_CELLS:
        return _align_walk(a, b)
    import difflib

    out: dict[int, int] = {}
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            out[block.b + k] = block.a + k
    return out


def _align_walk(a: list[str], b: list[str]) -> dict[int, int]:
    """In-order alignment in linear time: on a mismatch, find the nearest place where two words in a row
    agree again (within ``_LOOKAHEAD`` words on either side), align the few skipped words with difflib,
    and go on from there."""
    import difflib

    out: dict[int, int] = {}
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            out[j] = i
            i += 1
            j += 1
            continue
        best = None
        for d in range(1, 2 * _LOOKAHEAD):
            for di in range(max(0, d - _LOOKAHEAD), min(d, _LOOKAHEAD) + 1):
                ii, jj = i + di, j + d - di
                if ii < len(a) and jj < len(b) and a[ii] == b[jj]:
                    if ii + 1 >= len(a) or jj + 1 >= len(b) or a[ii + 1] == b[jj + 1]:
                        best = (ii, jj)
                        break
            if best:
                break
        if best is None:  # nothing agrees nearby: step over one word on each side
            i += 1
            j += 1
            continue
        for block in difflib.SequenceMatcher(a=a[i:best[0]], b=b[j:best[1]], autojunk=False).get_matching_blocks():
            for k in range(block.size):
                out[j + block.b + k] = i + block.a + k
        i, j = best
    return out


def context_offsets(lengths: dict[str, int], context_length: int) -> dict[str, int] | None:
    """Where each stream lands in the context, told apart by lengths alone.

    CLIP streams (``l``, ``g``) share positions (their channels are joined);
    T5 follows them (SD3) or stands alone (Flux, whose CLIP only gives the
    pooled vector). A single stream of another encoder (an LLM, umT5) is the
    whole context, or, when longer, its end: ComfyUI's Qwen-Image encoder drops
    the template's first tokens. None when the lengths fit no known arrangement.
    """
    others = [k for k in lengths if k not in ("l", "g", "t5xxl")]
    if others:
        if len(others) != 1 or len(lengths) != 1 or lengths[others[0]] < context_length:
            return None
        return {others[0]: context_length - lengths[others[0]]}
    clip = max((lengths[k] for k in ("l", "g") if k in lengths), default=0)
    t5 = lengths.get("t5xxl", 0)
    if clip and t5 and clip + t5 == context_length:
        return {"l": 0, "g": 0, "t5xxl": clip}
    if t5 and t5 == context_length:
        return {"t5xxl": 0}
    if clip and clip == context_length:
        return {"l": 0, "g": 0}
    return None


def build_layout(streams: list[Stream], context_length: int, in_context: dict[str, int]) -> TokenLayout:
    """Words, their context positions, weights and per-encoder spans.

    ``in_context`` gives, for each stream key that reaches the diffusion model's
    context, the position its first token lands on (CLIP-L and CLIP-G share
    positions, T5 follows them in SD3; Flux keeps only T5). Words come from the
    first stream; the others are aligned to them word by word.
    """
    if not streams:
        return TokenLayout.positional(context_length)
    split = {s.key: _split(s) for s in streams}
    per_stream = {k: v[0] for k, v in split.items()}
    template = sorted({in_context[k] + t for k, (_, tpl) in split.items() if k in in_context for t in tpl
                       if 0 <= in_context[k] + t < context_length})
    ordered = sorted(streams, key=lambda s: (s.key not in in_context, s.kind != "bpe"))
    primary = per_stream[ordered[0].key]
    words = [w.text for w in primary]
    spans: list[list[int]] = [[] for _ in words]
    enc_spans: dict[str, list[list[int]]] = {}
    weights: dict[int, float] = {}
    for s in streams:
        ws = per_stream[s.key]
        mapping = {i: i for i in range(len(ws))} if ws is primary else _align(words, [w.text for w in ws])
        enc = [[] for _ in words]
        for j, wd in enumerate(ws):
            if j not in mapping:
                continue
            i = mapping[j]
            enc[i].extend(t for t in wd.tokens if t not in enc[i])
            if s.key in in_context:
                for t, w in zip(wd.tokens, wd.weights, strict=True):
                    pos = in_context[s.key] + t
                    if 0 <= pos < context_length and pos not in spans[i]:
                        spans[i].append(pos)
                        if w != 1.0:
                            weights[pos] = w
        enc_spans[s.key] = enc
    keep = [i for i, s in enumerate(spans) if s]
    specials = set(range(context_length)) - {p for i in keep for p in spans[i]}
    return TokenLayout(
        words=tuple(words[i] for i in keep),
        spans=tuple(tuple(spans[i]) for i in keep),
        context_length=context_length,
        weights=weights,
        encoder_spans={k: [v[i] for i in keep] for k, v in enc_spans.items()},
        special=tuple(sorted(specials)),
        template=tuple(template),
    ) if keep else TokenLayout(words=(), spans=(), context_length=context_length, special=tuple(range(context_length)),
                               template=tuple(template))
