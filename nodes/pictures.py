"""Enfoque Heatmaps and Enfoque Maps To Mask: pictures and masks made from maps."""

from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io, ui

from ..attention.colormaps import COLORMAPS
from ..attention.formats import listed
from ..attention.frames import FramedMaps
from ..attention.maps import AttentionMaps, resize, select, to_mask
from ..attention.render import heatmap_panels, titled
from ..attention.upsample import UPSCALE, guided
from .common.errors import check_option, in_node
from .common.notify import notify
from .common.previews import chips
from .names import ATTENTION_MAPS, HEATMAPS, MAPS_TO_MASK, PATCH_MODEL
from .sockets import MAPS_FROM, Maps, check_maps, schema

log = logging.getLogger(__name__)

HEATMAP_NORMALISATIONS = ["minmax", "text", "softmax", "none"]
PANEL_GAP = 4  # px between the panels of attention/render.py's heatmap_panels (its _GAP)
OVER = ["mean", "steps", "blocks", "frames"]

MAX_FRAMES_BYTES = 2 * 2**30  # the IMAGE batch of every frame together (float32)
MAX_SIZE = 16384
SIZE_TIP = ("0 = the image size recorded in the maps (else the map size). With only one of width/height "
            "set, the other keeps the maps' aspect ratio.")


class EnfoqueHeatmaps(io.ComfyNode):
    """Captioned heatmap panels, one per word, alone or blended over the image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueHeatmaps", inputs=[
                Maps.Input("maps", tooltip=MAPS_FROM),
                io.Image.Input("image", optional=True,
                               tooltip="The decoded image to draw the heatmaps over; without it they are shown alone."),
                io.Combo.Input("colormap", options=list(COLORMAPS), default="viridis",
                               tooltip="Colour scale from low to high attention."),
                io.Float.Input("opacity", default=0.6, min=0.0, max=1.0, step=0.05,
                               tooltip="Heatmap opacity over the image: 0 = image only, 1 = heatmap only."),
                io.Combo.Input("normalisation", options=HEATMAP_NORMALISATIONS, default="minmax",
                               tooltip="minmax: each word on its own 0..1 scale (where it attends); text: share of "
                               "the shown words at each pixel; softmax: contest between words; none: raw values."),
                io.Int.Input("columns", default=0, min=0, max=64, tooltip="Panels per row; 0 = automatic (about square)."),
                io.Combo.Input("over", options=OVER, default="mean", optional=True,
                               tooltip="mean: one picture of the maps as given. steps: one picture per sampling step "
                               f"(needs keep_steps on {PATCH_MODEL}); blocks: one per block (needs keep_blocks); "
                               "frames: one per latent frame of a video model (Wan). Each picture is captioned with "
                               "the step and its sigma, the block or the frame; images of a batch sit side by side."),
                io.Combo.Input("upscale", options=list(UPSCALE), default="bilinear", optional=True,
                               tooltip="How the maps reach the picture's size: bilinear (smooth, the token grid's "
                               "blocks show), or guided: each pixel takes its value from the nearby cells whose colour matches its "
                               "own (joint bilateral), so the maps follow the picture's edges (needs the image input; "
                               "a few seconds per word at 1024 px on a CPU)."),
            ],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,  # shows its picture (and the word chips) with nothing attached
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, maps, colormap, opacity, normalisation, columns, image=None, over="mean", upscale="bilinear"
    ) -> io.NodeOutput:
        node = HEATMAPS
        maps = check_maps(maps, node)
        check_option(node, "colormap", colormap, COLORMAPS)
        check_option(node, "normalisation", normalisation, HEATMAP_NORMALISATIONS)
        check_option(node, "over", over, OVER)
        check_option(node, "upscale", upscale, UPSCALE)
        if upscale == "guided" and image is None:
            say(node, cls.hidden.unique_id if cls.hidden else None, "upscale guided needs the picture (the image "
                "input) to follow its edges; the maps are drawn bilinear. Connect the image, or set upscale to "
                "bilinear.")
        if len(maps.words) == 0:
            raise ValueError(
                f"{node}: the maps hold no words (an empty prompt or an empty selection); give the prompt some "
                f"words, or leave words empty on {ATTENTION_MAPS}."
            )
        draw = {
            "image": image,
            "colormap": colormap,
            "opacity": float(opacity),
            "normalisation": normalisation,
            "columns": int(columns) if int(columns) > 0 else None,
            "upscale": upscale,
        }
        canvas: dict = {}
        try:
            if over == "mean":
                picture = heatmap_panels(maps, **draw)
                canvas = {"top": 0, "height": int(picture.shape[1]), "width": int(picture.shape[2])}
            else:
                picture = frame_pictures(maps, over, node, draw, canvas)
        except ValueError as exc:
            raise in_node(node, exc) from exc
        payload = ui.PreviewImage(picture, cls=cls).as_dict()
        frames = list(getattr(maps, over, ())) if over != "mean" else None
        payload.update(chips(maps, image, colormap, float(opacity), normalisation, frames=frames))
        payload["enfoque_panels"] = [panel_layout(maps, image, draw["columns"], canvas)]
        return io.NodeOutput(picture, ui=payload)


def panel_layout(maps: AttentionMaps, image, columns: int | None, canvas: dict) -> dict:
    """Where each word's map sits in the pictures (for pointing at a pixel in the frontend), in picture
    pixels: the panels of the first image start ``top`` px down (below a frame's caption bar) and take
    ``width`` px across (the next image of a batch follows to the right); panel k is at column k %
    ``columns``, row k // ``columns``, each cell ``cell_w`` x ``cell_h`` px (map, then its caption),
    ``gap`` px apart; its map is the top-left ``map_w`` x ``map_h`` px of the cell."""
    n = len(maps.words)
    cols = min(int(columns), n) if columns else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    width, height = int(canvas["width"]), int(canvas["height"])
    cell_w = (width - (cols - 1) * PANEL_GAP) // cols
    cell_h = (height - (rows - 1) * PANEL_GAP) // rows
    if image is not None:
        map_h = int(torch.as_tensor(image).shape[-3])
    else:  # maps alone: the token grid scaled to the panel's width, aspect kept
        mh, mw = maps.size
        map_h = min(cell_h, round(cell_w * mh / mw))
    return {"top": int(canvas["top"]), "width": width, "columns": cols, "rows": rows, "cell_w": cell_w,
            "cell_h": cell_h, "map_w": cell_w, "map_h": map_h, "gap": PANEL_GAP, "count": n}


def frame_pictures(maps: AttentionMaps, over: str, node: str, draw: dict, canvas: dict | None = None) -> torch.Tensor:
    """One heatmap picture per kept step or block, captioned with it: ``[frames, H, W, 3]``. ``canvas``, if
    given, is filled with where the first image's panels are in a picture: ``top`` (the caption bar's
    height), ``height`` and ``width`` of its panel grid."""
    kind = over[:-1]
    frames = getattr(maps, over, ()) if isinstance(maps, FramedMaps) else ()
    if not frames and over == "frames":
        raise ValueError(
            f"{node}: over 'frames' needs the maps of each latent frame of a video, and these maps have none "
            "(an image model, or maps loaded from a file, which keep only the mean). Set over to mean, steps "
            "or blocks."
        )
    if not frames:
        raise ValueError(
            f"{node}: over {over!r} needs the maps of each {kind}, and these maps hold only their mean. Turn on "
            f"keep_{over} on {PATCH_MODEL} and run again (maps loaded from a file keep only the mean), or set "
            "over to mean."
        )
    pictures = []
    for i, frame in enumerate(frames):
        panels = heatmap_panels(AttentionMaps(maps=frame.maps, words=maps.words, meta=maps.meta), **draw)
        picture = titled(torch.cat(list(panels), dim=1)[None], f"{frame.caption}   ({i + 1}/{len(frames)})")
        if i == 0 and canvas is not None:
            canvas.update(top=int(picture.shape[1] - panels.shape[1]), height=int(panels.shape[1]),
                          width=int(panels.shape[2]))
        if i == 0 and picture.numel() * 4 * len(frames) > MAX_FRAMES_BYTES:
            raise ValueError(
                f"{node}: {len(frames)} frames of {picture.shape[2]}x{picture.shape[1]} px need "
                f"{picture.numel() * 4 * len(frames) / 2**30:.1f} GB, over {MAX_FRAMES_BYTES / 2**30:.0f} GB; draw "
                f"fewer words ({ATTENTION_MAPS}' words), a smaller image, or fewer {over}."
            )
        pictures.append(picture)
    return torch.cat(pictures)


def _mask_size(maps: AttentionMaps, width: int, height: int, node: str) -> tuple[int, int]:
    """(H, W) of the mask: both given; one given (the other keeps the maps' aspect); else the image size."""
    mh, mw = maps.size
    width, height = int(width), int(height)
    if width < 0 or height < 0:
        raise ValueError(f"{node}: width {width} or height {height} is negative; set each to 0 (automatic) or "
                         "a size in pixels.")
    if width and height:
        return height, width
    if width:
        return max(1, round(width * mh / mw)), width
    if height:
        return height, max(1, round(height * mw / mh))
    size = maps.meta.get("image_size")
    if (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIZE for s in size)
    ):
        return int(size[0]), int(size[1])
    return mh, mw


def guide_at(image, size: tuple[int, int], node: str) -> tuple[torch.Tensor, str]:
    """The picture as the guide of a mask of ``size``, resized where it has another size (and what to say
    about it)."""
    img = torch.as_tensor(image).detach().to("cpu", torch.float32)
    img = img if img.ndim == 4 else img[None]
    if tuple(img.shape[1:3]) == tuple(size):
        return img, ""
    note = (f"{node}: the image is {img.shape[2]}x{img.shape[1]} px and the maps' picture {size[1]}x{size[0]}; "
            "the image was resized to guide the mask. Connect the picture the maps were made of (or set width "
            "and height to its size).")
    return resize(img.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).clamp(0.0, 1.0), note


def say(node: str, node_id: str | None, text: str) -> None:
    """A notice in the log and on the node."""
    log.warning("%s: %s", node, text)
    notify(node_id, f"{node}: {text}")


class EnfoqueMapsToMask(io.ComfyNode):
    """A MASK where the chosen words are attended (for inpainting, regional prompts, compositing)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueMapsToMask", inputs=[
                Maps.Input("maps", tooltip=MAPS_FROM),
                io.String.Input("words", default="", tooltip="Words or phrases, comma separated (e.g. 'cat, red fur'), "
                                "by the same rule as every words input; empty = all words."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Where the mask starts, on each map scaled to 0..1: pixels at or above it are "
                               "in the mask. 0 = automatic per image: the cut that best separates attended from "
                               "unattended pixels (Otsu's method)."),
                io.Int.Input("width", default=0, min=0, max=MAX_SIZE, step=1, optional=True,
                             tooltip=f"Mask width; {SIZE_TIP}"),
                io.Int.Input("height", default=0, min=0, max=MAX_SIZE, step=1, optional=True,
                             tooltip=f"Mask height; {SIZE_TIP}"),
                io.Image.Input("image", optional=True,
                               tooltip="The picture the maps are of: the mask then follows its edges (the maps "
                               "are upsampled guided by it). Resized to the mask's size if it differs."),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
            is_output_node=True,  # shows its mask with nothing attached
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, maps, words, threshold, width=0, height=0, image=None) -> io.NodeOutput:
        node = MAPS_TO_MASK
        maps = check_maps(maps, node)
        t = float(threshold)
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"{node}: threshold {threshold} is outside 0..1; set it between 0 and 1 "
                             "(0 = automatic).")
        size = _mask_size(maps, width, height, node)
        try:
            chosen = select(maps, words or "")
        except ValueError as exc:
            raise in_node(node, exc, "Pick words from these, or leave words empty for all of them.") from exc
        if len(chosen.words) == 0:
            raise ValueError(f"{node}: the maps hold no words (an empty prompt?); give the prompt some words.")
        resample, resized = None, ""
        if image is not None:
            guide, resized = guide_at(image, size, node)
            resample = lambda m, _size: guided(m, guide)  # noqa: E731
        try:
            mask = to_mask(chosen, threshold=t, size=size, resample=resample)
        except ValueError as exc:
            raise in_node(node, exc) from exc
        notice = " ".join(n for n in (resized, empty_mask_notice(chosen, mask, t)) if n)
        if notice:
            log.warning("%s", notice)
        notify(cls.hidden.unique_id if cls.hidden else None, notice)
        return io.NodeOutput(mask, ui=ui.PreviewMask(mask, cls=cls))


def empty_mask_notice(chosen: AttentionMaps, mask: torch.Tensor, threshold: float) -> str:
    """What Enfoque Maps To Mask says when (part of) its mask is black for a reason a user can fix: a
    selected word with no attention anywhere (a word weighted 0 is removed from attention), or a
    threshold no pixel reaches; "" when neither."""
    node = MAPS_TO_MASK
    silent = [w for k, w in enumerate(chosen.words) if not bool((chosen.maps[:, k] != 0).any())]
    black = not bool(mask.any())
    if silent:
        which = listed(silent, quote=True)
        verb = "gets" if len(silent) == 1 else "get"
        tail = "so the mask is black" if black else "so it adds nothing to the mask" if len(silent) == 1 \
            else "so they add nothing to the mask"
        return (f"{node}: {which} {verb} no attention anywhere in these maps (a word weighted 0 is removed from "
                f"attention), {tail}. Give it a weight above 0, or pick other words.")
    if black:
        how = f"threshold {threshold:g}" if threshold > 0 else "the automatic threshold (the maps are flat)"
        return (f"{node}: no pixel reaches {how}, so the mask is black. Lower threshold, or pick other words.")
    return ""


