"""Enfoque Patch CLIP, Enfoque Token Weights and Enfoque Text Attention Maps: the text encoders."""

from __future__ import annotations

from comfy_api.latest import io

from ..attention.render import token_matrix_image
from .clip_patch.encoders import ENCODERS
from .clip_patch.install import WEIGHT_MODES, install
from .clip_patch.readout import LEVELS, read_text_maps
from .clip_patch.weights import apply_word_weights
from .common.errors import check_option
from .names import PATCH_CLIP, TEXT_ATTENTION_MAPS, TOKEN_WEIGHTS
from .sockets import ClipProbeType, Maps, schema


class EnfoquePatchCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoquePatchCLIP", inputs=[
                io.Clip.Input("clip"),
                io.Combo.Input(
                    "weight_mode", options=list(WEIGHT_MODES), default="attention",
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
        check_option(PATCH_CLIP, "weight_mode", weight_mode, WEIGHT_MODES)
        patched, probe = install(clip, weight_mode, bool(capture))
        return io.NodeOutput(patched, probe)


class EnfoqueTokenWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueTokenWeights", inputs=[
                io.Conditioning.Input("conditioning"),
                io.String.Input("weights", default="", multiline=True,
                                tooltip="word:weight pairs, e.g. 'cat:1.5, red fur:0.5'. 0 removes a word; a repeated "
                                "word is weighted everywhere, word#2 only the second time. The chips above set "
                                "them with the mouse wheel."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, weights) -> io.NodeOutput:
        return io.NodeOutput(apply_word_weights(conditioning, weights, TOKEN_WEIGHTS))


class EnfoqueTextAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueTextAttentionMaps", inputs=[
                ClipProbeType.Input("probe", tooltip=f"The probe output of {PATCH_CLIP}."),
                io.Conditioning.Input("conditioning", tooltip="The prompt encoded with that patched CLIP."),
                io.Combo.Input("encoder", options=["auto", *ENCODERS], default="auto", optional=True,
                               tooltip="Which text encoder: l = CLIP-L, g = CLIP-G, t5xxl = T5-XXL, and the LLM "
                               "and umT5 encoders of Flux 2 (mistral3_24b), Qwen-Image (qwen25_7b), Z-Image "
                               "(qwen3_4b), Lumina 2 (gemma2_2b) and Wan (umt5xxl); auto = the first one that ran "
                               "(CLIP-L, then CLIP-G, then T5-XXL, then the others)."),
                io.Int.Input("layer", default=-1, min=-1, max=128, optional=True,
                             tooltip="-1 = mean over all layers; otherwise that layer."),
                io.Combo.Input("level", options=list(LEVELS), default="words", optional=True,
                               tooltip="words: word x word (mean of sub-tokens); tokens: every token of the chunk."),
            ],
            outputs=[Maps.Output(display_name="maps"), io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, probe, conditioning, encoder="auto", layer=-1, level="words") -> io.NodeOutput:
        maps, matrix = read_text_maps(probe, conditioning, encoder, layer, level, TEXT_ATTENTION_MAPS)
        return io.NodeOutput(maps, token_matrix_image(matrix, maps.words))
