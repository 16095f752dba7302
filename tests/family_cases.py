"""The diffusion-model families the host tests cover, and what each test shows for them.

Pure data (no ComfyUI import): ``tests/test_families.py`` runs every case, and
``tools/support_table.py`` renders the README's support table from ``CASES`` and ``SHOWN``, so the
table says exactly what the tests cover (``tests/test_support_table.py`` checks the README against it).

Each case: the tiny model and text-encoder builders of ``tiny_models``, the empty-latent node and its
size arguments, the CFG, and the model's key in ``nodes/families.py``.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    family: str  # nodes/families.py key
    model: str  # tiny_models function building the diffusion model
    clip: str  # tiny_models function building the text encoder
    latent: str  # ComfyUI node making the empty latent
    latent_args: dict
    cfg: float
    text_encoder: str  # what the model's text encoder is (support table)
    tokenizer_note: str = ""  # where the test's tokenizer comes from, when not ComfyUI's bundled files


IMAGE = {"width": 128, "height": 96, "batch_size": 1}
VIDEO = {"width": 64, "height": 48, "length": 5, "batch_size": 1}  # 2 latent frames of 3 x 4 patches

CASES: dict[str, Case] = {c.family: c for c in (
    Case("flux2", "flux2", "clip_flux2", "EmptyFlux2LatentImage", IMAGE, 2.0, "Mistral 3 (byte-level BPE)",
         "tekken vocabulary built by the test (ComfyUI 0.8.0 cannot convert one with transformers 5)"),
    Case("qwen_image", "qwen_image", "clip_qwen_image", "EmptySD3LatentImage", IMAGE, 2.0,
         "Qwen2.5-VL (byte-level BPE)"),
    Case("z_image", "z_image", "clip_z_image", "EmptySD3LatentImage", IMAGE, 2.0, "Qwen3 (byte-level BPE)"),
    Case("chroma", "chroma", "clip_chroma", "EmptySD3LatentImage", IMAGE, 2.0, "T5-XXL (sentencepiece)"),
    Case("wan", "wan", "clip_wan", "EmptyHunyuanLatentVideo", VIDEO, 2.0, "umT5-XXL (sentencepiece)",
         "a real sentencepiece model (Pile-T5's, bundled with ComfyUI) in place of umT5's"),
    Case("lumina2", "lumina2", "clip_lumina2", "EmptySD3LatentImage", IMAGE, 2.0, "Gemma 2 (sentencepiece)",
         "a real sentencepiece model (Pile-T5's, bundled with ComfyUI) in place of Gemma's"),
)}

# what each host test of tests/test_families.py shows, per family (the support table's columns)
SHOWN = {
    "neutral": "sampling with capture on is torch.equal to stock",
    "reference": "maps equal a float64 naive softmax (1e-5)",
    "weights": "bias and scale weights act on the captured columns, only in their prompt",
    "layout": "words and template tokens match ComfyUI's tokenizer ids",
    "text_encoder": "Enfoque Patch CLIP's token x token maps of the text encoder equal a float64 reference",
}
# families whose SHOWN items the tests do not cover, and why (rendered in the table)
NOT_SHOWN: dict[tuple[str, str], str] = {}

# families whose Enfoque Patch CLIP test (an LLM encoder against a float64 reference) runs here; Chroma's T5
# and Wan's umT5 are ComfyUI's T5 class, whose maps tests/test_text_encoders.py checks on SD3's T5
TEXT_ENCODER_TESTED = ("flux2", "qwen_image", "z_image", "lumina2")

# families tests/test_model_probe.py (sampling, references, weights) and tests/test_text_encoders.py (layout,
# text encoder maps) cover, with what they show there
LEGACY: dict[str, tuple[str, tuple[str, ...]]] = {
    "sd3": ("CLIP-L, CLIP-G, T5-XXL", ("neutral", "reference", "weights", "layout", "text_encoder")),
    "flux": ("CLIP-L (pooled), T5-XXL", ("neutral", "reference", "weights", "layout")),
    "unet": ("CLIP-L (SD1.5), CLIP-L + CLIP-G (SDXL)", ("neutral", "reference", "weights")),
}

ROWS = (*CASES, *LEGACY)  # the support table's rows, in this order


def covered(family: str) -> set[str]:
    """What the tests show for a family (keys of ``SHOWN``)."""
    if family in LEGACY:
        return set(LEGACY[family][1])
    out = {"neutral", "reference", "weights", "layout"}
    if family in TEXT_ENCODER_TESTED:
        out.add("text_encoder")
    return out - {s for (f, s) in NOT_SHOWN if f == family}


def encoder_of(family: str) -> str:
    return LEGACY[family][0] if family in LEGACY else CASES[family].text_encoder
