"""EnfoqueConcepts and EnfoqueImageMaps: concept maps (ConceptAttention) and maps of an image
the user already has.

- EnfoqueConcepts encodes each concept on its own with the CLIP the model's prompts use; its
  vector is the mean of the concept's token vectors in the context (start, end and padding
  tokens left out). EnfoquePatchModel runs them as an extra stream (`concepts`).
- EnfoqueImageMaps noises a VAE-encoded latent to a fraction of the model's sigma range and
  runs the patched model once per repeat (a one-step sampler at that sigma, cfg 1), then
  averages the maps of the repeats: the prompt's cross maps and, with concepts, concept maps.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..attention.maps import AttentionMaps
from ..attention.tokens import LAYOUT_KEY, brief
from .clip_hooks import install as patch_clip
from .concepts import Concepts
from .model_hooks import AttentionOverride, ModelProbe
from .model_nodes import EnfoqueAttentionMaps
from .types import (
    ATTENTION_MAPS,
    CONCEPTS,
    IMAGE_MAPS,
    PATCH_MODEL,
    ConceptsType,
    Maps,
)

CATEGORY = "Enfoque"


def parse_concepts(text: str, node: str = CONCEPTS) -> list[str]:
    """Comma separated concept names, each once, in order."""
    if not isinstance(text, str):
        raise ValueError(f"{node}: concepts {brief(text)!r} is not text; type concepts separated by commas, "
                         "e.g. circle, square, background.")
    names = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not names:
        raise ValueError(f"{node}: concepts is empty; type concepts separated by commas, e.g. circle, square, "
                         "background.")
    return names


def encode_concepts(clip, names: list[str], node: str = CONCEPTS) -> Concepts:
    """Each concept encoded alone; its vector is the mean over its words' context positions."""
    patched, _ = patch_clip(clip, "comfy", False)  # comfy mode: the stock encode, plus the token layout
    vectors = []
    for name in names:
        cond = patched.encode_from_tokens_scheduled(patched.tokenize(name))
        context, extra = cond[0][0], cond[0][1]
        layout = extra.get(LAYOUT_KEY)
        positions = layout.positions() if layout is not None else []
        if not positions:
            raise ValueError(f"{node}: the concept {brief(name)!r} encodes to no word token; use a word or a "
                             "short phrase.")
        vectors.append(context[0, positions].float().mean(0))
    return Concepts(tuple(names), torch.stack(vectors).cpu(), encoder=type(clip.cond_stage_model).__name__)


class EnfoqueConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueConcepts",
            display_name=CONCEPTS,
            category=CATEGORY,
            description=f"Concepts for concept maps: connect to {PATCH_MODEL}'s concepts input, then read the maps "
            f"with {ATTENTION_MAPS} (kind concept) or {IMAGE_MAPS}. Each concept is encoded on its own; add a "
            "'background' concept so that pixels of nothing named have somewhere to go.",
            inputs=[
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
        return io.NodeOutput(encode_concepts(clip, parse_concepts(concepts)))


def find_probe(model, node: str = IMAGE_MAPS) -> ModelProbe:
    """The probe of the EnfoquePatchModel a MODEL came from (the outermost one)."""
    to = (getattr(model, "model_options", None) or {}).get("transformer_options", {})
    hook = to.get("optimized_attention_override")
    while hook is not None:
        if isinstance(hook, AttentionOverride):
            return hook.probe
        hook = getattr(hook, "previous", None)
    raise ValueError(f"{node}: the model is not patched by {PATCH_MODEL}; connect the MODEL output of "
                     f"{PATCH_MODEL}.")


def read_maps(probe: ModelProbe, samples: torch.Tensor, kind: str) -> AttentionMaps:
    """The maps of the run just made, as Enfoque Attention Maps reads them (its errors in this node's name)."""
    return EnfoqueAttentionMaps.read(probe, {"samples": samples}, "", kind=kind, node=IMAGE_MAPS)


def mean_maps(parts: list[AttentionMaps]) -> AttentionMaps:
    """The mean of several runs' maps of the same words."""
    first = parts[0]
    return first.derive(maps=torch.stack([p.maps for p in parts]).mean(0), repeats=len(parts))


class EnfoqueImageMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueImageMaps",
            display_name=IMAGE_MAPS,
            category=CATEGORY,
            description="Attention maps of an image you already have: VAE Encode it, connect the prompt that "
            "describes it, and this node noises the latent and runs the patched model once per repeat (no "
            f"sampler), averaging the maps. With concepts on {PATCH_MODEL} it gives concept maps too.",
            inputs=[
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
        node = IMAGE_MAPS
        probe = find_probe(model, node)
        if not probe.config.capture:
            raise ValueError(f"{node}: capture is off on {PATCH_MODEL}, so nothing is recorded; turn capture on.")
        if not 0.0 <= float(noise) <= 1.0:
            raise ValueError(f"{node}: noise {noise} is outside 0..1; set the fraction of the sigma range, e.g. 0.5.")
        if int(repeats) < 1:
            raise ValueError(f"{node}: repeats {repeats} is below 1; run the model at least once.")
        samples = latent.get("samples") if isinstance(latent, dict) else None
        if not isinstance(samples, torch.Tensor):
            raise ValueError(f"{node}: latent has no samples; connect the LATENT output of VAE Encode.")
        samples = comfy.sample.fix_empty_latent_channels(model, samples)
        ms = model.get_model_object("model_sampling")
        lo, hi = float(ms.sigma_min), float(ms.sigma_max)
        sigma = lo + float(noise) * (hi - lo)
        sigmas = torch.tensor([sigma, 0.0])
        sampler = comfy.samplers.sampler_object("euler")
        cross, concept = [], []
        bar = comfy.utils.ProgressBar(int(repeats))
        for r in range(int(repeats)):
            comfy.model_management.throw_exception_if_processing_interrupted()
            noise_t = comfy.sample.prepare_noise(samples, int(seed) + r)
            comfy.sample.sample_custom(model, noise_t, 1.0, sampler, sigmas, positive, positive, samples,
                                       disable_pbar=True, seed=int(seed) + r)
            cross.append(read_maps(probe, samples, "cross"))
            if probe.concepts is not None:
                concept.append(read_maps(probe, samples, "concept"))
            bar.update(1)
        meta = {"noise": float(noise), "sigma": sigma, "seed": int(seed)}
        maps = mean_maps(cross).derive(**meta)
        if concept:
            concept_maps = mean_maps(concept).derive(**meta)
        else:
            concept_maps = AttentionMaps(maps=maps.maps[:, :0], words=[], meta={
                **meta, "kind": "concept", "note": f"no concepts: connect {CONCEPTS} to {PATCH_MODEL}"})
        return io.NodeOutput(maps, concept_maps)
