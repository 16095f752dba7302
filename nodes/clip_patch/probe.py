"""ENFOQUE_CLIP_PROBE: what Enfoque Patch CLIP records. It remembers, for the token lists its tokenizer
returned, the words of their prompt text (CLIP's tokens alone do not keep word boundaries), and keeps
the token x token maps of the last few encodes. An encode's `EncodeState` is what the attention
patches of that encode share."""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ...attention.engine import Reweight
from ...attention.layout import TokenLayout
from ..common.clones import SharedByClones

log = logging.getLogger(__name__)

RECORD_KEY = "enfoque_text_record"  # conditioning key: which of a probe's records an encode wrote
MAX_RECORDS = 8
MAX_TEXTS = 64  # token lists whose prompt text a probe remembers
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



class ClipProbe(SharedByClones):
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
        record_id = uuid.uuid4().hex
        self.records[record_id] = record
        while len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)
        return record_id
