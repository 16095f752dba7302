"""The engine inside a patched CLIP: weights on self-attention keys, token x token maps,
and the token layout written onto the conditioning.

Text encoders get no transformer_options, so the clone's patcher gets object
patches (restored by ComfyUI on unpatch): the top-level ``encode_token_weights``
(it sees every encoder's tokens and weights, and may return extra conditioning
keys) and each self-attention module's ``forward`` (it wraps the attention
function ComfyUI passes down).

Word boundaries: CLIP's tokens do not keep them ("3.5kg" and "3 . 5 kg" give the
same tokens), so the clone's tokenizer is a `TextTokenizer`, which calls the
shared tokenizer as is and remembers, for the token lists it returns, the prompt
text's words tokenized one by one with ComfyUI's own prompt parser. The original
CLIP's tokenizer is not touched.

LLM text encoders (Qwen2.5-VL for Qwen-Image, Qwen3 for Z-Image, Mistral 3 for
Flux 2; `LLM_ENCODERS`) tokenize the prompt inside a chat template, and ComfyUI
turns its ``(word:1.2)`` parsing off for them (the syntax reaches the LLM as
text). The `TextTokenizer` remembers the template text, so the layout tells the
template's tokens from the prompt's words; with weight_mode ``attention`` or
``both`` it parses ``(word:w)`` itself, hands the LLM the prompt without the
syntax, and gives the word's tokens the weight, which then acts in attention
only (ComfyUI has no embedding interpolation for these encoders). Their
self-attention (``comfy.text_encoders.llama.Attention``) calls the attention
function ComfyUI passes down, as CLIP's and T5's do, so capture and attention
weights work the same way. umT5 (Wan) and Gemma 2 (Lumina 2) are sentencepiece
encoders like T5, with ComfyUI's own weight parsing.
"""

from __future__ import annotations

import inspect
import logging
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import comfy.ldm.modules.attention as comfy_attention
import comfy.sd1_clip as sd1_clip
import torch

from ..attention.engine import Capture, Reweight, attend
from ..attention.tokens import (
    LAYOUT_KEY,
    Stream,
    TokenLayout,
    build_layout,
    char_spans,
    context_offsets,
    piece_bytes,
    piece_label,
    split_words,
    stream_length,
    tokens_text,
    words_from_text,
)
from .comfy_sdpa import fused_route, one_sdpa_call
from .probe_types import Shared

log = logging.getLogger(__name__)

RECORD_KEY = "enfoque_text_record"
ENCODERS = (("l", "clip_l"), ("g", "clip_g"), ("t5xxl", "t5xxl"))
# (token key, attribute of the tokenizer and of the encoder): ComfyUI names both after the model
LLM_ENCODERS = (("qwen25_7b", "qwen25_7b"), ("qwen3_4b", "qwen3_4b"), ("mistral3_24b", "mistral3_24b"),
                ("umt5xxl", "umt5xxl"), ("gemma2_2b", "gemma2_2b"))
ALL_ENCODERS = ENCODERS + LLM_ENCODERS
KINDS = {"l": "bpe", "g": "bpe", "t5xxl": "sentencepiece", "umt5xxl": "sentencepiece",
         "gemma2_2b": "sentencepiece", "qwen25_7b": "bytelevel", "qwen3_4b": "bytelevel",
         "mistral3_24b": "bytelevel"}
ENCODER_NAMES = {"l": "CLIP-L", "g": "CLIP-G", "t5xxl": "T5-XXL", "umt5xxl": "umT5-XXL", "gemma2_2b": "Gemma 2",
                 "qwen25_7b": "Qwen2.5-VL", "qwen3_4b": "Qwen3", "mistral3_24b": "Mistral 3"}
ATTENTION_CLASSES = ("CLIPAttention", "T5Attention")
LLM_ATTENTION = ("comfy.text_encoders.llama", "Attention")  # module and class of ComfyUI's LLM self-attention
LUMINA_PROMPT_START = "<Prompt Start>"
QWEN_IMAGE_PAD = 151655  # <|image_pad|>: comfy.text_encoders.qwen_image replaces it by an image embedding  # CLIPTextEncodeLumina2 joins its system prompt and the prompt by this
_PYTORCH = {comfy_attention.attention_pytorch,
            getattr(comfy_attention.attention_pytorch, "__wrapped__", comfy_attention.attention_pytorch)}
MAX_RECORDS = 8
MAX_TEXTS = 64  # token lists whose prompt text a TextTokenizer remembers
# token x token maps of one encode, all encoders and layers together; an encoder whose maps would not
# fit (a prompt of thousands of T5 tokens) is encoded as usual but not captured
TEXT_CAPTURE_BYTES = 256 * 2**20


@dataclass
class EncoderMaps:
    """Token x token attention of one encoder for one encode: per layer, head mean, ``[1, T, T]`` (the first
    chunk: a long prompt's other 77-token chunks are encoded apart, as ComfyUI does, and not captured)."""

    layers: list[torch.Tensor] = field(default_factory=list)


@dataclass
class TextRecord:
    layout: TokenLayout
    labels: dict[str, list[str]]  # per encoder, one label per token position of the first chunk(s)
    maps: dict[str, EncoderMaps]
    skipped: dict[str, str] = field(default_factory=dict)  # encoder -> why its maps were not captured


@dataclass
class EncodeState:
    weights: dict[str, torch.Tensor]  # per encoder: [chunks, T] weights for the keys
    capture: bool
    maps: dict[str, EncoderMaps] = field(default_factory=dict)
    reweights: dict[tuple, Reweight | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    captured_bytes: int = 0

    def wants_capture(self, key: str, length: int, layers: int) -> bool:
        """Capture this encoder's maps if all its layers fit what is left of TEXT_CAPTURE_BYTES (decided once)."""
        if not self.capture or key in self.skipped:
            return False
        if key in self.maps:
            return True
        need = length * length * 4 * max(layers, 1)
        if self.captured_bytes + need > TEXT_CAPTURE_BYTES:
            self.skipped[key] = (
                f"{length} tokens need {need / 2**20:.3g} MB of token x token maps, over the "
                f"{TEXT_CAPTURE_BYTES / 2**20:g} MB Enfoque keeps per encode"
            )
            log.warning("Enfoque: %s maps not captured: %s", key, self.skipped[key])
            return False
        self.captured_bytes += need
        self.maps[key] = EncoderMaps()
        return True

    def reweight(self, key: str, rows: int, length: int, device: torch.device) -> Reweight | None:
        """Built once per encoder and batch shape, not per layer."""
        cache_key = (key, rows, length, device)
        if cache_key not in self.reweights:
            w = self.weights.get(key)
            rw = None
            if w is not None and w.shape[1] == length:
                full = torch.ones(rows, length)
                n = min(rows, w.shape[0])
                full[:n] = w[:n]
                rw = Reweight.build(full.to(device), "bias")
            elif w is not None:
                log.warning("Enfoque: %s: the prompt's weights cover %d tokens but its attention has %d keys; the "
                            "weights are not applied in this encoder's attention", key, w.shape[1], length)
            self.reweights[cache_key] = rw
        return self.reweights[cache_key]


@dataclass(frozen=True)
class LLMText:
    """What an LLM tokenizer was given: the text it tokenized (chat template included), the character
    span of the user's prompt in it, and the template strings it may have used (for the layout's
    fallback when the text is not known)."""

    text: str | None
    prompt: tuple[int, int] | None
    templates: tuple[str, ...] = ()


class ClipProbe(Shared):
    """ENFOQUE_CLIP_PROBE from Enfoque Patch CLIP: the last few encodes' token x token maps."""

    kind = "clip"

    def __init__(self, weight_mode: str, capture: bool) -> None:
        self.weight_mode = weight_mode
        self.capture = capture
        self.state: EncodeState | None = None
        self.records: OrderedDict[str, TextRecord] = OrderedDict()
        self.layers: dict[str, int] = {}  # attention layers per encoder
        # id(token list) -> (that list, its text's words as token ids or an LLMText), newest last
        self.texts: OrderedDict[int, tuple[list, object]] = OrderedDict()
        self.attention_only: set[str] = set()  # encoders whose weights Enfoque parsed: they act in attention only

    def remember_text(self, chunks: list, words) -> None:
        self.texts[id(chunks)] = (chunks, words)
        self.texts.move_to_end(id(chunks))
        while len(self.texts) > MAX_TEXTS:
            self.texts.popitem(last=False)

    def text_words(self, chunks):
        """What this probe's tokenizer remembers of a token list it returned (the very same list object):
        its text's words as token ids, or for an LLM tokenizer an `LLMText`."""
        hit = self.texts.get(id(chunks))
        return hit[1] if hit is not None and hit[0] is chunks else None

    def keep(self, record: TextRecord) -> str:
        rid = uuid.uuid4().hex
        self.records[rid] = record
        while len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)
        return rid


def _sub_tokenizer(tokenizer, attr: str, key: str):
    # SD1Tokenizer names its tokenizer "clip_<name>" unless given a name (Chroma's PixArt T5: clip_t5xxl)
    return getattr(tokenizer, attr, None) or getattr(tokenizer, key, None) or getattr(tokenizer, f"clip_{key}", None)


def _stream(key: str, chunks: list, tok, text_words=None) -> Stream:
    kind = KINDS.get(key, "sentencepiece" if "t5" in key else "bpe")
    extra = {}
    if isinstance(text_words, LLMText):
        extra = {"text": text_words.text, "prompt": text_words.prompt, "templates": text_words.templates}
        text_words = None
    extra["pad"] = getattr(tok, "pad_token", None)
    if key == "qwen25_7b":  # ComfyUI's Qwen-Image tokenizer puts an image's embedding where <|image_pad|> was
        extra["embed_piece"] = tok.inv_vocab.get(QWEN_IMAGE_PAD)
    return Stream(key=key, chunks=chunks, pieces=tok.inv_vocab, kind=kind,
                  start=getattr(tok, "start_token", None), end=getattr(tok, "end_token", None),
                  text_words=text_words, **extra)


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


def llm_text(tokenizer, sub, key: str, chunks: list, prompt: str, kwargs: dict | None = None) -> LLMText:
    """Which text an LLM tokenizer tokenized for ``prompt``: the template that, filled with the prompt,
    spells exactly its tokens (ComfyUI skips the template for a prompt that starts with one, and may
    replace an empty prompt by a space); unknown (None) when none does."""
    templates = templates_of(tokenizer, kwargs)
    seen = tokens_text(_stream(key, chunks, sub))
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


def weigh_tokens(chunks: list, sub, key: str, llm: LLMText, spans: list[tuple[int, int, float]]) -> list:
    """The token lists with the weight of the prompt part each token's characters fall in (the prompt
    starts at ``llm.prompt[0]`` of the tokenized text); template tokens keep 1."""
    stream = _stream(key, chunks, sub)
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


class TextTokenizer(Shared):
    """The patched CLIP's tokenizer: the shared one, called as is, plus the text of what it tokenized."""

    def __init__(self, inner, probe: ClipProbe) -> None:
        self.inner, self.probe = inner, probe

    def __getattr__(self, name):  # everything else is the wrapped tokenizer's (clip_l, untokenize, ...)
        if name in ("inner", "probe"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _llm_keys(self) -> list[tuple[str, object]]:
        return [(key, tok) for key, attr in LLM_ENCODERS if KINDS[key] == "bytelevel"
                and (tok := _sub_tokenizer(self.inner, attr, key)) is not None]

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        llm = self._llm_keys() if isinstance(text, str) else []
        prompt, spans = text, []
        if llm and self.probe.weight_mode != "comfy" and not kwargs.get("disable_weights", False):
            prompt, spans = parse_weighted(text)
        out = self.inner.tokenize_with_weights(prompt, return_word_ids, **kwargs)
        if not isinstance(out, dict):
            return out
        for key, attr in ENCODERS:
            chunks, tok = out.get(key), _sub_tokenizer(self.inner, attr, key)
            if isinstance(chunks, list) and tok is not None:
                words = text_word_ids(tok, text, bool(kwargs.get("disable_weights", False)))
                if words is not None:
                    self.probe.remember_text(chunks, words)
        for key, attr in LLM_ENCODERS:
            chunks, tok = out.get(key), _sub_tokenizer(self.inner, attr, key)
            if not isinstance(chunks, list) or tok is None:
                continue
            if KINDS[key] == "bytelevel":
                info = llm_text(self.inner, tok, key, chunks, prompt, kwargs)
                if spans and info.text is not None:
                    chunks = out[key] = weigh_tokens(chunks, tok, key, info, spans)
                    self.probe.attention_only.add(key)
                self.probe.remember_text(chunks, info)
            else:  # umT5, Gemma 2: sentencepiece, ComfyUI parses their weights
                words = text_word_ids(tok, text, bool(kwargs.get("disable_weights", False)))
                start = text.find(LUMINA_PROMPT_START) if key == "gemma2_2b" else -1
                if words is not None and start >= 0:  # Lumina 2's system prompt: template, not words
                    info = LLMText(text, (start + len(LUMINA_PROMPT_START), len(text)))
                    self.probe.remember_text(chunks, (words, info))
                elif words is not None:
                    self.probe.remember_text(chunks, words)
        return out

    def state_dict(self):
        return self.inner.state_dict()


def token_streams(tokens, tokenizer, present: set[str] | None, probe: ClipProbe | None = None,
                  text: str | None = None) -> list[Stream]:
    """The encoder streams of ``tokens`` (what a tokenizer returned) that reach the model's encoders, with
    the words of their text: ``text`` itself, or what ``probe``'s tokenizer remembers of these tokens."""
    streams = []
    for key, attr in ALL_ENCODERS:
        if present is not None and key not in present:
            continue
        chunks = tokens.get(key) if isinstance(tokens, dict) else None
        tok = _sub_tokenizer(tokenizer, attr, key)
        if not chunks or tok is None or not hasattr(tok, "inv_vocab"):
            continue
        if text is not None and KINDS.get(key) == "bytelevel":
            words = llm_text(tokenizer, tok, key, chunks, text)
        elif text is not None:
            words = text_word_ids(tok, text)
            start = text.find(LUMINA_PROMPT_START) if key == "gemma2_2b" else -1
            if words is not None and start >= 0:
                words = (words, LLMText(text, (start + len(LUMINA_PROMPT_START), len(text))))
        else:
            words = probe.text_words(chunks) if probe is not None else None
            if words is None and KINDS.get(key) == "bytelevel":  # not tokenized here: find the template
                words = LLMText(None, None, templates_of(tokenizer))
        info = None
        if isinstance(words, tuple) and len(words) == 2 and isinstance(words[1], LLMText):
            words, info = words
        stream = _stream(key, chunks, tok, words)
        if info is not None:
            stream = replace(stream, text=info.text, prompt=info.prompt)
        streams.append(stream)
    return streams


def layout_of(streams: list[Stream], context_length: int) -> TokenLayout | None:
    """The token layout of an encode whose conditioning has ``context_length`` positions; None when the
    streams fit no known arrangement of the context."""
    offsets = context_offsets({s.key: stream_length(s) for s in streams}, context_length)
    if offsets is None:
        return None
    return build_layout(streams, context_length, offsets)


def _labels(stream: Stream) -> list[str]:
    """One label per token: its piece, ``<start>``/``<end>``, and a chat-template token in brackets."""
    template = set(split_words(stream)[1])
    out = []
    flat = 0
    for chunk in stream.chunks:
        ended = False
        for item in chunk:
            t = item[0]
            if not isinstance(t, int):
                out.append("<emb>")
            elif t == stream.start:
                out.append("<start>")
            elif t == stream.end:
                out.append("<end>")
                ended = True
            elif ended or (stream.kind == "bytelevel" and t == stream.pad):  # CLIP-G's pad id 0 is also "!"
                out.append("<pad>")
            elif stream.kind == "bytelevel" or flat in template:
                label = piece_label(stream.pieces.get(t, str(t)), stream.kind)
                out.append(f"[{label}]" if flat in template else label)
            else:
                out.append(stream.pieces.get(t, str(t)).replace("</w>", "").replace("▁", "") or "_")
            flat += 1
    return out


class EncodeTokenWeights(Shared):
    """Object patch for ``cond_stage_model.encode_token_weights``."""

    def __init__(self, probe: ClipProbe, original, tokenizer, present: set[str] | None = None) -> None:
        self.probe, self.original, self.tokenizer = probe, original, tokenizer
        # encoders the model has: a tokenizer tokenizes for all (SD3 without T5 still gives T5 tokens,
        # padded to CLIP's length, which would otherwise pass for a T5-only context)
        self.present = present

    def __call__(self, token_weight_pairs):
        probe = self.probe
        streams = token_streams(token_weight_pairs, self.tokenizer, self.present, probe)
        for s in streams:
            if not words_from_text(s):
                why = ("its prompt text is not known here (the tokens were not made by this CLIP's tokenizer, or "
                       "the prompt names an embedding)" if s.text_words is None else
                       "its prompt text's words do not tokenize to these tokens")
                log.info("Enfoque: %s: word boundaries read from the tokens alone, as %s", s.key, why)
        weights = {}
        attention_only = {s.key for s in streams if s.key in probe.attention_only}
        if probe.weight_mode in ("attention", "both"):
            for s in streams:
                w = torch.tensor([[float(it[1]) for it in c] for c in s.chunks], dtype=torch.float32)
                if not bool(torch.isfinite(w).all()):
                    raise ValueError(
                        f"Enfoque Patch CLIP: the prompt weight {float(w[~torch.isfinite(w)][0]):g} is not a finite "
                        "number, which attention cannot apply; write weights such as (cat:1.2), 0 removes a word"
                    )
                if bool((w < 0).any()):
                    raise ValueError(
                        f"Enfoque Patch CLIP: the prompt weight {float(w.min()):g} is negative, which attention cannot "
                        "apply (it biases by log w); use weights >= 0 (0 removes a word) or weight_mode 'comfy'"
                    )
                if bool((w != 1.0).any()):
                    weights[s.key] = w
        pairs = token_weight_pairs
        # attention mode: the encode itself sees no weights; weights Enfoque parsed for an LLM encoder never
        # reach ComfyUI's encode (ComfyUI reads no weights for these encoders)
        flat = {s.key for s in streams} if probe.weight_mode == "attention" else attention_only
        if flat and isinstance(token_weight_pairs, dict):
            pairs = {k: [[(it[0], 1.0, *it[2:]) for it in c] for c in v] if k in flat else v
                     for k, v in token_weight_pairs.items()}
        probe.state = EncodeState(weights=weights, capture=probe.capture)
        try:
            out = self.original(pairs)
        finally:
            state, probe.state = probe.state, None
        cond = out[0]
        layout = layout_of(streams, int(cond.shape[1]))
        if layout is None:
            log.warning("Enfoque: could not place this encoder's tokens in the context; maps use positions")
            layout = TokenLayout.positional(int(cond.shape[1]))
        if probe.weight_mode == "comfy":
            # ComfyUI's interpolation has applied the prompt's weights to the embedding already: they do not
            # reach the diffusion model's attention as well (EnfoqueTokenWeights' weights do)
            layout = replace(layout, weights={})
        extra = dict(out[2]) if len(out) > 2 else {}
        extra[LAYOUT_KEY] = layout
        if state.capture and (state.maps or state.skipped):
            extra[RECORD_KEY] = probe.keep(
                TextRecord(layout, {s.key: _labels(s) for s in streams}, state.maps, dict(state.skipped))
            )
        return (out[0], out[1], extra)


class AttentionForward(Shared):
    """Object patch for a CLIP/T5 self-attention module's ``forward``: wraps the attention function."""

    def __init__(self, probe: ClipProbe, module: torch.nn.Module, key: str) -> None:
        self.probe, self.module, self.key = probe, module, key
        self.forward = type(module).forward
        params = list(inspect.signature(self.forward).parameters)
        self.arg_index = params.index("optimized_attention") - 1  # without self

    def __call__(self, *args, **kwargs):
        state = self.probe.state
        if state is None or (self.key not in state.weights and not state.capture):
            return self.forward(self.module, *args, **kwargs)
        if "optimized_attention" in kwargs:
            kwargs["optimized_attention"] = self._wrap(kwargs["optimized_attention"], state)
        else:
            args = list(args)
            args[self.arg_index] = self._wrap(args[self.arg_index], state)
        return self.forward(self.module, *args, **kwargs)

    def _wrap(self, func, state: EncodeState):
        def attention(q, k, v, heads, mask=None, **kw):
            rows = q.shape[0]
            skip = bool(kw.get("skip_reshape", False))  # the LLMs hand q/k/v as [B, heads, tokens, dim]
            n_k, n_q = (k.shape[2], q.shape[2]) if skip else (k.shape[1], q.shape[1])
            reweight = state.reweight(self.key, rows, n_k, q.device)
            capture = state.wants_capture(self.key, n_k, self.probe.layers.get(self.key, 1))
            caps = [Capture(slice(0, 1), torch.arange(n_k, device=q.device))] if capture else []

            def compute_out(q_, k_, v_, m_):
                return func(q_, k_, v_, heads, m_, **kw)

            # ComfyUI's SDPA backend in one call: the engine makes that call itself, as ComfyUI does (`comfy_sdpa`)
            fused = func in _PYTORCH and bool(caps) and one_sdpa_call(rows)
            with fused_route(fused):
                out, maps = attend(q, k, v, heads, mask=mask, skip_reshape=skip,
                                   skip_output_reshape=bool(kw.get("skip_output_reshape", False)),
                                   reweight=reweight, captures=caps, query_range=(0, n_q),
                                   compute_out=None if fused else compute_out)
            if maps:
                state.maps[self.key].layers.append(maps[0] / heads)
            return out

        return attention


def install(clip, weight_mode: str, capture: bool):
    """A clone of ``clip`` with instrumented encoders, and its probe. The original is untouched."""
    c = clip.clone()
    probe = ClipProbe(weight_mode, capture)
    # the clone's own attribute (CLIP.clone shares the tokenizer object, which stays as it is)
    c.tokenizer = TextTokenizer(c.tokenizer, probe)
    csm = c.cond_stage_model
    # the patcher's view, not the live module: another clone's patches may still be applied to it
    original = c.patcher.get_model_object("encode_token_weights")
    present = {key for key, attr in ALL_ENCODERS if getattr(csm, attr, None) is not None}
    c.patcher.add_object_patch("encode_token_weights", EncodeTokenWeights(probe, original, c.tokenizer.inner, present))
    found = 0
    for key, attr in ALL_ENCODERS:
        enc = getattr(csm, attr, None)
        if enc is None:
            continue
        for name, mod in enc.named_modules():
            if is_self_attention(mod):
                path = f"{attr}.{name}.forward"
                if path not in c.patcher.object_patches:
                    c.patcher.add_object_patch(path, AttentionForward(probe, mod, key))
                    probe.layers[key] = probe.layers.get(key, 0) + 1
                    found += 1
    if found == 0:
        raise ValueError(
            "Enfoque Patch CLIP: this CLIP has no text encoder Enfoque knows; supported: "
            f"{', '.join(ENCODER_NAMES.values())} (the encoders of SD1.5, SDXL, SD3/SD3.5, Flux, Flux 2, "
            "Chroma, Qwen-Image, Z-Image, Lumina 2 and Wan). Connect the CLIP of one of them"
        )
    return c, probe


def is_self_attention(mod: torch.nn.Module) -> bool:
    """A text encoder self-attention module whose ``forward`` takes the attention function ComfyUI passes
    down: CLIP's, T5's (umT5), and ComfyUI's LLM attention (Qwen, Mistral, Gemma)."""
    cls = type(mod)
    if cls.__name__ in ATTENTION_CLASSES:
        return True
    return (cls.__module__, cls.__name__) == LLM_ATTENTION and \
        "optimized_attention" in inspect.signature(cls.forward).parameters
