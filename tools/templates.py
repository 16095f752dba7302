"""Write the example workflows (ComfyUI's template browser) in example_workflows/.

    .venv/bin/python tools/templates.py                 # write them
    .venv/bin/python tools/templates.py --check         # exit 1 if a file differs from what this writes
    .venv/bin/python tools/templates.py thumbnails      # write their .jpg thumbnails (a headless ComfyUI
                                                        # runs the shapes ones; --illustrations: only the others)

Conventions (docs/templates.md): the file name is the title the template browser
shows, "<Model> - <what it teaches>"; a description of what it teaches opens the
Note (and is extra.info.description); every model file a loader loads is listed on
it with its folder and official download address (properties.models: ComfyUI's
missing-models dialog); four groups, "Load", "Encode", "Sample" left to right and
"Look" under them; a Note on the left says which model files go where and what each
Enfoque node does; nodes never overlap at their rendered size (title bar included),
also after a run, when previews and word chips have appeared, and Enfoque Attention
Maps has room to grow. Sizes below are at least the frontend's own minimum for each
node (tests/test_frontend.py measures them in the browser). The thumbnails (same
name, .jpg) show what the template gives: the shapes templates' own output, the
others a labelled illustration drawn by the pack's renderer.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "example_workflows"

TITLE_H = 30  # LiteGraph's node title bar, drawn above node.pos
GAP = 36  # between the rendered rectangles of two nodes
GROUP_PAD = 20
GROUP_TITLE = 50
GROUP_GAP = 60
NOTE_W = 460
# Enfoque Attention Maps grows after a run with its word chips (the frontend caps it at 300 px, then the chips
# scroll): the node under it starts (title bar included) at least 320 px below its top (node.pos, the top
# of its body), so the grown node never covers it; 340 here, so that a frontend without the cap (326 px
# with every word of a long prompt, measured in tests/browser/templates.mjs) covers nothing either
ROOM = {"EnfoqueAttentionMaps": 340}

# socket inputs (name, type) and outputs (name, type) of the nodes the templates use
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "TripleCLIPLoader": ([], [("CLIP", "CLIP")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "ModelSamplingSD3": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyFlux2LatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyHunyuanLatentVideo": ([], [("LATENT", "LATENT")]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "SaveAnimatedWEBP": ([("images", "IMAGE")], []),
    "MarkdownNote": ([], []),
    "EnfoquePatchCLIP": ([("clip", "CLIP")], [("CLIP", "CLIP"), ("probe", "ENFOQUE_CLIP_PROBE")]),
    "EnfoquePatchModel": ([("model", "MODEL"), ("concepts", "ENFOQUE_CONCEPTS")],
                          [("MODEL", "MODEL"), ("probe", "ENFOQUE_MODEL_PROBE")]),
    "EnfoqueConcepts": ([("clip", "CLIP")], [("concepts", "ENFOQUE_CONCEPTS")]),
    "EnfoqueImageMaps": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT")],
                         [("maps", "ENFOQUE_MAPS"), ("concept_maps", "ENFOQUE_MAPS")]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [("LATENT", "LATENT")]),
    "EnfoqueTokenWeights": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "EnfoqueAttentionMaps": ([("probe", "ENFOQUE_MODEL_PROBE"), ("latent", "LATENT")], [("maps", "ENFOQUE_MAPS")]),
    "EnfoqueHeatmaps": ([("maps", "ENFOQUE_MAPS"), ("image", "IMAGE")], [("image", "IMAGE")]),
    "EnfoqueMapsToMask": ([("maps", "ENFOQUE_MAPS"), ("image", "IMAGE")], [("mask", "MASK")]),
    "EnfoqueSaveAttentionMaps": ([("maps", "ENFOQUE_MAPS")], []),
    "EnfoqueRegion": ([("conditioning", "CONDITIONING"), ("mask", "MASK")], [("CONDITIONING", "CONDITIONING")]),
    "SolidMask": ([], [("MASK", "MASK")]),
    "MaskComposite": ([("destination", "MASK"), ("source", "MASK")], [("MASK", "MASK")]),
    "InvertMask": ([("mask", "MASK")], [("MASK", "MASK")]),
}

# default rendered sizes (body, without the title bar), at least the frontend's minimum
SIZES = {
    "CheckpointLoaderSimple": (340, 100),
    "TripleCLIPLoader": (340, 110),
    "DualCLIPLoader": (340, 130),
    "CLIPLoader": (340, 106),
    "UNETLoader": (340, 82),
    "VAELoader": (340, 60),
    "EnfoquePatchCLIP": (340, 80),
    "CLIPTextEncode": (400, 180),
    "FluxGuidance": (340, 60),
    "EnfoqueTokenWeights": (400, 200),
    "ModelSamplingSD3": (340, 60),
    "EnfoquePatchModel": (340, 290),
    "EmptySD3LatentImage": (340, 110),
    "EmptyLatentImage": (340, 110),
    "EmptyFlux2LatentImage": (340, 110),
    "EmptyHunyuanLatentVideo": (340, 134),
    "KSampler": (340, 262),
    "VAEDecode": (220, 50),
    "SaveImage": (420, 470),
    "SaveAnimatedWEBP": (420, 520),
    "EnfoqueAttentionMaps": (380, 250),
    "EnfoqueHeatmaps": (460, 560),
    "EnfoqueMapsToMask": (380, 430),
    "EnfoqueSaveAttentionMaps": (380, 90),
    "EnfoqueConcepts": (400, 120),
    "EnfoqueImageMaps": (340, 180),
    "LoadImage": (340, 400),
    "VAEEncode": (220, 50),
    "EnfoqueRegion": (400, 200),
    "SolidMask": (300, 106),
    "MaskComposite": (300, 130),
    "InvertMask": (220, 30),
}

# Where each model file a template loads comes from: (folder under models/, https address), the official
# repackaged files ComfyUI's own templates name (comfyui-workflow-templates). build() lists them on their
# loader as properties.models, which ComfyUI's frontend reads on load: its missing-models dialog names each
# absent file with its folder and offers the download. The shapes model's files are the pack's own (no
# address; tools/shapes.py install writes them), so they are left out and the Note says how to install them.
HF = "https://huggingface.co"


def hub(repo: str, folder: str, name: str, path: str = "") -> tuple[str, str]:
    """(folder, address) of a file on the Hugging Face hub: at ``path`` in ``repo``, else where Comfy-Org's
    repackaged repositories keep it (split_files/<folder>/<name>)."""
    return folder, f"{HF}/{repo}/resolve/main/{path or f'split_files/{folder}/{name}'}"


FLUX_TE = "comfyanonymous/flux_text_encoders"
DOWNLOADS: dict[str, tuple[str, str]] = {
    name: hub(*where, name, *path)
    for name, where, *path in [
        ("sd3.5_large_fp8_scaled.safetensors", ("Comfy-Org/stable-diffusion-3.5-fp8", "checkpoints"),
         "sd3.5_large_fp8_scaled.safetensors"),
        ("sd_xl_base_1.0.safetensors", ("stabilityai/stable-diffusion-xl-base-1.0", "checkpoints"),
         "sd_xl_base_1.0.safetensors"),
        ("flux1-dev.safetensors", ("Comfy-Org/flux1-dev", "diffusion_models"), "flux1-dev.safetensors"),
        ("clip_l.safetensors", (FLUX_TE, "text_encoders"), "clip_l.safetensors"),
        ("t5xxl_fp16.safetensors", (FLUX_TE, "text_encoders"), "t5xxl_fp16.safetensors"),
        ("ae.safetensors", ("Comfy-Org/Lumina_Image_2.0_Repackaged", "vae")),
        ("flux2_dev_fp8mixed.safetensors", ("Comfy-Org/flux2-dev", "diffusion_models")),
        ("mistral_3_small_flux2_fp8.safetensors", ("Comfy-Org/flux2-dev", "text_encoders")),
        ("flux2-vae.safetensors", ("Comfy-Org/flux2-dev", "vae")),
        ("qwen_image_fp8_e4m3fn.safetensors", ("Comfy-Org/Qwen-Image_ComfyUI", "diffusion_models")),
        ("qwen_2.5_vl_7b_fp8_scaled.safetensors", ("Comfy-Org/Qwen-Image_ComfyUI", "text_encoders")),
        ("qwen_image_vae.safetensors", ("Comfy-Org/Qwen-Image_ComfyUI", "vae")),
        ("z_image_turbo_bf16.safetensors", ("Comfy-Org/z_image_turbo", "diffusion_models")),
        ("qwen_3_4b.safetensors", ("Comfy-Org/z_image_turbo", "text_encoders")),
        ("Chroma1-HD-fp8mixed.safetensors", ("Comfy-Org/Chroma1-HD_repackaged", "diffusion_models")),
        ("wan2.1_t2v_1.3B_fp16.safetensors", ("Comfy-Org/Wan_2.1_ComfyUI_repackaged", "diffusion_models")),
        ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", ("Comfy-Org/Wan_2.1_ComfyUI_repackaged", "text_encoders")),
        ("wan_2.1_vae.safetensors", ("Comfy-Org/Wan_2.1_ComfyUI_repackaged", "vae")),
    ]
}


def downloads(widgets: list) -> list[dict]:
    """A loader's properties.models: the files among its widget values that have a download address."""
    return [{"name": v, "url": DOWNLOADS[v][1], "directory": DOWNLOADS[v][0]}
            for v in widgets if isinstance(v, str) and v in DOWNLOADS]


GROUP_COLOURS = {"Load": "#3f5f7f", "Encode": "#5f7f3f", "Sample": "#7f5f3f", "Look": "#6f3f7f"}


@dataclass
class Node:
    key: str
    type: str
    widgets: list
    group: str | None = None  # None: the note column
    column: int = 0  # column inside the group
    size: tuple[int, int] | None = None
    title: str | None = None
    id: int = 0
    pos: tuple[int, int] = (0, 0)
    links_in: dict[str, int] = field(default_factory=dict)
    links_out: dict[str, list[int]] = field(default_factory=dict)

    @property
    def wh(self) -> tuple[int, int]:
        return self.size or SIZES[self.type]


@dataclass
class Template:
    name: str  # the file name and the title in the template browser: "<Model> - <what it teaches>"
    description: str  # what the template teaches: the Note's first paragraph and extra.info.description
    nodes: list[Node]
    links: list[tuple[str, str, str, str]]  # (from key, output name, to key, input name)
    rows: list[list[str]] = field(default_factory=lambda: [["Load", "Encode", "Sample"], ["Look"]])
    # its thumbnail: "shapes", the template's own output on the shapes model; else an illustration of its
    # result: "words" (a heatmap per word), "steps" (frames over the steps), "weights" (maps with and
    # without the word weights), "frames" (maps per latent frame of a video), "regions" (the regions' masks and
    # the maps)
    picture: str = "words"


def layout(t: Template) -> list[dict]:
    """Positions: the note on the left; "Load", "Encode", "Sample" left to right in a first row, "Look" in a
    second row under them (so the graph fits a screen at a readable zoom); inside a group, its columns left
    to right and each column's nodes top down. Returns the groups."""
    groups_json = []
    note = next(n for n in t.nodes if n.group is None)
    note.pos = (0, TITLE_H)
    left = note.wh[0] + GROUP_GAP
    top = 0
    for row in t.rows:
        x = left
        row_bottom = top
        for g in row:
            members = [n for n in t.nodes if n.group == g]
            cx = x + GROUP_PAD
            bottom = top
            for c in sorted({n.column for n in members}):
                y = top + GROUP_TITLE + TITLE_H
                width = 0
                for n in (m for m in members if m.column == c):
                    n.pos = (cx, y)
                    height = max(n.wh[1], ROOM.get(n.type, 0))  # with the room it may grow into
                    y = max(y + n.wh[1] + GAP, y + height) + TITLE_H
                    width = max(width, n.wh[0])
                    bottom = max(bottom, n.pos[1] + height)
                cx += width + GAP
            gw = cx - GAP + GROUP_PAD - x
            gh = bottom + GROUP_PAD - top
            groups_json.append(
                {
                    "id": len(groups_json) + 1,
                    "title": g,
                    "bounding": [x, top, gw, gh],
                    "color": GROUP_COLOURS[g],
                    "font_size": 24,
                    "flags": {},
                }
            )
            x += gw + GROUP_GAP
            row_bottom = max(row_bottom, top + gh)
        top = row_bottom + GROUP_GAP
    return groups_json


def build(t: Template) -> dict:
    for i, n in enumerate(t.nodes, start=1):
        n.id = i
    by_key = {n.key: n for n in t.nodes}
    links_json = []
    for lid, (src, out, dst, inp) in enumerate(t.links, start=1):
        s, d = by_key[src], by_key[dst]
        outs = [o for o, _ in SOCKETS[s.type][1]]
        ins = [i for i, _ in SOCKETS[d.type][0]]
        ltype = SOCKETS[s.type][1][outs.index(out)][1]
        links_json.append([lid, s.id, outs.index(out), d.id, ins.index(inp), ltype])
        s.links_out.setdefault(out, []).append(lid)
        assert inp not in d.links_in, f"{d.key}.{inp} linked twice"
        d.links_in[inp] = lid
    groups_json = layout(t)
    nodes_json = []
    for order, n in enumerate(t.nodes):
        ins, outs = SOCKETS[n.type]
        node = {
            "id": n.id,
            "type": n.type,
            "pos": list(n.pos),
            "size": list(n.wh),
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": n.links_in.get(name)} for name, typ in ins],
            "outputs": [
                {"name": name, "type": typ, "links": n.links_out.get(name, []), "slot_index": i}
                for i, (name, typ) in enumerate(outs)
            ],
            "properties": {"Node name for S&R": n.type},
            "widgets_values": [with_description(n.widgets[0], t.description)] if n.group is None else n.widgets,
        }
        models = downloads(n.widgets)
        if models:
            node["properties"]["models"] = models
        if n.title:
            node["title"] = n.title
        if n.type == "MarkdownNote":
            node.update(color="#432", bgcolor="#653", properties={})
        nodes_json.append(node)
    # the first view: the whole graph on a 1920x1080 window, at a zoom where text is still drawn
    right = max(g["bounding"][0] + g["bounding"][2] for g in groups_json)
    bottom = max([g["bounding"][1] + g["bounding"][3] for g in groups_json] + [n.pos[1] + n.wh[1] for n in t.nodes])
    scale = round(max(0.6, min(1800 / (right + 80), 940 / (bottom + 80), 1.0)), 2)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "enfoque/" + t.name)),
        "revision": 0,
        "last_node_id": len(t.nodes),
        "last_link_id": len(t.links),
        "nodes": nodes_json,
        "links": links_json,
        "groups": groups_json,
        "config": {},
        "extra": {"ds": {"scale": scale, "offset": [80, 100]}, "info": {"title": t.name, "description": t.description}},
        "version": 0.4,
    }


# --------------------------------------------------------------------------- what each template holds

NODE_NOTES = {
    "EnfoqueRegion": "**Enfoque Region** confines words of a prompt to a mask inside the diffusion model's "
    "attention: outside the mask the image does not attend to them, so what they describe is drawn inside it.",
    "EnfoquePatchCLIP": "**Enfoque Patch CLIP** patches the text encoder: (word:1.2) weights act inside its "
    "attention, and every encode records the prompt's words, so maps are labelled with words.",
    "EnfoqueTokenWeights": "**Enfoque Token Weights** gives words a weight inside the diffusion model's attention "
    "(`raincoat:1.4` stronger, `rain:0.6` weaker, 0 removes a word). Its chips show the prompt's words: "
    "wheel or drag a chip to change its weight.",
    "EnfoquePatchModel": "**Enfoque Patch Model** patches the diffusion model: it records where the image attends "
    "to each word and applies the word weights (reweight bias or scale).",
    "EnfoqueAttentionMaps": "**Enfoque Attention Maps** reads the maps of the last run, one per word or phrase "
    "you list (empty = every word).",
    "EnfoqueHeatmaps": "**Enfoque Heatmaps** draws them over the image. After a run, hover a word chip to see "
    "where that word attends; click to pin it.",
    "EnfoqueHeatmapsSteps": "**Enfoque Heatmaps** with *over: steps* draws one picture per sampling step "
    "(captioned with the step and its sigma); **Save Animated WEBP** turns them into an animation. "
    "*over: blocks* (with keep_blocks) does the same per block.",
    "EnfoqueMapsToMask": "**Enfoque Maps To Mask** turns a word's map into a MASK (threshold 0 = automatic) for "
    "inpainting or compositing.",
    "EnfoqueSaveAttentionMaps": "**Enfoque Save Attention Maps** writes the maps with their words to "
    "`output/enfoque/` (safetensors, npz or PNG).",
    "EnfoqueConcepts": "**Enfoque Concepts** encodes each concept on its own; connected to Enfoque Patch Model, "
    "the concepts run through the model beside the prompt (the picture does not change) and give concept maps: "
    "at each pixel, each concept's share.",
    "EnfoqueAttentionMapsConcept": "**Enfoque Attention Maps** with *kind: concept* reads the concept maps of "
    "the last run.",
    "EnfoqueImageMaps": "**Enfoque Image Maps** explains a picture you already have: it noises its latent "
    "(*noise* of the sigma range), runs the patched model once per *repeat* and averages the maps of the "
    "prompt's words (maps) and of the concepts (concept_maps).",
}


def note_text(title: str, files: list[str], nodes: list[str], extra: str = "", download: bool = True) -> str:
    where = ("in ComfyUI's `models/` folder; ComfyUI offers to download the missing ones when the template opens"
             if download else "in ComfyUI's `models/` folder; no download, they come with the pack")
    lines = [f"## {title}", "", f"**Model files** ({where}):", ""]
    lines += [f"- {f}" for f in files]
    lines += ["", "**The Enfoque nodes here:**", ""]
    lines += [f"- {NODE_NOTES[n]}" for n in nodes]
    lines += ["", "Press **Run**, then hover the word chips on Enfoque Heatmaps."]
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


SD35_FILES = [
    "`checkpoints/sd3.5_large_fp8_scaled.safetensors` (SD3.5 Large in fp8, its three text encoders included; "
    "Medium and Large Turbo work the same)",
]
FLUX_FILES = [
    "`diffusion_models/flux1-dev.safetensors`",
    "`text_encoders/clip_l.safetensors` and `text_encoders/t5xxl_fp16.safetensors` "
    "(or `t5xxl_fp8_e4m3fn.safetensors`)",
    "`vae/ae.safetensors` (the Flux VAE)",
]
SDXL_FILES = ["`checkpoints/sd_xl_base_1.0.safetensors` (any SDXL or SD1.5 checkpoint works)"]

Link = tuple[str, str, str, str]  # (from key, output name, to key, input name)
LOOK = ["EnfoqueAttentionMaps", "EnfoqueHeatmaps", "EnfoqueMapsToMask", "EnfoqueSaveAttentionMaps"]


def look_nodes(words: str, stem: str, mask_word: str = "", over: str = "mean") -> tuple[list[Node], list[Link]]:
    """Decode and save the image; the maps, drawn by Enfoque Heatmaps over it; then a mask and the maps
    saved to a file, or, with ``over`` steps, the heatmap frames saved as an animation."""
    nodes = [
        Node("decode", "VAEDecode", [], "Look", 0),
        Node("save", "SaveImage", [f"enfoque/{stem}"], "Look", 0),
        Node("maps", "EnfoqueAttentionMaps", [words, "positive", 0, -1, -1, "cross"], "Look", 1),
        Node("heat", "EnfoqueHeatmaps", ["viridis", 0.6, "minmax", 0, over, "bilinear"], "Look", 1,
             title=None if over == "mean" else f"Enfoque Heatmaps (one per {over[:-1]})"),
    ]
    links = [
        ("sampler", "LATENT", "decode", "samples"),
        ("decode", "IMAGE", "save", "images"),
        ("pmodel", "probe", "maps", "probe"),
        ("sampler", "LATENT", "maps", "latent"),
        ("maps", "maps", "heat", "maps"),
        ("decode", "IMAGE", "heat", "image"),
    ]
    if over != "mean":
        nodes.append(Node("webp", "SaveAnimatedWEBP", [f"enfoque/{stem}", 4.0, False, 85, "default"], "Look", 2))
        return nodes, [*links, ("heat", "image", "webp", "images")]
    nodes += [
        Node("mask", "EnfoqueMapsToMask", [mask_word, 0.0, 0, 0], "Look", 2),
        Node("savemaps", "EnfoqueSaveAttentionMaps", [f"enfoque/{stem}_maps", "safetensors"], "Look", 2),
    ]
    return nodes, [*links, ("maps", "maps", "mask", "maps"), ("maps", "maps", "savemaps", "maps")]


def plain_look(save: Node, maps_widgets: list, maps_title: str | None = None,
               over_image: bool = True) -> tuple[list[Node], list[Link]]:
    """Decode into ``save`` (a picture or an animation); the maps read by Enfoque Attention Maps
    (``maps_widgets``) and drawn by Enfoque Heatmaps, over the picture when ``over_image``."""
    nodes = [
        Node("decode", "VAEDecode", [], "Look", 0),
        save,
        Node("maps", "EnfoqueAttentionMaps", maps_widgets, "Look", 1, title=maps_title),
        Node("heat", "EnfoqueHeatmaps", ["viridis", 0.6, "minmax", 0, "mean", "bilinear"], "Look", 1),
    ]
    links = [
        ("sampler", "LATENT", "decode", "samples"),
        ("decode", "IMAGE", save.key, "images"),
        ("pmodel", "probe", "maps", "probe"),
        ("sampler", "LATENT", "maps", "latent"),
        ("maps", "maps", "heat", "maps"),
    ]
    return nodes, [*links, ("decode", "IMAGE", "heat", "image")] if over_image else links


def wiring(model: tuple[str, str], clip: tuple[str, str], vae: tuple[str, str], between: str | None = None) -> list[Link]:
    """The links every template has: the patched CLIP into both prompts, the patched model and the
    prompts into the sampler (the positive one through ``between`` if given), the VAE into the decode."""
    links = [
        (*clip, "pclip", "clip"),
        ("pclip", "CLIP", "pos", "clip"),
        ("pclip", "CLIP", "neg", "clip"),
        (*model, "pmodel", "model"),
        ("pmodel", "MODEL", "sampler", "model"),
        ("neg", "CONDITIONING", "sampler", "negative"),
        ("latent", "LATENT", "sampler", "latent_image"),
        (*vae, "decode", "vae"),
    ]
    if between:
        return [*links, ("pos", "CONDITIONING", between, "conditioning"), (between, "CONDITIONING", "sampler", "positive")]
    return [*links, ("pos", "CONDITIONING", "sampler", "positive")]


def patch_model(keep_steps: bool = False) -> Node:
    return Node("pmodel", "EnfoquePatchModel", [True, "bias", "all", 0.0, 1.0, False, "", 1024.0, keep_steps, False,
                                                "off"],
                "Sample", 0)


def note(title: str, files: list[str], nodes: list[str], height: int, extra: str = "", download: bool = True) -> Node:
    """The Note; build() puts the template's description under its heading."""
    return Node("note", "MarkdownNote", [note_text(title, files, nodes, extra, download)], size=(NOTE_W, height))


def with_description(text: str, description: str) -> str:
    """The Note's text with the template's description as its first paragraph, under the heading."""
    head, _, rest = text.partition("\n\n")
    return f"{head}\n\n{description}\n\n{rest}"


def encode_nodes(prompt: str, negative: str = "", negative_title: str = "Negative prompt",
                 between: Node | None = None) -> list[Node]:
    """Enfoque Patch CLIP and the two prompts (the positive one through ``between``, if given)."""
    return [
        Node("pclip", "EnfoquePatchCLIP", ["attention", True], "Encode"),
        Node("pos", "CLIPTextEncode", [prompt], "Encode", title="Positive prompt"),
        *([between] if between else []),
        Node("neg", "CLIPTextEncode", [negative], "Encode", size=(400, 120), title=negative_title),
    ]


def sample_nodes(latent: str, sampler: list, keep_steps: bool = False, shift: bool = False) -> list[Node]:
    """The latent, Enfoque Patch Model (last in its column: a notice may make it taller) and the sampler."""
    return [
        *([Node("shift", "ModelSamplingSD3", [3.0], "Sample")] if shift else []),
        Node("latent", latent, [1024, 1024, 1], "Sample"),
        patch_model(keep_steps),
        Node("sampler", "KSampler", sampler, "Sample", 1),
    ]


EACH_WORD = ("See where each word of the prompt lands in the picture {model} draws: a heatmap per word over the "
             "image, a mask cut from one word, and the maps saved to a file.")
SD35_PROMPT = "a red fox sitting on a blue armchair in a sunlit library"


def sd35_load() -> list[Node]:
    """The checkpoint ComfyUI's own SD3.5 template loads: the model, its text encoders and its VAE."""
    return [Node("ckpt", "CheckpointLoaderSimple", ["sd3.5_large_fp8_scaled.safetensors"], "Load")]


SD35_WIRING = [("ckpt", "MODEL", "shift", "model"), *wiring(("shift", "MODEL"), ("ckpt", "CLIP"), ("ckpt", "VAE"))]


def sd35() -> Template:
    look, look_links = look_nodes("red fox, blue armchair, library", "sd35", "red fox")
    nodes = [
        note("SD3.5: where each word lands", SD35_FILES, ["EnfoquePatchCLIP", "EnfoquePatchModel", *LOOK], 700),
        *sd35_load(),
        *encode_nodes(SD35_PROMPT),
        *sample_nodes("EmptySD3LatentImage", [42, "fixed", 28, 4.5, "euler", "sgm_uniform", 1.0], shift=True),
        *look,
    ]
    return Template("SD3.5 - attention maps per word", EACH_WORD.format(model="SD3.5"), nodes, SD35_WIRING + look_links)


def sd35_steps() -> Template:
    look, look_links = look_nodes("red fox, blue armchair", "sd35_steps", over="steps")
    nodes = [
        note("SD3.5: attention over the denoising steps", SD35_FILES,
             ["EnfoquePatchCLIP", "EnfoquePatchModel", "EnfoqueAttentionMaps", "EnfoqueHeatmapsSteps"], 640,
             "keep_steps is on in Enfoque Patch Model: it keeps one map per step (memory: one mean map per "
             "step, within budget_mb). The animation lands in `output/enfoque/`."),
        *sd35_load(),
        *encode_nodes(SD35_PROMPT),
        *sample_nodes("EmptySD3LatentImage", [42, "fixed", 20, 4.5, "euler", "sgm_uniform", 1.0], keep_steps=True,
                      shift=True),
        *look,
    ]
    links = SD35_WIRING + look_links
    return Template("SD3.5 - attention over the denoising steps",
                    "Watch the words find their place while SD3.5 denoises: the maps of each sampling step, drawn "
                    "over the picture one step per frame and saved as an animated WEBP.", nodes, links,
                    picture="steps")


def flux() -> Template:
    look, look_links = look_nodes("lighthouse, rocky cliff, seagulls, waves", "flux", "lighthouse")
    nodes = [
        note("Flux.1 dev: where each word lands", FLUX_FILES, ["EnfoquePatchCLIP", "EnfoquePatchModel", *LOOK], 760,
             "Flux dev is guidance-distilled: cfg stays 1, FluxGuidance sets the guidance, and the negative "
             "prompt is not used."),
        Node("unet", "UNETLoader", ["flux1-dev.safetensors", "default"], "Load"),
        Node("clip", "DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], "Load"),
        Node("vae", "VAELoader", ["ae.safetensors"], "Load"),
        *encode_nodes("a lighthouse on a rocky cliff at sunset, seagulls flying over the waves",
                      negative_title="Negative prompt (unused by Flux dev)",
                      between=Node("guide", "FluxGuidance", [3.5], "Encode")),
        *sample_nodes("EmptySD3LatentImage", [42, "fixed", 20, 1.0, "euler", "simple", 1.0]),
        *look,
    ]
    links = [*wiring(("unet", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), between="guide"), *look_links]
    return Template("Flux.1 dev - attention maps per word", EACH_WORD.format(model="Flux.1 dev"), nodes, links)


def sdxl() -> Template:
    look, look_links = look_nodes("corgi, yellow raincoat, rain", "sdxl", "corgi")
    nodes = [
        note("SDXL: word weights inside attention", SDXL_FILES,
             ["EnfoquePatchCLIP", "EnfoqueTokenWeights", "EnfoquePatchModel", *LOOK], 800,
             "Compare: set Enfoque Patch Model's reweight to off and run again (a notice on it then says the "
             "weights are ignored)."),
        Node("ckpt", "CheckpointLoaderSimple", ["sd_xl_base_1.0.safetensors"], "Load"),
        *encode_nodes("a corgi wearing a yellow raincoat in the rain, city street", negative="blurry, low quality",
                      between=Node("weights", "EnfoqueTokenWeights", ["raincoat:1.4, rain:0.6"], "Encode",
                                   size=(400, 260))),
        *sample_nodes("EmptyLatentImage", [42, "fixed", 25, 7.0, "dpmpp_2m", "karras", 1.0]),
        *look,
    ]
    links = [*wiring(("ckpt", "MODEL"), ("ckpt", "CLIP"), ("ckpt", "VAE"), between="weights"), *look_links]
    return Template("SDXL - word weights inside attention",
                    "Make a word count more or less inside the model's attention with Enfoque Token Weights "
                    "(raincoat stronger, rain weaker), then see in the maps where each weighted word acts.", nodes,
                    links, picture="weights")


# --------------------------------------------------------------------------- Step 13's families
# Model files as ComfyUI's own examples name them; each family's text-encoder type on CLIPLoader.


def dit_template(name: str, title: str, files: list[str], unet: str, clip: str, clip_type: str, vae: str,
                 prompt: str, words: str, stem: str, latent: str, sampler: list, mask_word: str,
                 guidance: float | None = None, extra: str = "", note_h: int = 760) -> Template:
    """A text-to-image DiT graph: UNETLoader, CLIPLoader and VAELoader, the two prompts (the positive one
    through FluxGuidance where the model is guidance-distilled), the sampler and the usual Look group."""
    look, look_links = look_nodes(words, stem, mask_word)
    between = Node("guide", "FluxGuidance", [guidance], "Encode") if guidance is not None else None
    nodes = [
        note(title, files, ["EnfoquePatchCLIP", "EnfoquePatchModel", *LOOK], note_h, extra),
        Node("unet", "UNETLoader", [unet, "default"], "Load"),
        Node("clip", "CLIPLoader", [clip, clip_type, "default"], "Load"),
        Node("vae", "VAELoader", [vae], "Load"),
        *encode_nodes(prompt, negative="blurry, low quality", between=between),
        *sample_nodes(latent, sampler),
        *look,
    ]
    wires = wiring(("unet", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), between="guide" if between else None)
    return Template(name, EACH_WORD.format(model=name.split(" - ")[0]), nodes, [*wires, *look_links])


LLM_NOTE = ("The text encoder is an LLM that reads the prompt inside a chat template: those template tokens are "
            "no words, so the maps and chips show only your prompt's words. (word:1.2) works here through "
            "Enfoque Patch CLIP (ComfyUI alone passes it to the LLM as text).")


def flux2() -> Template:
    return dit_template(
        "Flux 2 dev - attention maps per word", "Flux 2 dev: where each word lands",
        ["`diffusion_models/flux2_dev_fp8mixed.safetensors`",
         "`text_encoders/mistral_3_small_flux2_fp8.safetensors` (Mistral 3, the Flux 2 text encoder)",
         "`vae/flux2-vae.safetensors`"],
        "flux2_dev_fp8mixed.safetensors", "mistral_3_small_flux2_fp8.safetensors", "flux2", "flux2-vae.safetensors",
        "a red vintage bicycle leaning against a yellow wall, a cat sleeping in its basket",
        "bicycle, yellow wall, cat, basket", "flux2", "EmptyFlux2LatentImage",
        [42, "fixed", 20, 1.0, "euler", "simple", 1.0], "cat", guidance=4.0,
        extra=LLM_NOTE + " Flux 2 dev is guidance-distilled: cfg stays 1 and FluxGuidance sets the guidance.",
        note_h=860)


def qwen_image() -> Template:
    return dit_template(
        "Qwen Image - attention maps per word", "Qwen-Image: where each word lands",
        ["`diffusion_models/qwen_image_fp8_e4m3fn.safetensors`",
         "`text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors` (Qwen2.5-VL)", "`vae/qwen_image_vae.safetensors`"],
        "qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image",
        "qwen_image_vae.safetensors", "a green teapot next to three oranges on a wooden table, morning light",
        "green teapot, oranges, wooden table", "qwen_image", "EmptySD3LatentImage",
        [42, "fixed", 20, 2.5, "euler", "simple", 1.0], "green teapot", extra=LLM_NOTE, note_h=820)


def z_image() -> Template:
    return dit_template(
        "Z Image Turbo - attention maps per word", "Z-Image Turbo: where each word lands",
        ["`diffusion_models/z_image_turbo_bf16.safetensors`", "`text_encoders/qwen_3_4b.safetensors` (Qwen3)",
         "`vae/ae.safetensors` (the Flux VAE)"],
        "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "lumina2", "ae.safetensors",
        "an orange hot air balloon over snowy mountains, a small village below",
        "hot air balloon, snowy mountains, village", "z_image", "EmptySD3LatentImage",
        [42, "fixed", 8, 1.0, "res_multistep", "simple", 1.0], "hot air balloon",
        extra=LLM_NOTE + " Z-Image Turbo samples in 8 steps at cfg 1.", note_h=820)


def chroma() -> Template:
    return dit_template(
        "Chroma - attention maps per word", "Chroma: where each word lands",
        ["`diffusion_models/Chroma1-HD-fp8mixed.safetensors`", "`text_encoders/t5xxl_fp16.safetensors` (T5-XXL)",
         "`vae/ae.safetensors` (the Flux VAE)"],
        "Chroma1-HD-fp8mixed.safetensors", "t5xxl_fp16.safetensors", "chroma", "ae.safetensors",
        "a white owl perched on a mossy branch in a misty forest at dawn", "white owl, mossy branch, forest",
        "chroma", "EmptySD3LatentImage", [42, "fixed", 26, 4.0, "euler", "beta", 1.0], "white owl")


WAN_FILES = [
    "`diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors` (Wan 2.1 text-to-video; Wan 2.2 works the same)",
    "`text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors` (umT5-XXL)",
    "`vae/wan_2.1_vae.safetensors`",
]


def wan() -> Template:
    """Wan text-to-video: the decoded video saved as an animation; the maps of the prompt's words."""
    nodes = [
        note("Wan 2.1: where each word lands, frame by frame", WAN_FILES,
             ["EnfoquePatchCLIP", "EnfoquePatchModel", "EnfoqueAttentionMaps", "EnfoqueHeatmaps"], 760,
             "Wan keeps one map per latent frame (every 4 video frames). Enfoque Heatmaps shows their mean; set "
             "its over to frames for one picture per latent frame, and connect it to a Save Animated WEBP to "
             "watch the words move."),
        Node("unet", "UNETLoader", ["wan2.1_t2v_1.3B_fp16.safetensors", "default"], "Load"),
        Node("clip", "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], "Load"),
        Node("vae", "VAELoader", ["wan_2.1_vae.safetensors"], "Load"),
        *encode_nodes("a red kite flying over a green meadow, a dog running below it",
                      negative="static, blurry, low quality"),
        Node("latent", "EmptyHunyuanLatentVideo", [832, 480, 33, 1], "Sample"),
        patch_model(),
        Node("sampler", "KSampler", [42, "fixed", 30, 6.0, "uni_pc", "simple", 1.0], "Sample", 1),
    ]
    look, look_links = plain_look(Node("video", "SaveAnimatedWEBP", ["enfoque/wan", 16.0, False, 85, "default"],
                                       "Look", 0), ["red kite, meadow, dog", "positive", 0, -1, -1, "cross"],
                                  over_image=False)
    links = [*wiring(("unet", "MODEL"), ("clip", "CLIP"), ("vae", "VAE")), *look_links]
    return Template("Wan 2.1 - attention maps per word over the video",
                    "See where each word lands in a video Wan 2.1 makes: Enfoque keeps one map per latent frame "
                    "and draws their mean; set over to frames to get one picture per frame.", nodes + look, links,
                    picture="frames")


# --------------------------------------------------------------------------- the shapes model (tools/shapes.py)

SHAPES_FILES = [
    "`diffusion_models/enfoque_shapes_sd3.safetensors`, `text_encoders/enfoque_shapes_clip_l.safetensors` and "
    "`vae/enfoque_shapes_vae.safetensors`: the pack's small trained shapes model; "
    "`python custom_nodes/enfoque/tools/shapes.py install models --input input` puts them there (and an "
    "example picture in `input/`)",
]
SHAPES_GRAMMAR = ("The model knows `a {colour} {shape}` and `a {c1} {s1} on the left and a {c2} {s2} on the "
                  "right`, colours red, green, blue, yellow, shapes circle, square, triangle (128x128 px).")
SHAPES_SAMPLER = [3, "fixed", 20, 4.0, "euler", "simple", 1.0]
SHAPES_PROMPT = "a red circle on the left and a blue square on the right"


def shapes_load() -> list[Node]:
    return [
        Node("unet", "UNETLoader", ["enfoque_shapes_sd3.safetensors", "default"], "Load"),
        Node("clip", "CLIPLoader", ["enfoque_shapes_clip_l.safetensors", "sd3", "default"], "Load"),
        Node("vae", "VAELoader", ["enfoque_shapes_vae.safetensors"], "Load"),
    ]


def shapes_sample(concepts: bool = False) -> list[Node]:
    nodes = [Node("latent", "EmptySD3LatentImage", [128, 128, 1], "Sample"), patch_model(),
             Node("sampler", "KSampler", SHAPES_SAMPLER, "Sample", 1)]
    if concepts:
        nodes.insert(0, Node("concepts", "EnfoqueConcepts", ["circle, square, triangle, background"], "Sample"))
    return nodes


SHAPES_WIRING = wiring(("unet", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"))


def shapes() -> Template:
    """Issue #11's first shapes template (then shapes_attention_maps.json; Step 18 gave it the pattern's name)."""
    look, look_links = look_nodes("red, circle, blue, square", "shapes", "circle")
    nodes = [
        note("The shapes model: where each word lands", SHAPES_FILES,
             ["EnfoquePatchCLIP", "EnfoquePatchModel", *LOOK], 900, SHAPES_GRAMMAR, download=False),
        *shapes_load(),
        *encode_nodes(SHAPES_PROMPT),
        *shapes_sample(),
        *look,
    ]
    return Template("Shapes - attention maps per word",
                    "Try Enfoque in a minute on a CPU, with the pack's small shapes model and nothing to download: "
                    "where each word (red, circle, blue, square) lands in the picture it draws.", nodes,
                    SHAPES_WIRING + look_links, picture="shapes")


def shapes_concepts() -> Template:
    nodes = [
        note("The shapes model: concept maps", SHAPES_FILES,
             ["EnfoquePatchCLIP", "EnfoqueConcepts", "EnfoquePatchModel", "EnfoqueAttentionMapsConcept",
              "EnfoqueHeatmaps"], 940, SHAPES_GRAMMAR, download=False),
        *shapes_load(),
        *encode_nodes(SHAPES_PROMPT),
        *shapes_sample(concepts=True),
    ]
    look, look_links = plain_look(Node("save", "SaveImage", ["enfoque/shapes_concepts"], "Look", 0),
                                  ["", "positive", 0, -1, -1, "concept"], "Enfoque Attention Maps (concepts)")
    links = [*SHAPES_WIRING, ("clip", "CLIP", "concepts", "clip"), ("concepts", "concepts", "pmodel", "concepts"),
             *look_links]
    return Template("Shapes - concept maps",
                    "Concept maps: concepts you name (circle, square, triangle, background) run beside the prompt "
                    "without changing the picture, and show which concept each pixel belongs to.", nodes + look,
                    links, picture="shapes")


def shapes_explain() -> Template:
    nodes = [
        note("The shapes model: explain a picture you have", SHAPES_FILES,
             ["EnfoquePatchCLIP", "EnfoqueConcepts", "EnfoquePatchModel", "EnfoqueImageMaps", "EnfoqueHeatmaps"], 900,
             SHAPES_GRAMMAR + " Load a picture of shapes (`enfoque_shapes_example.png`, or one the shapes "
             "template made) and describe it in the positive prompt.", download=False),
        *shapes_load(),
        Node("image", "LoadImage", ["enfoque_shapes_example.png"], "Load", 1),
        Node("pclip", "EnfoquePatchCLIP", ["attention", True], "Encode"),
        Node("pos", "CLIPTextEncode", [SHAPES_PROMPT], "Encode", title="What the picture shows"),
        Node("concepts", "EnfoqueConcepts", ["circle, square, triangle, background"], "Sample"),
        patch_model(),
        Node("encode", "VAEEncode", [], "Sample", 1),
        Node("explain", "EnfoqueImageMaps", [0.5, 4, 0, "fixed"], "Sample", 1),
        Node("heat", "EnfoqueHeatmaps", ["viridis", 0.6, "minmax", 0, "mean", "bilinear"], "Look", 0,
             title="Enfoque Heatmaps (words)"),
        Node("cheat", "EnfoqueHeatmaps", ["viridis", 0.6, "minmax", 0, "mean", "bilinear"], "Look", 1,
             title="Enfoque Heatmaps (concepts)"),
    ]
    links = [
        ("clip", "CLIP", "pclip", "clip"),
        ("pclip", "CLIP", "pos", "clip"),
        ("clip", "CLIP", "concepts", "clip"),
        ("unet", "MODEL", "pmodel", "model"),
        ("concepts", "concepts", "pmodel", "concepts"),
        ("image", "IMAGE", "encode", "pixels"),
        ("vae", "VAE", "encode", "vae"),
        ("pmodel", "MODEL", "explain", "model"),
        ("pos", "CONDITIONING", "explain", "positive"),
        ("encode", "LATENT", "explain", "latent"),
        ("explain", "maps", "heat", "maps"),
        ("image", "IMAGE", "heat", "image"),
        ("explain", "concept_maps", "cheat", "maps"),
        ("image", "IMAGE", "cheat", "image"),
    ]
    return Template("Shapes - explain an image",
                    "Explain a picture you already have: Enfoque Image Maps noises it, runs the model on it and "
                    "maps where each word of its description and each concept sits.", nodes, links,
                    picture="shapes")


def shapes_move() -> Template:
    """Step 17's loop: the mask of where a word landed (Enfoque Maps To Mask, guided by the picture) becomes the
    region of another prompt's words (Enfoque Region)."""
    nodes = [
        note("The shapes model: put a word where another one landed", SHAPES_FILES,
             ["EnfoquePatchCLIP", "EnfoquePatchModel", "EnfoqueAttentionMaps", "EnfoqueMapsToMask", "EnfoqueRegion"],
             900, SHAPES_GRAMMAR + " Change the first prompt, or the word the mask is cut from, and run again.",
             download=False),
        *shapes_load(),
        *encode_nodes(SHAPES_PROMPT),
        Node("pos2", "CLIPTextEncode", ["a green triangle"], "Encode", title="Second prompt"),
        Node("latent", "EmptySD3LatentImage", [128, 128, 1], "Sample"),
        patch_model(),
        Node("sampler", "KSampler", SHAPES_SAMPLER, "Sample", 1),
        Node("decode", "VAEDecode", [], "Look", 0),
        Node("save", "SaveImage", ["enfoque/shapes_first"], "Look", 0),
        Node("maps", "EnfoqueAttentionMaps", ["circle", "positive", 0, -1, -1, "cross"], "Look", 1),
        Node("mask", "EnfoqueMapsToMask", ["circle", 0.0, 0, 0], "Look", 1, title="Where 'circle' landed"),
        Node("region", "EnfoqueRegion", ["green triangle", 1.0, 0.0, 1.0], "Look", 2),
        Node("sampler2", "KSampler", [2, *SHAPES_SAMPLER[1:]], "Look", 2, title="KSampler (the second picture)"),
        Node("decode2", "VAEDecode", [], "Look", 3),
        Node("save2", "SaveImage", ["enfoque/shapes_moved"], "Look", 3),
    ]
    links = [
        *SHAPES_WIRING,
        ("sampler", "LATENT", "decode", "samples"), ("decode", "IMAGE", "save", "images"),
        ("pmodel", "probe", "maps", "probe"), ("sampler", "LATENT", "maps", "latent"),
        ("maps", "maps", "mask", "maps"), ("decode", "IMAGE", "mask", "image"),
        ("pclip", "CLIP", "pos2", "clip"), ("pos2", "CONDITIONING", "region", "conditioning"),
        ("mask", "mask", "region", "mask"),
        ("pmodel", "MODEL", "sampler2", "model"), ("region", "CONDITIONING", "sampler2", "positive"),
        ("neg", "CONDITIONING", "sampler2", "negative"), ("latent", "LATENT", "sampler2", "latent_image"),
        ("sampler2", "LATENT", "decode2", "samples"), ("vae", "VAE", "decode2", "vae"),
        ("decode2", "IMAGE", "save2", "images"),
    ]
    return Template("Shapes - move a word",
                    "Cut a mask from where one word landed (circle, in the first picture) and give it to another "
                    "prompt's words with Enfoque Region: the green triangle is drawn where the circle was.",
                    nodes, links, picture="shapes")


def flux_regions() -> Template:
    nodes = [
        note("Flux.1 dev: words in regions", FLUX_FILES,
             ["EnfoquePatchCLIP", "EnfoqueRegion", "EnfoquePatchModel", *LOOK], 800,
             "The two masks are the left and right halves (Solid Mask, Mask Composite, Invert Mask); paint your own "
             "with Load Image's mask, or cut one from a word with Enfoque Maps To Mask."),
        Node("unet", "UNETLoader", ["flux1-dev.safetensors", "default"], "Load"),
        Node("clip", "DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], "Load"),
        Node("vae", "VAELoader", ["ae.safetensors"], "Load"),
        Node("pclip", "EnfoquePatchCLIP", ["attention", True], "Encode"),
        Node("pos", "CLIPTextEncode", ["a red apple and a green pear on a wooden table"], "Encode",
             title="Positive prompt"),
        Node("empty", "SolidMask", [0.0, 1024, 1024], "Encode", 1),
        Node("half", "SolidMask", [1.0, 512, 1024], "Encode", 1),
        Node("left", "MaskComposite", [0, 0, "add"], "Encode", 1),
        Node("right", "InvertMask", [], "Encode", 1),
        Node("apple", "EnfoqueRegion", ["red apple", 1.0, 0.0, 1.0], "Encode", 2, title="Enfoque Region (left)"),
        Node("pear", "EnfoqueRegion", ["green pear", 1.0, 0.0, 1.0], "Encode", 2, title="Enfoque Region (right)"),
        Node("guide", "FluxGuidance", [3.5], "Encode", 2),
        Node("neg", "CLIPTextEncode", [""], "Encode", size=(400, 120), title="Negative prompt (unused by Flux dev)"),
        *sample_nodes("EmptySD3LatentImage", [42, "fixed", 20, 1.0, "euler", "simple", 1.0]),
    ]
    look, look_links = look_nodes("red apple, green pear, table", "flux_regions", "red apple")
    links = [
        ("clip", "CLIP", "pclip", "clip"), ("pclip", "CLIP", "pos", "clip"), ("pclip", "CLIP", "neg", "clip"),
        ("unet", "MODEL", "pmodel", "model"), ("pmodel", "MODEL", "sampler", "model"),
        ("neg", "CONDITIONING", "sampler", "negative"), ("latent", "LATENT", "sampler", "latent_image"),
        ("vae", "VAE", "decode", "vae"),
        ("empty", "MASK", "left", "destination"), ("half", "MASK", "left", "source"), ("left", "MASK", "right", "mask"),
        ("pos", "CONDITIONING", "apple", "conditioning"), ("left", "MASK", "apple", "mask"),
        ("apple", "CONDITIONING", "pear", "conditioning"), ("right", "MASK", "pear", "mask"),
        ("pear", "CONDITIONING", "guide", "conditioning"), ("guide", "CONDITIONING", "sampler", "positive"),
        *look_links,
    ]
    return Template("Flux.1 dev - words in regions",
                    "Put each object where you want it: Enfoque Region confines 'red apple' to the left half and "
                    "'green pear' to the right half inside Flux's attention, and the maps show where they landed.",
                    nodes + look, links, picture="regions")


TEMPLATES = [sd35, flux, sdxl, sd35_steps, flux2, qwen_image, z_image, chroma, wan, flux_regions, shapes,
             shapes_concepts, shapes_explain, shapes_move]


# --------------------------------------------------------------------------- a template as the frontend queues it

FRONTEND_ONLY = {"MarkdownNote", "Note"}  # virtual nodes: drawn by the frontend, never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_inputs(spec: dict) -> list[tuple[str, int]]:
    """A node's widget inputs in the order the frontend saves their values (/object_info's order,
    required then optional), each with how many values it saves (2 with "control after generate")."""
    out = []
    for section in ("required", "optional"):
        for name, conf in (spec["input"].get(section) or {}).items():
            kind = "COMBO" if isinstance(conf[0], list) else conf[0]
            if kind in WIDGET_TYPES:
                opts = conf[1] if len(conf) > 1 and isinstance(conf[1], dict) else {}
                out.append((name, 2 if opts.get("control_after_generate") else 1))
    return out


def api_prompt(workflow: dict, info: dict) -> dict:
    """A saved (UI) workflow as the prompt the frontend queues: links become inputs, widget values go to
    the node's widget inputs (a seed's "control after generate" value is the frontend's own)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n["type"] in FRONTEND_ONLY or n.get("mode", 0) != 0:
            continue
        inputs = {}
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None:
                _, src, slot, *_ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        values = list(n.get("widgets_values") or [])
        for name, count in widget_inputs(info[n["type"]]):
            value, values = values[0], values[count:]
            inputs.setdefault(name, value)  # a widget converted to a linked input keeps its link
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


# --------------------------------------------------------------------------- thumbnails
# A thumbnail shows what the template gives. The shapes templates' thumbnails are their own output: the
# template queued in a live server with the shapes model installed, its picture and its Enfoque Heatmaps
# side by side. The other templates' models are too large to run here: their thumbnails are illustrations
# of their kind of result, drawn by the pack's own renderer (attention/render.py) on synthetic maps with the
# template's words, and labelled as such.

THUMB_SIZE = (800, 600)
THUMB_QUALITY = 88
THUMB_BG = (24, 24, 24)
ILLUSTRATION = "ILLUSTRATION"
REAL_OUTPUT = "REAL OUTPUT"
BADGES = {ILLUSTRATION: (242, 182, 50), REAL_OUTPUT: (80, 190, 110)}
SPOTS = [(0.32, 0.58), (0.7, 0.62), (0.5, 0.24), (0.18, 0.22), (0.82, 0.2), (0.5, 0.85)]


def _render():
    """attention/render.py and its maps (torch), imported only when thumbnails are drawn."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from attention import render
    from attention.maps import AttentionMaps

    return render, AttentionMaps


def template_words(t: Template, key: str = "maps") -> list[str]:
    """The words a template's Enfoque Attention Maps reads (its words widget)."""
    node = next(n for n in t.nodes if n.key == key)
    return [w.strip() for w in node.widgets[0].split(",") if w.strip()]


def synthetic_maps(n: int, seed: int, sharpness: float = 1.0, shift: float = 0.0, size: int = 40):
    """``[1, n, size, size]``: map i a soft spot at ``SPOTS[i]`` (moved right by ``shift``) over faint noise;
    ``sharpness`` 0 is noise alone, 1 the spot."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    maps = []
    for i in range(n):
        cy, cx = SPOTS[i % len(SPOTS)]
        sx, sy = (0.08 + 0.08 * float(v) for v in torch.rand(2, generator=g))
        spot = torch.exp(-((xs - cx - shift * (i % 2 == 0)) ** 2 / (2 * sx**2) + (ys - cy) ** 2 / (2 * sy**2)))
        noise = torch.rand((size, size), generator=g)
        maps.append(sharpness * spot + (0.25 + 0.75 * (1 - sharpness)) * 0.5 * noise)
    return torch.stack(maps)[None]


def _pil(image):
    """The first picture of a ComfyUI IMAGE ``[B, H, W, 3]`` as a PIL image."""
    import torch
    from PIL import Image

    return Image.fromarray((image[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())


def illustration_parts(t: Template) -> list:
    """The pictures an illustration thumbnail shows (PIL images), drawn by Enfoque's renderer."""
    import zlib

    import torch

    render, AttentionMaps = _render()
    seed = zlib.crc32(t.name.encode())
    if t.picture == "weights":
        words = template_words(t)
        weights = dict((w.strip(), float(v)) for w, v in (x.split(":") for x in next(
            n for n in t.nodes if n.type == "EnfoqueTokenWeights").widgets[0].split(",")))
        base = synthetic_maps(len(words), seed)
        scale = torch.tensor([next((v for w, v in weights.items() if w in word.split()), 1.0) for word in words])
        rows = []
        for title, maps in (("without weights", base), (", ".join(f"{w}:{v:g}" for w, v in weights.items()),
                                                          base * scale[None, :, None, None])):
            panels = render.heatmap_panels(AttentionMaps(maps=maps, words=words), columns=len(words))
            rows.append(render.titled(panels, title))
        return [_pil(torch.cat(rows, dim=1))]
    if t.picture in ("steps", "frames"):
        words = template_words(t)
        if t.picture == "steps":
            total = next(n for n in t.nodes if n.type == "KSampler").widgets[2]
            ticks = [1, total // 4, total // 2, total]
            frames = [(f"step {k}  sigma {3 * (1 - (k - 1) / total) / (1 + 2 * (1 - (k - 1) / total)):.3f}",
                       synthetic_maps(len(words), seed, sharpness=k / total)) for k in ticks]
        else:
            ticks = [0, 3, 6, 8]
            frames = [(f"latent frame {k}", synthetic_maps(len(words), seed, shift=0.04 * k - 0.16)) for k in ticks]
        pictures = []
        for i, (caption, maps) in enumerate(frames):
            panels = render.heatmap_panels(AttentionMaps(maps=maps, words=words), columns=len(words))
            pictures.append(_pil(render.titled(panels, f"{caption}   ({ticks[i] + (t.picture == 'frames')}/"
                                                        f"{ticks[-1] + (t.picture == 'frames')})")))
        return [_grid(pictures, 2)]
    if t.picture == "regions":  # each region's mask, captioned with its words, beside the maps
        regions = [n for n in t.nodes if n.type == "EnfoqueRegion"]
        x = torch.linspace(0, 1, 40)[None, :].expand(40, 40)
        masks = torch.stack([(x < 0.5).float() if i == 0 else (x >= 0.5).float() for i in range(len(regions))])
        region_panels = render.heatmap_panels(AttentionMaps(maps=masks[None], words=[f"region: {n.widgets[0]}"
                                                                                      for n in regions]),
                                              columns=len(regions))
        words = template_words(t)
        panels = render.heatmap_panels(AttentionMaps(maps=synthetic_maps(len(words), seed), words=words),
                                       columns=len(words))
        return [_pil(render.titled(region_panels, "the regions")), _pil(render.titled(panels, "the maps"))]
    words = template_words(t)
    maps = synthetic_maps(len(words), seed)
    return [_pil(render.heatmap_panels(AttentionMaps(maps=maps, words=words), columns=2 if len(words) <= 4 else 3))]


def _grid(pictures: list, columns: int, gap: int = 8):
    from PIL import Image

    w, h = pictures[0].size
    rows = -(-len(pictures) // columns)
    out = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), THUMB_BG)
    for i, p in enumerate(pictures):
        out.paste(p, ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return out


def compose(parts: list, badge: str, text: str):
    """The thumbnail: a badge (what the picture is) and a line of text on top, then ``parts`` side by
    side at one height, as large as the rest of the picture allows."""
    from PIL import Image, ImageDraw

    render, _ = _render()
    width, height = THUMB_SIZE
    pad, top = 16, 90
    canvas = Image.new("RGB", THUMB_SIZE, THUMB_BG)
    draw = ImageDraw.Draw(canvas)
    font = render.load_font(30)
    left, ftop, right, fbottom = font.getbbox(badge)
    bw = right - left + 28
    draw.rounded_rectangle((pad, 14, pad + bw, 58), radius=8, fill=BADGES[badge])
    draw.text((pad + 14 - left, 36 - (ftop + fbottom) / 2), badge, fill=(0, 0, 0), font=font)
    small = render.load_font(19)
    lines = _wrap(text, small, width - 3 * pad - bw)
    for i, line in enumerate(lines[:3]):
        draw.text((2 * pad + bw, 16 + 22 * i + (11 if len(lines) == 1 else 0)), line, fill=(225, 225, 225), font=small)
    gap = 12
    avail_w, avail_h = width - 2 * pad - gap * (len(parts) - 1), height - top - pad
    h = min(avail_h, avail_w / sum(p.width / p.height for p in parts))
    sizes = [(round(p.width * h / p.height), round(h)) for p in parts]
    x = (width - sum(w for w, _ in sizes) - gap * (len(parts) - 1)) // 2
    y = top + (avail_h - round(h)) // 2
    for p, (w, hh) in zip(parts, sizes, strict=True):
        canvas.paste(p.resize((w, hh), Image.Resampling.LANCZOS), (x, y))
        x += w + gap
    return canvas


def _wrap(text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def illustration(t: Template):
    model = t.name.split(" - ")[0]
    return compose(illustration_parts(t), ILLUSTRATION,
                   f"Synthetic maps with this template's words, drawn by Enfoque's renderer; not {model}'s "
                   "output.")


def shapes_outputs(server, t: Template) -> dict[str, list]:
    """Queue a shapes template in a live server (the shapes model installed, tools/shapes.py) as the frontend
    queues it; the pictures it shows, by the key of their node (the loaded picture under the LoadImage's)."""
    from PIL import Image

    wf = build(t)  # also gives the nodes their ids
    by_id = {str(n.id): n.key for n in t.nodes}
    entry = server.run(api_prompt(wf, server.object_info()), timeout=300)
    out: dict[str, list] = {}
    for nid, o in entry["outputs"].items():
        for im in o.get("images", []):
            path = server.base_dir / im.get("type", "output") / im.get("subfolder", "") / im["filename"]
            with Image.open(path) as f:
                out.setdefault(by_id[nid], []).append(f.convert("RGB"))
    for n in t.nodes:
        if n.type == "LoadImage":
            with Image.open(server.input_dir / n.widgets[0]) as f:
                out[n.key] = [f.convert("RGB")]
    return out


def shapes_thumbnail(t: Template, outputs: dict[str, list]):
    """The picture and the Enfoque Heatmaps a shapes template showed after its run."""
    picture = (outputs.get("save") or outputs["image"])[0]
    heat = [outputs[k][0] for k in ("heat", "cheat", "mask", "save2") if k in outputs]
    seed = next((n.widgets[0] for n in t.nodes if n.type == "KSampler"), None)
    made = "drawn by the shapes model" + (f" (seed {seed})" if seed is not None else "")
    what = "the loaded picture and its maps" if "image" in outputs else f"the picture {made} and its maps"
    text = f"This template's own output, run on the shapes model: {what}."
    if "save2" in outputs:
        text = ("This template's own output on the shapes model: a picture, the mask from one word's map, and a second "
                "picture with the region's words inside the mask.")
    return compose([picture, *heat], REAL_OUTPUT, text)


def save_thumbnail(image, path: Path) -> None:
    image.save(path, "JPEG", quality=THUMB_QUALITY, optimize=True)


def thumbnails(server_run: bool = True) -> list[Path]:
    """Write every template's thumbnail; the shapes ones in a live server (ComfyUI host: tests/host.py)."""
    written = []
    shapes_templates = []
    for make in TEMPLATES:
        t = make()
        if t.picture == "shapes":
            shapes_templates.append(t)
            continue
        save_thumbnail(illustration(t), OUT / f"{t.name}.jpg")
        written.append(OUT / f"{t.name}.jpg")
    if server_run and shapes_templates:
        import tempfile

        sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools")]
        import host
        import shapes

        comfy_path = host.find_comfyui()
        if comfy_path is None:
            raise SystemExit(f"thumbnails: {host.NO_HOST_REASON}")
        with tempfile.TemporaryDirectory() as base:
            server = host.ComfyServer(comfy_path, Path(base))
            server.start()
            try:
                shapes.install(server.models_dir)
                shapes.write_example(server.input_dir)
                server.wait_ready()
                for t in shapes_templates:
                    save_thumbnail(shapes_thumbnail(t, shapes_outputs(server, t)), OUT / f"{t.name}.jpg")
                    written.append(OUT / f"{t.name}.jpg")
            except Exception:
                print(server.log()[-4000:], file=sys.stderr)
                raise
            finally:
                server.stop()
    return written


def render(t: Template) -> str:
    return json.dumps(build(t), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["thumbnails"]:
        for path in thumbnails(server_run="--illustrations" not in argv):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    check = "--check" in argv
    stale = []
    for make in TEMPLATES:
        t = make()
        path = OUT / f"{t.name}.json"
        text = render(t)
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run tools/templates.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
