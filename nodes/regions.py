"""Enfoque Region: words of a prompt confined to a mask, inside the patched model's attention."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..attention.formats import brief
from ..attention.selection import parse_items, picked
from .common.errors import not_a_word
from .common.graph import downstream_with_model, model_passes_through
from .common.notify import notify
from .model_patch import regions as model_regions
from .model_patch.regions import RegionSpec, with_region
from .names import PATCH_CLIP, PATCH_MODEL, REGION
from .sockets import schema

log = logging.getLogger(__name__)


def region_of(layout, mask: torch.Tensor, words: str, strength: float, start: float, end: float,
              node_id: str | None) -> RegionSpec:
    """The region of one conditioning entry: the positions of the words it names (its special tokens too where
    it names them: ``<end>``, ``<pad>``), or, when ``words`` is empty, of all its words."""
    items = parse_items(words)
    labels, spans = layout.labelled_spans()  # the words, then <start>, <end>, <pad>, ... of each encoder
    chosen = [picked(labels, item) for item in items]
    missing = [item.text for item, hits in zip(items, chosen, strict=True) if not hits]
    if missing and not layout.labelled:
        raise ValueError(f"{REGION}: {brief(missing[0])!r} in words: the prompt was encoded by a stock CLIP, so it "
                         f"has no words (only positions #0, #1, ...); put {PATCH_CLIP} before the text encode, name "
                         "positions such as #3, or leave words empty for all of them.")
    if missing:
        raise not_a_word(REGION, missing[0], "words", "a word of the prompt", layout.words, "its words",
                         "Pick words from these, or leave words empty for all of them.")
    indices = [i for hits in chosen for i in hits] if items else range(len(layout.words))
    positions = list(dict.fromkeys(p for i in indices for p in spans[i]))
    return RegionSpec(mask, tuple(positions), float(strength), float(start), float(end),
                      (words or "").strip(), node_id, model_regions.WORDS_SEE_MASK)


def unpatched_samplers(prompt: dict | None, node_id: str | None) -> list[str]:
    """The samplers this node's conditioning reaches whose model no Enfoque Patch Model patched."""
    if not isinstance(prompt, dict) or node_id is None or str(node_id) not in prompt:
        return []
    return [f"{prompt[n].get('class_type')} (node {n})" for n in downstream_with_model(prompt, str(node_id))
            if not model_passes_through(prompt, n, "EnfoquePatchModel")]


class EnfoqueRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueRegion", inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt whose words the region confines."),
                io.Mask.Input("mask", tooltip="Where the words may be drawn (white). A batch of masks: one per "
                              "latent frame of a video."),
                io.String.Input("words", default="", tooltip="Words of that prompt, comma separated, as every words "
                                "input reads them (<end>, <pad> name its end and padding tokens); empty = all its "
                                "words."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1: outside the mask the image does not attend to these words at all; 0: no "
                               "effect; between: the words are that much weaker outside. In joint-attention models (SD3, "
                               "Flux, ...) the words in turn see the image inside the mask only."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Start of the step window, as in ComfyUI's own nodes."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="End of the step window, as in ComfyUI's own nodes."),
            ],
            outputs=[io.Conditioning.Output()],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, conditioning, mask, words, strength, start_percent, end_percent) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden else None
        m = torch.as_tensor(mask).detach().to("cpu", torch.float32)
        m = (m[None] if m.ndim == 2 else m).clamp(0.0, 1.0)
        if m.ndim != 3 or m.numel() == 0:
            raise ValueError(f"{REGION}: mask of shape {tuple(m.shape)} is not a MASK; connect a mask (e.g. Load "
                             "Image's mask, Solid Mask, or Enfoque Maps To Mask).")
        if not bool((m > 0).any()):
            raise ValueError(f"{REGION}: the mask is empty (all 0), so {brief(words or 'the prompt')!r} could be "
                             "drawn nowhere; paint the region white, or set strength to 0.")
        if not 0.0 <= float(start_percent) <= float(end_percent) <= 1.0:
            raise ValueError(f"{REGION}: start_percent {start_percent} is after end_percent {end_percent}; set "
                             "start_percent to at most end_percent (both between 0 and 1).")
        out = with_region(conditioning, lambda layout: region_of(layout, m, words, strength, start_percent,
                                                                 end_percent, node_id))
        lost = unpatched_samplers(cls.hidden.prompt if cls.hidden else None, node_id)
        text = ""
        if lost:
            text = (f"{REGION}: {', '.join(lost)} samples with a model that {PATCH_MODEL} did not patch, so the "
                    f"region does nothing there; put {PATCH_MODEL} on that model.")
            log.warning(text)
        notify(node_id, text)
        return io.NodeOutput(out)
