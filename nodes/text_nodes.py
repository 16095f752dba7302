"""EnfoquePatchCLIP, EnfoqueTokenWeights and EnfoqueTextAttentionMaps."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..attention.maps import AttentionMaps
from ..attention.render import token_matrix_image
from ..attention.tokens import LAYOUT_KEY, brief, parse_word_weights
from .clip_hooks import ENCODER_NAMES, RECORD_KEY, ClipProbe, install
from .model_nodes import CATEGORY
from .types import (
    PATCH_CLIP,
    PATCH_MODEL,
    TEXT_ATTENTION_MAPS,
    TOKEN_WEIGHTS,
    ClipProbeType,
    Maps,
    listed,
)

NEEDS_PATCHED_CLIP = f"Put {PATCH_CLIP} before the text encode so the conditioning knows its words."
ENCODERS = ENCODER_NAMES  # token key -> encoder name


class EnfoquePatchCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoquePatchCLIP",
            display_name=PATCH_CLIP,
            category=CATEGORY,
            description="Instruments CLIP-L, CLIP-G, T5 and umT5, and the LLM text encoders of Flux 2, Qwen-Image, "
            "Z-Image and Lumina 2: (word:w) weights act on the encoder's self-attention keys, token x token maps "
            "are recorded, and every encode writes the prompt's token layout (chat-template tokens told apart "
            f"from the prompt's words) onto the conditioning so {PATCH_MODEL} can label maps with words and "
            "reweight them.",
            inputs=[
                io.Clip.Input("clip"),
                io.Combo.Input(
                    "weight_mode", options=["comfy", "attention", "both"], default="attention",
                    tooltip="attention: (word:w) biases the encoder's attention to that word's tokens; comfy: "
                    "ComfyUI's stock embedding interpolation; both: the two together.",
                ),
                io.Boolean.Input("capture", default=True, tooltip="Record token x token attention maps (read them with "
                                 f"{TEXT_ATTENTION_MAPS})."),
            ],
            outputs=[io.Clip.Output(), ClipProbeType.Output(display_name="probe")],
        )

    @classmethod
    def execute(cls, clip, weight_mode, capture) -> io.NodeOutput:
        if weight_mode not in ("comfy", "attention", "both"):
            raise ValueError(f"{PATCH_CLIP}: weight_mode {brief(weight_mode)!r} is not an option; options: comfy, "
                             "attention, both. Pick one of them.")
        patched, probe = install(clip, weight_mode, bool(capture))
        return io.NodeOutput(patched, probe)


def apply_word_weights(conditioning, text: str, node: str = TOKEN_WEIGHTS):
    """A copy of the conditioning whose layouts carry the weights (the original is left alone)."""
    pairs = parse_word_weights(text, node)
    out = []
    for t, d in conditioning:
        layout = d.get(LAYOUT_KEY)
        if layout is None or not layout.labelled:
            raise ValueError(f"{node}: the conditioning carries no words (it was encoded by a stock CLIP). "
                             f"{NEEDS_PATCHED_CLIP}")
        weights = {}
        for phrase, w in pairs:
            hits = layout.find(phrase)
            if not hits:
                raise ValueError(
                    f"{node}: {brief(phrase)!r} in weights is not a word of the prompt; its words: "
                    f"{listed(layout.words)}. Weigh words from these."
                )
            for i in hits:
                for p in layout.spans[i]:
                    weights[p] = w
        d = dict(d)
        d[LAYOUT_KEY] = layout.with_weights(weights)
        out.append([t, d])
    return out


class EnfoqueTokenWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueTokenWeights",
            display_name=TOKEN_WEIGHTS,
            category=CATEGORY,
            description=f"Per-word weights the diffusion model applies inside attention (needs {PATCH_MODEL} "
            f"with reweight bias or scale, and a conditioning encoded by a CLIP from {PATCH_CLIP}).",
            inputs=[
                io.Conditioning.Input("conditioning"),
                io.String.Input("weights", default="", multiline=True,
                                tooltip="word:weight pairs, e.g. 'cat:1.5, red fur:0.5'. 0 removes a word. "
                                "The chips above set them with the mouse wheel."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, weights) -> io.NodeOutput:
        return io.NodeOutput(apply_word_weights(conditioning, weights))


def _pool(matrix: torch.Tensor, spans: list[list[int]]) -> torch.Tensor:
    """Word x word mean of a token x token matrix."""
    rows = torch.stack([matrix[s].mean(0) for s in spans])
    return torch.stack([rows[:, s].mean(1) for s in spans], dim=1)


class EnfoqueTextAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueTextAttentionMaps",
            display_name=TEXT_ATTENTION_MAPS,
            category=CATEGORY,
            description="Token x token self-attention of a text encoder for one encoded prompt.",
            inputs=[
                ClipProbeType.Input("probe", tooltip=f"The probe output of {PATCH_CLIP}."),
                io.Conditioning.Input("conditioning", tooltip="The prompt encoded with that patched CLIP."),
                io.Combo.Input("encoder", options=["auto", *ENCODERS], default="auto", optional=True,
                               tooltip="Which text encoder: l = CLIP-L, g = CLIP-G, t5xxl = T5-XXL, and the LLM "
                               "and umT5 encoders of Flux 2 (mistral3_24b), Qwen-Image (qwen25_7b), Z-Image "
                               "(qwen3_4b), Lumina 2 (gemma2_2b) and Wan (umt5xxl); auto = the first one that ran "
                               "(CLIP-L, then CLIP-G, then T5-XXL, then the others)."),
                io.Int.Input("layer", default=-1, min=-1, max=128, optional=True,
                             tooltip="-1 = mean over all layers; otherwise that layer."),
                io.Combo.Input("level", options=["words", "tokens"], default="words", optional=True,
                               tooltip="words: word x word (mean of sub-tokens); tokens: every token of the chunk."),
            ],
            outputs=[Maps.Output(display_name="maps"), io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, probe, conditioning, encoder="auto", layer=-1, level="words") -> io.NodeOutput:
        node = TEXT_ATTENTION_MAPS
        if not isinstance(probe, ClipProbe):
            got = f"a probe of {PATCH_MODEL}" if getattr(probe, "kind", None) == "model" else type(probe).__name__
            raise ValueError(f"{node}: probe is {got}, not the probe of {PATCH_CLIP}; connect the probe output "
                             f"of {PATCH_CLIP}.")
        if encoder not in ("auto", *ENCODERS):
            raise ValueError(f"{node}: encoder {brief(encoder)!r} is not an option; options: auto, "
                             f"{', '.join(ENCODERS)}. Pick one of them.")
        if level not in ("words", "tokens"):
            raise ValueError(f"{node}: level {brief(level)!r} is not an option; options: words, tokens. "
                             "Pick one of them.")
        if not conditioning:
            raise ValueError(f"{node}: the conditioning is empty; connect the output of a text encode.")
        d = conditioning[0][1]
        rid = d.get(RECORD_KEY)
        if rid is None:
            raise ValueError(f"{node}: the conditioning was not encoded by the CLIP of this probe with capture on; "
                             f"connect the CLIP output of {PATCH_CLIP} to the text encode and turn capture on.")
        rec = probe.records.get(rid)
        if rec is None:
            raise ValueError(f"{node}: the maps of this encode are no longer kept (the probe keeps the last few "
                             "encodes); run the text encode again.")
        keys = [k for k in ENCODERS if k in rec.maps]
        key = keys[0] if encoder == "auto" and keys else encoder
        skipped = rec.skipped
        if key not in rec.maps and (key in skipped or (key == "auto" and skipped)):
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items() if key in ("auto", k))
            raise ValueError(f"{node}: the maps of this prompt were not recorded ({why}); shorten the prompt "
                             "to see them (the encode itself is unaffected).")
        if key not in rec.maps:
            raise ValueError(f"{node}: encoder {brief(encoder)!r} did not run for this prompt; encoders that ran: "
                             f"{listed(keys)}. Pick one of them, or auto.")
        layers = rec.maps[key].layers
        if layer >= len(layers):
            raise ValueError(f"{node}: layer {layer} is out of range; this encoder has {len(layers)} layers "
                             f"(0-{len(layers) - 1}). Pick one of them, or -1 for the mean.")
        m = (torch.stack(layers).mean(0) if layer < 0 else layers[layer])[0].float().cpu()  # first chunk [T, T]
        layout = rec.layout
        enc_spans = layout.encoder_spans.get(key, [])
        t = m.shape[0]
        if level == "words":
            pairs = [(w, [i for i in s if i < t]) for w, s in zip(layout.words, enc_spans, strict=False)]
            pairs = [(w, s) for w, s in pairs if s]
            if not pairs:
                raise ValueError(f"{node}: the prompt has no words in encoder {key!r} (an empty prompt?); give it "
                                 "words, or set level to tokens.")
            labels = [w for w, _ in pairs]
            matrix = _pool(m, [s for _, s in pairs])
        else:
            labels = rec.labels.get(key, [])[:t]
            matrix = m
        meta = {"kind": "text", "encoder": key, "layer": int(layer), "level": level, "words": labels,
                "normalisation": "none (attention probability, mean over heads)"}
        maps = AttentionMaps(maps=matrix[None, :, None, :].contiguous(), words=labels, meta=meta)
        return io.NodeOutput(maps, token_matrix_image(matrix, labels))
