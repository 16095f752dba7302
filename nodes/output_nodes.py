"""Output nodes: heatmap pictures, masks, and saving/loading ENFOQUE_MAPS files.

Thin glue: validate, call one function of `attention/` (render, maps, export),
return `io.NodeOutput`. Files go through ComfyUI's own path helpers, so a
prefix cannot escape the output folder and names never collide.
"""

from __future__ import annotations

import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageDraw

from ..attention import export
from ..attention.colormaps import COLORMAPS, apply_colormap
from ..attention.maps import AttentionMaps, normalise, resize, select, share_of_text, to_mask
from ..attention.render import heatmap_panels, load_font
from .types import (
    ATTENTION_MAPS,
    DISPLAY_NAMES,
    HEATMAPS,
    LOAD_MAPS,
    MAPS_TO_MASK,
    PATCH_MODEL,
    SAVE_MAPS,
    FramedMaps,
    Maps,
)

log = logging.getLogger(__name__)

CATEGORY = "Enfoque"
HEATMAP_NORMALISATIONS = ["minmax", "text", "softmax", "none"]
OVER = ["mean", "steps", "blocks", "frames"]
MAX_FRAMES_BYTES = 2 * 2**30  # the IMAGE batch of every frame together (float32)
MAPS_FROM = f"Attention maps from {ATTENTION_MAPS} or {LOAD_MAPS}."
MAX_SIZE = 16384
_SAVE_RETRIES = 100


def check_maps(maps: Any, node: str) -> AttentionMaps:
    """The ENFOQUE_MAPS value, checked again here because tensors stay mutable after creation."""
    if not isinstance(maps, AttentionMaps):
        raise ValueError(
            f"{node}: maps is {type(maps).__name__}, not ENFOQUE_MAPS; connect the maps output of "
            f"{ATTENTION_MAPS} or {LOAD_MAPS}."
        )
    if not bool(torch.isfinite(maps.maps).all()):
        raise ValueError(
            f"{node}: the attention maps contain NaN or inf values, so nothing can be drawn or saved. "
            "Re-run the sampling (a model or precision problem produced them), e.g. with fp32 or another sampler."
        )
    return maps


def _brief(text: Any, limit: int = 80) -> str:
    """User text as quoted in an error message: at most `limit` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_INTERNAL_PREFIX = re.compile(r"^(?:[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*: )+")


def engine_message(exc: Exception) -> str:
    """An engine error as a user reads it: no internal function name in front, nodes by their display names."""
    text = _INTERNAL_PREFIX.sub("", str(exc))
    for node_id, name in DISPLAY_NAMES.items():
        text = re.sub(rf"\b{node_id}\b", name, text)
    return text


def _output(node: str, exc: Exception, fix: str = "") -> ValueError:
    """An engine error with the node's display name in front (once), and the fix if the engine gave none."""
    return ValueError(f"{node}: {engine_message(exc)}{' ' + fix if fix else ''}")


# ---------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------


class EnfoqueHeatmaps(io.ComfyNode):
    """Captioned heatmap panels, one per word, alone or blended over the image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueHeatmaps",
            display_name=HEATMAPS,
            category=CATEGORY,
            description="One captioned heatmap per word ('cat 23%': its share of the attention over the words "
            "shown), laid out in a grid; blended over the image when one is connected. With over = steps or "
            "blocks, one such picture per sampling step or per block: an IMAGE batch that Save Animated WEBP "
            "turns into an animation.",
            inputs=[
                Maps.Input("maps", tooltip=MAPS_FROM),
                io.Image.Input(
                    "image",
                    optional=True,
                    tooltip="The decoded image to draw the heatmaps over; without it they are shown alone.",
                ),
                io.Combo.Input(
                    "colormap",
                    options=list(COLORMAPS),
                    default="viridis",
                    tooltip="Colour scale from low to high attention.",
                ),
                io.Float.Input(
                    "opacity",
                    default=0.6,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Heatmap opacity over the image: 0 = image only, 1 = heatmap only.",
                ),
                io.Combo.Input(
                    "normalisation",
                    options=HEATMAP_NORMALISATIONS,
                    default="minmax",
                    tooltip="minmax: each word on its own 0..1 scale (where it attends); text: share of "
                    "the shown words at each pixel; softmax: contest between words; none: raw values.",
                ),
                io.Int.Input(
                    "columns",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="Panels per row; 0 = automatic (about square).",
                ),
                io.Combo.Input(
                    "over",
                    options=OVER,
                    default="mean",
                    optional=True,
                    tooltip="mean: one picture of the maps as given. steps: one picture per sampling step "
                    f"(needs keep_steps on {PATCH_MODEL}); blocks: one per block (needs keep_blocks); frames: one "
                    "per latent frame of a video model (Wan). Each picture is captioned with the step and its "
                    "sigma, the block or the frame; images of a batch sit side by side.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,  # shows its picture (and the word chips) with nothing attached
        )

    @classmethod
    def execute(
        cls, maps, colormap, opacity, normalisation, columns, image=None, over="mean"
    ) -> io.NodeOutput:
        node = HEATMAPS
        maps = check_maps(maps, node)
        for name, value, options in (
            ("colormap", colormap, list(COLORMAPS)),
            ("normalisation", normalisation, HEATMAP_NORMALISATIONS),
            ("over", over, OVER),
        ):
            if value not in options:
                raise ValueError(
                    f"{node}: {name} {_brief(value)!r} is not an option; options: {', '.join(options)}. "
                    "Pick one of them."
                )
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
        }
        try:
            picture = heatmap_panels(maps, **draw) if over == "mean" else frame_pictures(maps, over, node, draw)
        except ValueError as exc:
            if str(exc).startswith(f"{node}: "):
                raise
            raise _output(node, exc) from exc
        payload = ui.PreviewImage(picture, cls=cls).as_dict()
        payload["enfoque_words"] = list(maps.words)
        payload["enfoque_shares"] = [
            [round(float(s), 6) for s in row] for row in share_of_text(maps).tolist()
        ]
        payload["enfoque_word_images"] = word_preview_images(maps, image, colormap, float(opacity), normalisation)
        return io.NodeOutput(picture, ui=payload)


def frame_pictures(maps: AttentionMaps, over: str, node: str, draw: dict) -> torch.Tensor:
    """One heatmap picture per kept step or block, captioned with it: ``[frames, H, W, 3]``."""
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
        picture = _titled(torch.cat(list(panels), dim=1)[None], f"{frame.caption}   ({i + 1}/{len(frames)})")
        if i == 0 and picture.numel() * 4 * len(frames) > MAX_FRAMES_BYTES:
            raise ValueError(
                f"{node}: {len(frames)} frames of {picture.shape[2]}x{picture.shape[1]} px need "
                f"{picture.numel() * 4 * len(frames) / 2**30:.1f} GB, over {MAX_FRAMES_BYTES / 2**30:.0f} GB; draw "
                f"fewer words ({ATTENTION_MAPS}' words), a smaller image, or fewer {over}."
            )
        pictures.append(picture)
    return torch.cat(pictures)


def _titled(picture: torch.Tensor, title: str) -> torch.Tensor:
    """``[1, H, W, 3]`` with a caption bar on top."""
    w = int(picture.shape[2])
    font = load_font(max(12, min(28, round(w / 40))))
    left, top, right, bottom = font.getbbox("Ag%|")
    pad = max(2, int(bottom - top) // 3)
    bar = int(math.ceil(bottom - min(top, 0))) + 2 * pad
    canvas = Image.new("RGB", (w, bar), (0, 0, 0))
    ImageDraw.Draw(canvas).text((pad, pad), title, fill=(255, 255, 255), font=font)
    head = torch.from_numpy(np.asarray(canvas).copy()).to(torch.float32).div_(255.0)[None]
    return torch.cat([head, picture], dim=1)


WORD_PREVIEW_MAX_SIDE = 512  # per-word previews for the frontend's hover view stay small
WORD_PREVIEW_MAX_WORDS = 128  # more words (e.g. unlabelled '#12' positions) get no preview
WORD_PREVIEW_SUBFOLDER = "enfoque"


def _preview_size(h: int, w: int) -> tuple[int, int]:
    """(H, W) scaled down (never up) so the long side is at most WORD_PREVIEW_MAX_SIDE."""
    scale = min(1.0, WORD_PREVIEW_MAX_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def word_preview_images(
    maps: AttentionMaps,
    image: torch.Tensor | None = None,
    colormap: str = "viridis",
    opacity: float = 0.6,
    normalisation: str = "minmax",
) -> list[dict[str, str] | None]:
    """One small PNG per word (first batch row) in ComfyUI's temp folder, for the frontend's word chips.

    Each is that word's heatmap, normalised like the panels (over all words, so 'text'/'softmax' stay
    comparable), blended over the first image when one is given, without a caption (the chip shows the
    word and its share). Returns ComfyUI preview entries ``{"filename", "subfolder", "type": "temp"}`` in
    the order of ``maps.words`` (None past the first ``WORD_PREVIEW_MAX_WORDS``); the frontend loads them
    with ``/view``. The temp folder is emptied when ComfyUI starts.
    """
    n = len(maps.words)
    if n == 0:
        return []
    raw = maps.maps.detach().to("cpu", torch.float32)[:1]
    normed = normalise(raw, normalisation).clamp_(0.0, 1.0)[0]  # [n, h, w]
    base = None
    if image is not None:
        img = torch.as_tensor(image).detach().to("cpu", torch.float32)
        img = img if img.ndim == 4 else img.unsqueeze(0)
        first = img[0]
        first = first[..., :3] if first.shape[-1] >= 3 else first[..., :1].expand(*first.shape[:-1], 3)
        ph, pw = _preview_size(int(first.shape[0]), int(first.shape[1]))
        base = resize(first.permute(2, 0, 1).clamp(0.0, 1.0), (ph, pw)).clamp_(0.0, 1.0).permute(1, 2, 0)
    else:  # maps alone: token grids upscaled to a readable size, as the panels are
        h, w = int(normed.shape[-2]), int(normed.shape[-1])
        up = max(1.0, 256 / min(h, w))
        ph, pw = _preview_size(round(h * up), round(w * up))
    folder = Path(folder_paths.get_temp_directory()) / WORD_PREVIEW_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"words_{uuid.uuid4().hex[:12]}"
    out: list[dict[str, str] | None] = []
    for i in range(min(n, WORD_PREVIEW_MAX_WORDS)):  # one at a time: memory stays one picture
        heat = apply_colormap(resize(normed[i], (ph, pw)).clamp_(0.0, 1.0), colormap)  # [ph, pw, 3]
        if base is not None:
            heat = base * (1.0 - opacity) + heat * opacity
        pixels = (heat.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()
        name = f"{stem}_{i:03}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / name, compress_level=1)
        out.append({"filename": name, "subfolder": WORD_PREVIEW_SUBFOLDER, "type": "temp"})
    out.extend([None] * (n - len(out)))
    return out


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


class EnfoqueMapsToMask(io.ComfyNode):
    """A MASK where the chosen words are attended (for inpainting, regional prompts, compositing)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueMapsToMask",
            display_name=MAPS_TO_MASK,
            category=CATEGORY,
            description="Thresholds the attention of the chosen words into a MASK at the image size. Several words "
            "are combined by a max: a pixel is in the mask if any of them attends there.",
            inputs=[
                Maps.Input("maps", tooltip=MAPS_FROM),
                io.String.Input(
                    "words",
                    default="",
                    tooltip="Words or phrases, comma separated (e.g. 'cat, red fur'); empty = all words.",
                ),
                io.Float.Input(
                    "threshold",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Where the mask starts, on each map scaled to 0..1: pixels at or above it are in "
                    "the mask. 0 = automatic per image: the cut that best separates attended from unattended "
                    "pixels (Otsu's method).",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=MAX_SIZE,
                    step=1,
                    optional=True,
                    tooltip="Mask width; 0 = the image size recorded in the maps (else the map size). "
                    "With only one of width/height set, the other keeps the maps' aspect ratio.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=MAX_SIZE,
                    step=1,
                    optional=True,
                    tooltip="Mask height; 0 = the image size recorded in the maps (else the map size). "
                    "With only one of width/height set, the other keeps the maps' aspect ratio.",
                ),
            ],
            outputs=[io.Mask.Output(display_name="mask")],
            is_output_node=True,  # shows its mask with nothing attached
        )

    @classmethod
    def execute(cls, maps, words, threshold, width=0, height=0) -> io.NodeOutput:
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
            raise _output(node, exc, "Pick words from these, or leave words empty for all of them.") from exc
        if len(chosen.words) == 0:
            raise ValueError(f"{node}: the maps hold no words (an empty prompt?); give the prompt some words.")
        try:
            mask = to_mask(chosen, threshold=t, size=size)
        except ValueError as exc:
            raise _output(node, exc) from exc
        return io.NodeOutput(mask, ui=ui.PreviewMask(mask, cls=cls))


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


class EnfoqueSaveAttentionMaps(io.ComfyNode):
    """Writes the maps to ComfyUI's output folder for analysis outside ComfyUI."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueSaveAttentionMaps",
            display_name=SAVE_MAPS,
            category=CATEGORY,
            description="Saves the maps with their words and provenance: safetensors or npz (tensor 'maps' "
            "[batch, words, H, W] float32 + JSON metadata, exact), or 16-bit PNGs with a JSON sidecar "
            "(within 1/131070 of each map's range). Never overwrites a file.",
            inputs=[
                Maps.Input("maps", tooltip=MAPS_FROM),
                io.String.Input(
                    "filename_prefix",
                    default="enfoque/maps",
                    tooltip="Inside the output folder; a counter is appended, e.g. "
                    "enfoque/maps_00001_.safetensors. %date% style variables work as in SaveImage.",
                ),
                io.Combo.Input(
                    "format",
                    options=list(export.FORMATS),
                    default="safetensors",
                    tooltip="safetensors / npz: exact float32 with metadata. png: one 16-bit grayscale "
                    "image per word and batch row plus a .json sidecar (load that one back).",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, maps, filename_prefix, format) -> io.NodeOutput:
        node = SAVE_MAPS
        maps = check_maps(maps, node)
        if format not in export.FORMATS:
            raise ValueError(
                f"{node}: format {_brief(format)!r} is not an option; options: {', '.join(export.FORMATS)}. "
                "Pick one of them."
            )
        prefix = (filename_prefix or "").strip()
        if not prefix or os.path.basename(os.path.normpath(prefix)) in ("", ".", ".."):
            raise ValueError(
                f"{node}: filename_prefix {_brief(filename_prefix)!r} has no file name; use e.g. 'enfoque/maps'."
            )
        output_dir = os.path.abspath(folder_paths.get_output_directory())
        h, w = maps.size
        try:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                prefix, output_dir, w, h
            )
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise ValueError(
                f"{node}: filename_prefix {_brief(filename_prefix)!r} cannot be used as a folder/file name "
                f"({exc.strerror or exc}); use a shorter prefix such as 'enfoque/maps'."
            ) from exc
        except Exception as exc:  # ComfyUI raises a bare Exception for paths outside the output folder
            raise ValueError(
                f"{node}: filename_prefix {_brief(filename_prefix)!r} points outside the output folder; "
                "use a relative prefix such as 'enfoque/maps'."
            ) from exc

        # another save may take the same counter meanwhile: move on to the next, never overwrite
        for _ in range(_SAVE_RETRIES):
            try:
                paths = cls._save(maps, Path(folder), f"{filename}_{counter:05}_", format)
                break
            except FileExistsError:
                counter += 1
            except ValueError as exc:
                raise _output(node, exc) from exc
            except OSError as exc:  # e.g. a file name longer than the file system allows
                raise ValueError(
                    f"{node}: cannot write {_brief(filename_prefix)!r} to the output folder "
                    f"({exc.strerror or exc}); use a shorter filename_prefix such as 'enfoque/maps'."
                ) from exc
        else:
            raise ValueError(f"{node}: could not find a free file name for {_brief(filename_prefix)!r} in {folder}; "
                             "use another filename_prefix.")

        subfolder = subfolder.replace(os.sep, "/")
        results = [ui.SavedResult(p.name, subfolder, io.FolderType.output) for p in paths]
        log.info(
            "%s: saved %s", node, ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
        )
        payload: dict[str, list] = {"enfoque_files": [dict(r) for r in results[:1]]}
        if format == "png":
            payload["images"] = results[1:]
        return io.NodeOutput(ui=payload)

    @staticmethod
    def _save(maps: AttentionMaps, folder: Path, stem: str, fmt: str) -> list[Path]:
        if fmt == "safetensors":
            return [export.save_safetensors(maps, folder / f"{stem}.safetensors")]
        if fmt == "npz":
            return [export.save_npz(maps, folder / f"{stem}.npz")]
        return export.save_png(maps, folder, stem)


def list_maps_files() -> list[str]:
    """Enfoque maps files under the input folder (subfolders included), as '/'-separated relative names."""
    base = folder_paths.get_input_directory()
    names, _ = folder_paths.recursive_search(base, excluded_dir_names=[".git"])
    out = []
    for rel in names:
        parts = Path(rel).parts
        if any(p.startswith(".") for p in parts) or Path(rel).suffix.lower() not in export.EXTENSIONS:
            continue
        if export.is_maps_file(os.path.join(base, rel)):
            out.append(Path(rel).as_posix())
    return sorted(out)


def resolve_file(name: str, node: str) -> Path:
    """The path of `name` in the input folder ('... [output]' also allowed); refuses paths that leave it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"{node}: no file chosen. Put a .safetensors, .npz or PNG-set .json saved by {SAVE_MAPS} "
            "into ComfyUI's input folder, refresh, and pick it."
        )
    rel, base = folder_paths.annotated_filepath(name.strip())
    base = os.path.abspath(base or folder_paths.get_input_directory())
    full = os.path.abspath(os.path.join(base, rel))
    if os.path.commonpath([base, full]) != base:
        raise ValueError(
            f"{node}: file {name!r} is outside ComfyUI's input folder; pick a file from the list."
        )
    path = Path(full)
    if path.suffix.lower() not in export.EXTENSIONS:
        raise ValueError(
            f"{node}: file {name!r} is not a .safetensors, .npz or PNG-set .json sidecar; pick one of those."
        )
    if not path.is_file():
        raise ValueError(
            f"{node}: file {name!r} was not found in {base}; copy it there (or refresh the list) and pick it again."
        )
    return path


class EnfoqueLoadAttentionMaps(io.ComfyNode):
    """Loads maps saved by EnfoqueSaveAttentionMaps, to draw or mask them again without sampling."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueLoadAttentionMaps",
            display_name=LOAD_MAPS,
            category=CATEGORY,
            description=f"Loads attention maps saved by {SAVE_MAPS} from ComfyUI's input folder "
            "(subfolders included): .safetensors, .npz, or the .json sidecar of a PNG set.",
            inputs=[
                io.Combo.Input(
                    "file",
                    options=list_maps_files(),
                    tooltip="A maps file in the input folder. Copy saved files from output/ to input/.",
                ),
            ],
            outputs=[Maps.Output(display_name="maps")],
        )

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        node = LOAD_MAPS
        path = resolve_file(file, node)
        try:
            maps = export.load(path)
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"{node}: cannot load {file!r}: {engine_message(exc)} Save it again with {SAVE_MAPS}, "
                "or pick another file."
            ) from exc
        return io.NodeOutput(maps)

    @classmethod
    def fingerprint_inputs(cls, file) -> str:
        try:
            return export.fingerprint(resolve_file(file, LOAD_MAPS))
        except ValueError as exc:
            return f"invalid: {exc}"

    @classmethod
    def validate_inputs(cls, file) -> bool | str:
        node = LOAD_MAPS
        try:
            path = resolve_file(file, node)
        except ValueError as exc:
            return str(exc)
        if not export.is_maps_file(path):
            return (
                f"{node}: {file!r} is not an Enfoque attention-maps file (no '{export.FORMAT}' metadata); "
                f"pick a file saved by {SAVE_MAPS}."
            )
        return True
