"""What Enfoque Attention Maps and Enfoque Heatmaps hand the frontend's word chips (js/enfoque.js):
the words, each word's share of the text attention, one small heatmap PNG per word in ComfyUI's
temp folder, which the frontend loads with ``/view`` when a chip is hovered, and the maps themselves at
token-grid resolution (small, rounded), so pointing at a pixel of the picture ranks the words there
without a second sampling. Over steps, blocks or frames, the same per frame."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import folder_paths
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...attention.colormaps import apply_colormap
from ...attention.maps import AttentionMaps, normalise, resize, share_of_text

WORD_PREVIEW_MAX_SIDE = 512  # per-word previews for the frontend's hover view stay small
WORD_PREVIEW_MAX_WORDS = 128  # more words (e.g. unlabelled '#12' positions) get no preview
WORD_PREVIEW_SUBFOLDER = "enfoque"
FRAME_PREVIEW_MAX_SIDE = 256  # per-word previews of each frame (over steps / blocks / frames)
FRAME_PREVIEW_MAX_IMAGES = 512  # at most this many of them in one payload; later frames get none
GRID_MAX_VALUES = 16384  # words x cells of the pointing grid of the mean (pooled down to fit)
FRAMES_GRID_MAX_VALUES = 32768  # ... of every frame's grid together
GRID_LEVELS = 9999  # grid values are integers 0..GRID_LEVELS of each word's own scale


def _preview_size(h: int, w: int, max_side: int = WORD_PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """(H, W) scaled down (never up) so the long side is at most ``max_side``."""
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def word_preview_images(
    maps: AttentionMaps,
    image: torch.Tensor | None = None,
    colormap: str = "viridis",
    opacity: float = 0.6,
    normalisation: str = "minmax",
    max_side: int = WORD_PREVIEW_MAX_SIDE,
    limit: int = WORD_PREVIEW_MAX_WORDS,
) -> list[dict[str, str] | None]:
    """One small PNG per word (first batch row) in ComfyUI's temp folder, for the frontend's word chips.

    Each is that word's heatmap, normalised like the panels (over all words, so 'text'/'softmax' stay
    comparable), blended over the first image when one is given, without a caption (the chip shows the
    word and its share). Returns ComfyUI preview entries ``{"filename", "subfolder", "type": "temp"}`` in
    the order of ``maps.words`` (None past the first ``limit``). The temp folder is emptied when ComfyUI
    starts.
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
        ph, pw = _preview_size(int(first.shape[0]), int(first.shape[1]), max_side)
        base = resize(first.permute(2, 0, 1).clamp(0.0, 1.0), (ph, pw)).clamp_(0.0, 1.0).permute(1, 2, 0)
    else:  # maps alone: token grids upscaled to a readable size, as the panels are
        h, w = int(normed.shape[-2]), int(normed.shape[-1])
        up = max(1.0, 256 / min(h, w))
        ph, pw = _preview_size(round(h * up), round(w * up), max_side)
    folder = Path(folder_paths.get_temp_directory()) / WORD_PREVIEW_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"words_{uuid.uuid4().hex[:12]}"
    out: list[dict[str, str] | None] = []
    for i in range(min(n, max(0, limit))):  # one at a time: memory stays one picture
        heat = apply_colormap(resize(normed[i], (ph, pw)).clamp_(0.0, 1.0), colormap)  # [ph, pw, 3]
        if base is not None:
            heat = base * (1.0 - opacity) + heat * opacity
        pixels = (heat.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()
        name = f"{stem}_{i:03}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / name, compress_level=1)
        out.append({"filename": name, "subfolder": WORD_PREVIEW_SUBFOLDER, "type": "temp"})
    out.extend([None] * (n - len(out)))
    return out


def pointing_grid(maps: torch.Tensor, budget: int = GRID_MAX_VALUES) -> dict | None:
    """The first batch row's word maps ``[B, words, H, W]`` at token-grid resolution for the frontend's
    pointing (which words are attended at a pixel): ``{"h", "w", "scales": [per word], "values": [per word:
    h*w integers, row by row]}``, a value being ``int / GRID_LEVELS * scale`` of its word. Grids of more
    than ``budget`` values (words x cells) are average-pooled by a whole factor until they fit; the first
    ``WORD_PREVIEW_MAX_WORDS`` words only. None for maps with no words."""
    x = maps.detach().to("cpu", torch.float32)[:1, :WORD_PREVIEW_MAX_WORDS]
    n, h, w = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    if n == 0 or h == 0 or w == 0:
        return None
    f = 1
    while n * math.ceil(h / f) * math.ceil(w / f) > max(1, budget) and (h > f or w > f):
        f += 1
    if f > 1:
        h, w = math.ceil(h / f), math.ceil(w / f)
        x = F.adaptive_avg_pool2d(x, (h, w))
    x = torch.nan_to_num(x[0], nan=0.0, posinf=0.0, neginf=0.0)  # [n, h, w]
    scales = x.abs().amax(dim=(1, 2))
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = (x / safe[:, None, None] * GRID_LEVELS).round().to(torch.int32)
    return {"h": h, "w": w, "scales": [float(f"{float(s):.6g}") for s in scales],
            "values": q.flatten(1).tolist()}


def _shares(maps: torch.Tensor) -> list[list[float]]:
    return [[round(float(s), 6) for s in row] for row in share_of_text(maps).tolist()]


def frame_chips(maps: AttentionMaps, frames, image: torch.Tensor | None = None, colormap: str = "viridis",
                opacity: float = 0.6, normalisation: str = "minmax") -> list[dict]:
    """One entry per frame (``attention.frames.Frame``: a kept step, block or latent frame), in order:
    ``{"caption", "shares": [per word, first batch row], "word_images": [a small preview per word, or None],
    "grid": pointing_grid}``. Previews stop after ``FRAME_PREVIEW_MAX_IMAGES`` in all; the grids share
    ``FRAMES_GRID_MAX_VALUES``."""
    out = []
    left = FRAME_PREVIEW_MAX_IMAGES
    budget = max(1, FRAMES_GRID_MAX_VALUES // max(1, len(frames)))
    for frame in frames:
        one = AttentionMaps(maps=frame.maps, words=maps.words, meta=maps.meta)
        images = word_preview_images(one, image, colormap, opacity, normalisation,
                                     max_side=FRAME_PREVIEW_MAX_SIDE, limit=min(left, WORD_PREVIEW_MAX_WORDS))
        left -= sum(e is not None for e in images)
        out.append({"caption": str(frame.caption), "shares": _shares(frame.maps)[0] if len(maps.words) else [],
                    "word_images": images, "grid": pointing_grid(frame.maps, budget)})
    return out


def chips(maps: AttentionMaps, image: torch.Tensor | None = None, colormap: str = "viridis", opacity: float = 0.6,
          normalisation: str = "minmax", frames=None) -> dict:
    """The ``ui`` entries of the word chips: ``enfoque_words``, ``enfoque_shares`` (per batch row, per
    word), ``enfoque_word_images`` (one preview per word, in the order of the words), ``enfoque_grid``
    (`pointing_grid`) and, with ``frames`` (Enfoque Heatmaps over steps, blocks or frames: one picture
    each), ``enfoque_frames`` (`frame_chips`, in the order of the pictures)."""
    out = {
        "enfoque_words": list(maps.words),
        "enfoque_shares": _shares(maps.maps),
        "enfoque_word_images": word_preview_images(maps, image, colormap, opacity, normalisation),
        "enfoque_grid": [pointing_grid(maps.maps)],
    }
    if frames:
        out["enfoque_frames"] = frame_chips(maps, frames, image, colormap, opacity, normalisation)
    return out


def negative_chips(maps: AttentionMaps) -> dict:
    """The negative prompt's words beside the positive's (Enfoque Attention Maps with capture_negative):
    ``{"words", "grid": pointing_grid}`` (pointing ranks them at a pixel)."""
    return {"words": list(maps.words), "grid": pointing_grid(maps.maps)}
