"""Enfoque Concepts and Enfoque Image Maps: concept maps (ConceptAttention) and maps of an image the
user already has."""

from __future__ import annotations

from comfy_api.latest import io

from ..attention.formats import brief
from ..attention.selection import parse_items
from .model_patch.concepts import encode_concepts
from .model_patch.image_maps import explain
from .names import CONCEPTS, IMAGE_MAPS, PATCH_MODEL
from .sockets import ConceptsType, Maps, schema


def parse_concepts(text: str, node: str = CONCEPTS) -> list[str]:
    """Comma separated concept names, each once (by the pack's word rule), in order."""
    if not isinstance(text, str):
        raise ValueError(f"{node}: concepts {brief(text)!r} is not text; type concepts separated by commas, "
                         "e.g. circle, square, background.")
    names = [item.text for item in parse_items(text)]
    if not names:
        raise ValueError(f"{node}: concepts is empty; type concepts separated by commas, e.g. circle, square, "
                         "background.")
    return names


class EnfoqueConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueConcepts", inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model's prompts (the same CLIP)."),
                io.String.Input("concepts", default="", tooltip="Concepts, comma separated, e.g. circle, square, "
                                "background."),
            ],
            outputs=[ConceptsType.Output(display_name="concepts")],
        )

    @classmethod
    def execute(cls, clip, concepts) -> io.NodeOutput:
        if clip is None or not hasattr(clip, "tokenize"):
            raise ValueError(f"{CONCEPTS}: clip is {type(clip).__name__}, not a CLIP; connect the CLIP that "
                             "encodes the model's prompts.")
        return io.NodeOutput(encode_concepts(clip, parse_concepts(concepts), CONCEPTS))


class EnfoqueImageMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueImageMaps", inputs=[
                io.Model.Input("model", tooltip=f"The MODEL output of {PATCH_MODEL} (capture on)."),
                io.Conditioning.Input("positive", tooltip="The prompt whose words are mapped."),
                io.Latent.Input("latent", tooltip="The image to explain, from VAE Encode."),
                io.Float.Input("noise", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="How far to noise the latent: the fraction of the model's sigma range "
                               "(0 = its lowest sigma, 1 = pure noise)."),
                io.Int.Input("repeats", default=4, min=1, max=64,
                             tooltip="Model runs with different noise; their maps are averaged."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the first repeat's noise; repeat r uses seed + r."),
            ],
            outputs=[Maps.Output(display_name="maps"), Maps.Output(display_name="concept_maps")],
        )

    @classmethod
    def execute(cls, model, positive, latent, noise, repeats, seed) -> io.NodeOutput:
        return io.NodeOutput(*explain(model, positive, latent, noise, repeats, seed, IMAGE_MAPS))
