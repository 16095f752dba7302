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
"""

from __future__ import annotations

import inspect
import logging
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
    context_offsets,
    stream_length,
    words_from_text,
)
from .probe_types import Shared

log = logging.getLogger(__name__)

RECORD_KEY = "enfoque_text_record"
ENCODERS = (("l", "clip_l"), ("g", "clip_g"), ("t5xxl", "t5xxl"))
ATTENTION_CLASSES = ("CLIPAttention", "T5Attention")
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


class ClipProbe(Shared):
    """ENFOQUE_PROBE from EnfoquePatchCLIP: the last few encodes' token x token maps."""

    kind = "clip"

    def __init__(self, weight_mode: str, capture: bool) -> None:
        self.weight_mode = weight_mode
        self.capture = capture
        self.state: EncodeState | None = None
        self.records: OrderedDict[str, TextRecord] = OrderedDict()
        self.layers: dict[str, int] = {}  # attention layers per encoder
        # id(token list) -> (that list, its text's words as token ids), newest last
        self.texts: OrderedDict[int, tuple[list, tuple[tuple[int, ...], ...]]] = OrderedDict()

    def remember_text(self, chunks: list, words: tuple[tuple[int, ...], ...]) -> None:
        self.texts[id(chunks)] = (chunks, words)
        self.texts.move_to_end(id(chunks))
        while len(self.texts) > MAX_TEXTS:
            self.texts.popitem(last=False)

    def text_words(self, chunks) -> tuple[tuple[int, ...], ...] | None:
        """The text words of a token list this probe's tokenizer returned (the very same list object)."""
        hit = self.texts.get(id(chunks))
        return hit[1] if hit is not None and hit[0] is chunks else None

    def keep(self, record: TextRecord) -> str:
        rid = uuid.uuid4().hex
        self.records[rid] = record
        while len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)
        return rid


def _sub_tokenizer(tokenizer, attr: str, key: str):
    return getattr(tokenizer, attr, None) or getattr(tokenizer, key, None)


def _stream(key: str, chunks: list, tok, text_words=None) -> Stream:
    kind = "sentencepiece" if key.startswith("t5") else "bpe"
    return Stream(key=key, chunks=chunks, pieces=tok.inv_vocab, kind=kind,
                  start=getattr(tok, "start_token", None), end=getattr(tok, "end_token", None),
                  text_words=text_words)


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

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        out = self.inner.tokenize_with_weights(text, return_word_ids, **kwargs)
        if isinstance(out, dict):
            for key, attr in ENCODERS:
                chunks, tok = out.get(key), _sub_tokenizer(self.inner, attr, key)
                if isinstance(chunks, list) and tok is not None:
                    words = text_word_ids(tok, text, bool(kwargs.get("disable_weights", False)))
                    if words is not None:
                        self.probe.remember_text(chunks, words)
        return out

    def state_dict(self):
        return self.inner.state_dict()


def token_streams(tokens, tokenizer, present: set[str] | None, probe: ClipProbe | None = None,
                  text: str | None = None) -> list[Stream]:
    """The encoder streams of ``tokens`` (what a tokenizer returned) that reach the model's encoders, with
    the words of their text: ``text`` itself, or what ``probe``'s tokenizer remembers of these tokens."""
    streams = []
    for key, attr in ENCODERS:
        if present is not None and key not in present:
            continue
        chunks = tokens.get(key) if isinstance(tokens, dict) else None
        tok = _sub_tokenizer(tokenizer, attr, key)
        if chunks and tok is not None and hasattr(tok, "inv_vocab"):
            if text is not None:
                words = text_word_ids(tok, text)
            else:
                words = probe.text_words(chunks) if probe is not None else None
            streams.append(_stream(key, chunks, tok, words))
    return streams


def layout_of(streams: list[Stream], context_length: int) -> TokenLayout | None:
    """The token layout of an encode whose conditioning has ``context_length`` positions; None when the
    streams fit no known arrangement of the context."""
    offsets = context_offsets({s.key: stream_length(s) for s in streams}, context_length)
    if offsets is None:
        return None
    return build_layout(streams, context_length, offsets)


def _labels(stream: Stream) -> list[str]:
    out = []
    for chunk in stream.chunks:
        for item in chunk:
            t = item[0]
            if not isinstance(t, int):
                out.append("<emb>")
            elif t == stream.start:
                out.append("<start>")
            elif t == stream.end:
                out.append("<end>")
            else:
                out.append(stream.pieces.get(t, str(t)).replace("</w>", "").replace("▁", "") or "_")
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
        if probe.weight_mode in ("attention", "both"):
            for s in streams:
                w = torch.tensor([[float(it[1]) for it in c] for c in s.chunks], dtype=torch.float32)
                if not bool(torch.isfinite(w).all()):
                    raise ValueError(
                        "Enfoque Patch CLIP: a prompt weight is not a number (nan or inf), which attention cannot "
                        "apply; write weights such as (cat:1.2), 0 removes a word"
                    )
                if bool((w < 0).any()):
                    raise ValueError(
                        f"Enfoque Patch CLIP: the prompt weight {float(w.min()):g} is negative, which attention cannot "
                        "apply (it biases by log w); use weights >= 0 (0 removes a word) or weight_mode 'comfy'"
                    )
                if bool((w != 1.0).any()):
                    weights[s.key] = w
        pairs = token_weight_pairs
        if probe.weight_mode == "attention" and isinstance(token_weight_pairs, dict):
            pairs = {k: [[(it[0], 1.0, *it[2:]) for it in c] for c in v] if k in {s.key for s in streams} else v
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
            reweight = state.reweight(self.key, rows, k.shape[1], q.device)
            capture = state.wants_capture(self.key, k.shape[1], self.probe.layers.get(self.key, 1))
            caps = [Capture(slice(0, 1), torch.arange(k.shape[1], device=q.device))] if capture else []

            def compute_out(q_, k_, v_, m_):
                return func(q_, k_, v_, heads, m_, **kw)

            out, maps = attend(q, k, v, heads, mask=mask, reweight=reweight, captures=caps,
                               query_range=(0, q.shape[1]),
                               compute_out=None if (func in _PYTORCH and caps) else compute_out)
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
    present = {key for key, attr in ENCODERS if getattr(csm, attr, None) is not None}
    c.patcher.add_object_patch("encode_token_weights", EncodeTokenWeights(probe, original, c.tokenizer.inner, present))
    found = 0
    for key, attr in ENCODERS:
        enc = getattr(csm, attr, None)
        if enc is None:
            continue
        for name, mod in enc.named_modules():
            if type(mod).__name__ in ATTENTION_CLASSES:
                path = f"{attr}.{name}.forward"
                if path not in c.patcher.object_patches:
                    c.patcher.add_object_patch(path, AttentionForward(probe, mod, key))
                    probe.layers[key] = probe.layers.get(key, 0) + 1
                    found += 1
    if found == 0:
        raise ValueError(
            "Enfoque Patch CLIP: this CLIP has no CLIP-L, CLIP-G or T5 encoder Enfoque knows; "
            "supported: the encoders of SD1.5, SDXL, SD3/SD3.5 and Flux"
        )
    return c, probe
