"""The diffusion-model families the model probe knows: how each is recognised, which official hook
tells the attention override where it is, and where the prompt's text sits in its attention calls.

One `Family` per entry of `FAMILIES`. What differs between families lives here, so the probe's
lifecycle (`probe`) and the plan of an attention call (`plan`) stay the same for all:

- `detect`: the family of a loaded MODEL (by ComfyUI's model class), or a ValueError that says why
  it is refused (unknown, or known but not supported, with the reason);
- `block_count` / `install_blocks`: the blocks and the hook that marks them. ``dit``: ComfyUI's
  ``patches_replace["dit"][("double_block", i)]`` / ``("single_block", i)`` block replaces (SD3,
  Flux, Flux 2, Chroma, Qwen-Image, Wan); ``block_index``: no block replace exists
  (NextDiT: Lumina 2, Z-Image), so the attention override reads ``transformer_options["block_index"]``
  and ``["block_type"]``, which ComfyUI sets for every main layer, and the sequence lengths;
  ``attn2``: UNet cross-attention replaces;
- `dit_site` / `option_site`: the `Site` of an attention call (block, text length, where the text
  and the image queries sit among its keys and queries);
- `placement`: where a conditioning of its own length lands in the text the model attends to
  (Flux 2 left-pads shorter contexts to 512 tokens);
- `Text` / `TEXTS`: how each family's prompts are encoded (tokenizer, the encoders in its context,
  the CLIP loader types and encode nodes that name it), for ``/enfoque/tokenize`` and the frontend.

docs/families.md has one table per family with the text's place in its attention.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ..names import PATCH_MODEL as NODE
from .state import CallState, Site


@dataclass(frozen=True)
class Text:
    """How prompts of a family are encoded, for ``/enfoque/tokenize`` and the frontend's word chips.

    ``tokenizer``: ComfyUI's tokenizer class (module, name), None where the tokenizer comes inside the
    text-encoder file (the words are then the prompt's words, `attention.words.text_words`);
    ``encoders``: the token keys whose tokens reach the diffusion model's context; ``clip_types``: the
    ``type`` of ComfyUI's CLIP loaders that loads such an encoder; ``nodes``: ComfyUI's nodes (text
    encodes, loaders) that only this family uses."""

    key: str
    tokenizer: tuple[str, str] | None
    encoders: tuple[str, ...]
    clip_types: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    key: str  # stable id, written into exports as model_family
    label: str  # what users call it
    hook: str  # "dit" | "block_index" | "attn2"
    attention: str  # "joint": text and image keys in one attention; "cross": image queries, text keys
    texts: tuple[Text, ...]  # how its prompts are encoded (SD1.5 and SDXL share the UNet family)
    doubles: str = ""  # the diffusion model's attribute with its double / joint blocks
    singles: str = ""  # ... and with its single-stream blocks
    pad_context_to: int = 0  # the model left-pads a shorter context to this many tokens (Flux 2)


FAMILIES: dict[str, Family] = {f.key: f for f in (
    Family("sd3", "SD3 / SD3.5 (MMDiT)", "dit", "joint",
           (Text("sd3", ("comfy.text_encoders.sd3_clip", "SD3Tokenizer"), ("l", "g", "t5xxl"), ("sd3",),
                 ("CLIPTextEncodeSD3", "TripleCLIPLoader")),),
           doubles="joint_blocks"),
    Family("flux", "Flux.1", "dit", "joint",
           (Text("flux", ("comfy.text_encoders.flux", "FluxTokenizer"), ("l", "t5xxl"), ("flux",),
                 ("CLIPTextEncodeFlux",)),),
           doubles="double_blocks", singles="single_blocks"),
    Family("flux2", "Flux 2", "dit", "joint", (Text("flux2", None, ("mistral3_24b",), ("flux2",)),),
           doubles="double_blocks", singles="single_blocks", pad_context_to=512),
    Family("chroma", "Chroma", "dit", "joint",
           (Text("chroma", ("comfy.text_encoders.pixart_t5", "PixArtTokenizer"), ("t5xxl",), ("chroma",)),),
           doubles="double_blocks", singles="single_blocks"),
    Family("qwen_image", "Qwen-Image", "dit", "joint",
           (Text("qwen_image", ("comfy.text_encoders.qwen_image", "QwenImageTokenizer"), ("qwen25_7b",),
                 ("qwen_image",), ("TextEncodeQwenImageEdit", "TextEncodeQwenImageEditPlus")),),
           doubles="transformer_blocks"),
    # Z-Image's Qwen3 and Lumina 2's Gemma 2 both load with CLIPLoader type lumina2; their words are the
    # prompt's words either way
    Family("z_image", "Z-Image", "block_index", "joint",
           (Text("z_image", ("comfy.text_encoders.z_image", "ZImageTokenizer"), ("qwen3_4b",)),),
           doubles="layers"),
    Family("lumina2", "Lumina 2", "block_index", "joint",
           (Text("lumina2", None, ("gemma2_2b",), ("lumina2",), ("CLIPTextEncodeLumina2",)),), doubles="layers"),
    Family("wan", "Wan 2.1 / 2.2", "dit", "cross", (Text("wan", None, ("umt5xxl",), ("wan",)),), doubles="blocks"),
    Family("unet", "SD1.5 / SDXL (UNet)", "attn2", "cross",
           (Text("sd15", ("comfy.sd1_clip", "SD1Tokenizer"), ("l",), ("stable_diffusion",)),
            Text("sdxl", ("comfy.sdxl_clip", "SDXLTokenizer"), ("l", "g"), ("sdxl",),
                 ("CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner")))),
)}

# every way prompts are encoded, by key (what /enfoque/tokenize's "family" names)
TEXTS: dict[str, Text] = {t.key: t for f in FAMILIES.values() for t in f.texts}

# the families a user sees listed, in the order of the README's support table
LISTED = ("flux2", "qwen_image", "z_image", "chroma", "wan", "lumina2", "sd3", "flux", "unet")

# known families Enfoque does not instrument yet, and why (the refusal says so)
REFUSED = {
    "HiDream": "HiDream's blocks have neither block replaces nor a block index in transformer_options, and "
               "its Llama 3 tokenizer is not bundled with ComfyUI",
    "ChromaRadiance": "Chroma Radiance works in pixel space with its own final blocks, which Enfoque has not "
                      "been tested on",
    "HunyuanImage21": "HunyuanImage 2.1 is not instrumented yet",
}


def supported() -> str:
    """The supported families, for descriptions and errors."""
    return ", ".join(FAMILIES[k].label for k in LISTED)


def _names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def detect(model) -> tuple[Family, Any]:
    """The family of a ComfyUI MODEL and its diffusion network; a ValueError for any other model."""
    network = model.get_model_object("diffusion_model")
    classes = _names(network)
    base = _names(getattr(model, "model", None))
    for name, why in REFUSED.items():
        if name in base:
            raise ValueError(f"{NODE}: {name} is not supported: {why}. Supported families: {supported()}. "
                             "Connect a model of one of them.")
    if "MMDiT" in classes and type(network).__module__.endswith("diffusionmodules.mmdit"):  # AuraFlow's is another MMDiT
        return FAMILIES["sd3"], network
    if "Chroma" in base and hasattr(network, "double_blocks"):
        return FAMILIES["chroma"], network
    if "Flux" in classes and hasattr(network, "double_blocks"):
        flux2 = "Flux2" in base or bool(getattr(getattr(network, "params", None), "global_modulation", False))
        return FAMILIES["flux2" if flux2 else "flux"], network
    if "QwenImageTransformer2DModel" in classes:
        return FAMILIES["qwen_image"], network
    if "NextDiT" in classes:
        return FAMILIES["z_image" if getattr(network, "pad_tokens_multiple", None) else "lumina2"], network
    if type(network).__name__ == "WanModel":  # text-to-video and image-to-video; not VACE, camera, S2V, ...
        return FAMILIES["wan"], network
    if "UNetModel" in classes:
        return FAMILIES["unet"], network
    raise ValueError(f"{NODE}: the model {type(network).__name__} is not supported yet; supported families: "
                     f"{supported()}. Connect a model of one of them.")


def patch_size(family: Family, network) -> tuple[int, int, int]:
    """(frames, height, width) of one image token, in latent cells."""
    if family.hook == "attn2":
        return (1, 1, 1)
    ps = getattr(network, "patch_size", 2) or 2
    if isinstance(ps, int):
        return (1, ps, ps)
    ps = tuple(int(p) for p in ps)
    return (1, *ps) if len(ps) == 2 else ps[-3:]


def _blocks(network, attr: str) -> list:
    return list(getattr(network, attr, None) or []) if attr else []


def unet_attn2_sites(network) -> list[tuple[str, int, int]]:
    """(block_name, number, transformer_index) of every cross-attention, in forward order."""
    sites = []
    for name, blocks in (("input", network.input_blocks), ("middle", [network.middle_block]), ("output", network.output_blocks)):
        for number, block in enumerate(blocks):
            for mod in block:
                tbs = getattr(mod, "transformer_blocks", None)
                if tbs is None:
                    continue
                for t, tb in enumerate(tbs):
                    if getattr(tb, "attn2", None) is not None:
                        sites.append((name, number, t))
    return sites


def block_count(family: Family, network) -> int:
    if family.hook == "attn2":
        return len(unet_attn2_sites(network))
    return len(_blocks(network, family.doubles)) + len(_blocks(network, family.singles))


def install_blocks(family: Family, m, network, make_replace) -> None:
    """Set a ``dit`` block replace on every block of a ``dit`` family: ``make_replace(index, single,
    previous)`` gives it, chained to the replace another pack set there before."""
    if family.hook != "dit":
        return
    dit = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    doubles = len(_blocks(network, family.doubles))
    for i in range(doubles):
        m.set_model_patch_replace(make_replace(i, False, dit.get(("double_block", i))), "dit", "double_block", i)
    for i in range(len(_blocks(network, family.singles))):
        m.set_model_patch_replace(make_replace(doubles + i, True, dit.get(("single_block", i))), "dit",
                                  "single_block", i)


def placement(family: Family, length: int) -> tuple[int, int]:
    """(length in the model, offset of its first token) of a conditioning of ``length`` context tokens."""
    pad = family.pad_context_to
    if pad and length < pad:
        return pad, pad - length
    return length, 0


def dit_site(family: Family, index: int, single: bool, args: dict, state: CallState) -> Site | None:
    """The site a ``dit`` block replace hands the attention calls of its block."""
    if family.attention == "cross":  # Wan: cross-attention to the text of this model call
        if state.context_len is None:
            return None
        return Site(index, state.context_len, None, cross_in_block=True)
    if not single:
        txt = int(args["txt"].shape[1])
        img = int(args["img"].shape[1])
        state.txt_len = txt
        return Site(index, txt, txt + img)
    if state.txt_len is None:
        return None
    return Site(index, state.txt_len, int(args["img"].shape[1]))


def option_site(family: Family, options: dict, state: CallState, pad_multiple: int | None, k_len: int,
                log=None) -> Site | None:
    """The site of a main-layer attention call of a ``block_index`` family (NextDiT), or None for its other
    calls. The main layers attend over one sequence [text padded to the pad multiple, image tokens padded
    to it] (``NextDiT.patchify_and_embed``); the refiner layers attend over the text alone or the image
    alone, so a call is a main layer's when its keys are that long. Its block is the ``block_index``
    ComfyUI writes into transformer_options (with ``block_type`` "double") for every main layer; ComfyUI
    before 0.4 writes none, and there the main layers are numbered in the order they run."""
    if family.hook != "block_index" or state.context_len is None:
        return None
    length = state.context_len
    m = int(pad_multiple or 1)
    cap = math.ceil(length / m) * m
    cells = state.grid[0] * state.grid[1]
    seq = cap + math.ceil(cells / m) * m
    if k_len != seq:
        return None
    if options.get("block_type") == "double" and "block_index" in options:
        block = int(options["block_index"])
    else:
        block = state.joint_calls
        state.joint_calls += 1
        if log is not None:
            log.once(("block-order",), "this ComfyUI writes no block index for %s: its main layers are numbered "
                     "in the order they run", family.label, level=logging.INFO)
    return Site(block, length, seq, img_start=cap)
