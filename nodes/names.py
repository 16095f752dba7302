"""What users read about the pack's nodes: display names, the category and descriptions, from here.

Errors, notices and tooltips name a node as the canvas shows it; the frontend reads the same
table from ``GET /enfoque/info`` (`routes`). Pure Python, so the machinery can name nodes too.
"""

from __future__ import annotations

CATEGORY = "Enfoque"

# node id -> display name
DISPLAY_NAMES = {
    "EnfoquePatchModel": "Enfoque Patch Model",
    "EnfoqueAttentionMaps": "Enfoque Attention Maps",
    "EnfoquePatchCLIP": "Enfoque Patch CLIP",
    "EnfoqueTokenWeights": "Enfoque Token Weights",
    "EnfoqueTextAttentionMaps": "Enfoque Text Attention Maps",
    "EnfoqueHeatmaps": "Enfoque Heatmaps",
    "EnfoqueMapsToMask": "Enfoque Maps To Mask",
    "EnfoqueSaveAttentionMaps": "Enfoque Save Attention Maps",
    "EnfoqueLoadAttentionMaps": "Enfoque Load Attention Maps",
    "EnfoqueConcepts": "Enfoque Concepts",
    "EnfoqueImageMaps": "Enfoque Image Maps",
    "EnfoqueRegion": "Enfoque Region",
}

PATCH_MODEL = DISPLAY_NAMES["EnfoquePatchModel"]
ATTENTION_MAPS = DISPLAY_NAMES["EnfoqueAttentionMaps"]
PATCH_CLIP = DISPLAY_NAMES["EnfoquePatchCLIP"]
TOKEN_WEIGHTS = DISPLAY_NAMES["EnfoqueTokenWeights"]
TEXT_ATTENTION_MAPS = DISPLAY_NAMES["EnfoqueTextAttentionMaps"]
HEATMAPS = DISPLAY_NAMES["EnfoqueHeatmaps"]
MAPS_TO_MASK = DISPLAY_NAMES["EnfoqueMapsToMask"]
SAVE_MAPS = DISPLAY_NAMES["EnfoqueSaveAttentionMaps"]
LOAD_MAPS = DISPLAY_NAMES["EnfoqueLoadAttentionMaps"]
CONCEPTS = DISPLAY_NAMES["EnfoqueConcepts"]
IMAGE_MAPS = DISPLAY_NAMES["EnfoqueImageMaps"]
REGION = DISPLAY_NAMES["EnfoqueRegion"]

# the socket type of each probe, and the node whose probe it is (the frontend names a refused link by it)
PROBE_SOCKETS = {"ENFOQUE_MODEL_PROBE": "EnfoquePatchModel", "ENFOQUE_CLIP_PROBE": "EnfoquePatchCLIP"}


# node id -> what the node does, as its schema (and the canvas) says
DESCRIPTIONS = {
    "EnfoquePatchModel": (
        "Instruments the diffusion model's attention: exact per-word attention maps (read them "
        f"with {ATTENTION_MAPS}) and word weights that act inside attention (from the prompt's (word:1.2) "
        f"or from {TOKEN_WEIGHTS})."
    ),
    "EnfoqueAttentionMaps": (
        f"Per-word attention maps of the last sampling run of a model patched by {PATCH_MODEL}."
    ),
    "EnfoquePatchCLIP": (
        "Instruments CLIP-L, CLIP-G, T5 and umT5, and the LLM text encoders of Flux 2, Qwen-Image, "
        "Z-Image and Lumina 2: (word:w) weights act on the encoder's self-attention keys, token x token maps "
        "are recorded, and every encode writes the prompt's token layout (chat-template tokens told apart "
        f"from the prompt's words) onto the conditioning so {PATCH_MODEL} can label maps with words and "
        "reweight them."
    ),
    "EnfoqueTokenWeights": (
        f"Per-word weights the diffusion model applies inside attention (needs {PATCH_MODEL} "
        f"with reweight bias or scale, and a conditioning encoded by a CLIP from {PATCH_CLIP})."
    ),
    "EnfoqueTextAttentionMaps": (
        "Token x token self-attention of a text encoder for one encoded prompt."
    ),
    "EnfoqueConcepts": (
        f"Concepts for concept maps: connect to {PATCH_MODEL}'s concepts input, then read the maps "
        f"with {ATTENTION_MAPS} (kind concept) or {IMAGE_MAPS}. Each concept is encoded on its own; add a "
        "'background' concept so that pixels of nothing named have somewhere to go."
    ),
    "EnfoqueImageMaps": (
        "Attention maps of an image you already have: VAE Encode it, connect the prompt that "
        "describes it, and this node noises the latent and runs the patched model once per repeat (no "
        f"sampler), averaging the maps. With concepts on {PATCH_MODEL} it gives concept maps too."
    ),
    "EnfoqueHeatmaps": (
        "One captioned heatmap per word ('cat 23%': its share of the attention over the words "
        "shown), laid out in a grid; blended over the image when one is connected. With over = steps or "
        "blocks, one such picture per sampling step or per block: an IMAGE batch that Save Animated WEBP "
        "turns into an animation."
    ),
    "EnfoqueMapsToMask": (
        "Thresholds the attention of the chosen words into a MASK at the image size. Several words "
        "are combined by a max: a pixel is in the mask if any of them attends there."
    ),
    "EnfoqueSaveAttentionMaps": (
        "Saves the maps with their words and provenance: safetensors or npz (tensor 'maps' "
        "[batch, words, H, W] float32 + JSON metadata, exact), or 16-bit PNGs with a JSON sidecar "
        "(within 1/131070 of each map's range). Never overwrites a file."
    ),
    "EnfoqueLoadAttentionMaps": (
        f"Loads attention maps saved by {SAVE_MAPS} from ComfyUI's input folder "
        "(subfolders included): .safetensors, .npz, or the .json sidecar of a PNG set."
    ),
    "EnfoqueRegion": (
        "Confines words of a prompt to a mask, inside the diffusion model's attention: outside the mask the "
        f"image does not attend to them (strength 1), so what they describe is drawn inside it. Needs a model "
        f"patched by {PATCH_MODEL}; chain several regions, on the negative prompt too."
    ),
}
