"""Pictures of attention maps: captioned heatmap panels and token x token matrices.

Output is a ComfyUI IMAGE-layout tensor `[B, H, W, 3]` float32 in [0, 1], so a
node can return it directly; nothing here imports comfy. Heatmaps are built
with torch and captions drawn with Pillow's built-in font, so no font file or
plotting library is needed. Panels are composed one at a time into a uint8
canvas, which keeps memory bounded for many words on large images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .colormaps import apply_colormap
from .maps import AttentionMaps, normalise, resize, share_of_text
from .upsample import guided

_MIN_SHORT_SIDE = 256  # heatmaps without an image are upscaled to at least this
_MAX_LONG_SIDE = 1024  # ... unless that would make the long side larger than this
_GAP = 4
_MAX_CANVAS_PIXELS = 128 * 2**20  # one panel picture; beyond this a prompt of thousands of words would take GBs
_BACKGROUND = (17, 17, 17)
_CAPTION_BG = (0, 0, 0)
_CAPTION_FG = (255, 255, 255)
_NEAREST = getattr(Image, "Resampling", Image).NEAREST  # Pillow >= 9.1 moved the constants

FontType = ImageFont.ImageFont | ImageFont.FreeTypeFont


@functools.lru_cache(maxsize=16)
def load_font(size: int) -> FontType:
    """Pillow's built-in font at about `size` px.

    Pillow >= 10.1 takes a size (a scalable FreeType font); older Pillow, or a
    build without FreeType, only has the fixed bitmap font.
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _drawable(text: str, font: FontType) -> str:
    """The bitmap font only encodes Latin-1; replace what it cannot draw instead of failing."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _text_size(text: str, font: FontType) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def _line_height(font: FontType) -> int:
    _, top, _, bottom = font.getbbox("Ag%|")
    return int(math.ceil(bottom - min(top, 0)))


def _fit(text: str, font: FontType, width: int) -> str:
    """Shorten `text` with '...' so it fits `width` pixels."""
    text = _drawable(text, font)
    if _text_size(text, font)[0] <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_size(text[:mid] + "...", font)[0] <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "..." if lo > 0 else "..."


def _display_size(h: int, w: int) -> tuple[int, int]:
    """Panel size for maps shown alone: upscale small token grids to a readable size."""
    short, long = min(h, w), max(h, w)
    scale = max(1.0, _MIN_SHORT_SIDE / short)
    if long * scale > _MAX_LONG_SIDE:
        scale = max(1.0, _MAX_LONG_SIDE / long)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor):
        image = torch.as_tensor(image)
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"heatmap_panels: image must be [B, H, W, 3] (ComfyUI IMAGE), got {tuple(image.shape)}."
        )
    image = image.detach().to("cpu", torch.float32)
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    if not torch.isfinite(image).all():
        raise ValueError("heatmap_panels: image contains NaN or inf values.")
    return image.clamp(0.0, 1.0)


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def heatmap_panels(
    maps: AttentionMaps,
    image: Tensor | None = None,
    colormap: str = "viridis",
    opacity: float = 0.6,
    normalisation: str = "minmax",
    columns: int | None = None,
    upscale: str = "bilinear",
) -> Tensor:
    """One captioned heatmap panel per word, laid out in a grid: `[B, H', W', 3]` in [0, 1].

    Each caption reads `word  12.3%`, the word's share of the attention mass
    over the words in `maps` (computed before normalisation, so it stays
    comparable across words even under "minmax"). With `image`, maps are
    resized to the image and blended over it at `opacity` (0 = image only,
    1 = heatmap only); a single image or a single map row is broadcast over the
    other's batch. Without it, the heatmap is shown alone, upscaled bilinearly
    to at least 256 px on the short side.

    Args:
        columns: panels per grid row; default `ceil(sqrt(words))`.
        normalisation: see `maps.normalise`; values are clamped to [0, 1] for colouring.
        upscale: "bilinear", or "guided" by the image's edges (`upsample.guided`; needs `image`).
    """
    if not isinstance(maps, AttentionMaps):
        raise ValueError(f"heatmap_panels: expected AttentionMaps, got {type(maps).__name__}.")
    n = len(maps.words)
    if n == 0:
        raise ValueError("heatmap_panels: the maps have no words to draw (empty prompt or empty selection).")
    opacity = float(opacity)
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"heatmap_panels: opacity {opacity} is outside 0..1; set it between 0 (the image alone) "
                         "and 1 (the heatmap alone).")
    if columns is None or int(columns) <= 0:
        columns = math.ceil(math.sqrt(n))
    columns = min(int(columns), n)
    rows = math.ceil(n / columns)

    raw = maps.maps.detach().to("cpu", torch.float32)
    shares = share_of_text(raw)  # [B, n]
    normed = normalise(raw, normalisation).clamp_(0.0, 1.0)

    img: Tensor | None = None
    batch = raw.shape[0]
    if image is not None:
        img = _check_image(image)
        bi = img.shape[0]
        if bi != batch and bi != 1 and batch != 1:
            raise ValueError(
                f"heatmap_panels: {batch} map rows but {bi} images; give one image, one map row, or as many of each."
            )
        batch = max(batch, bi)
        ph, pw = int(img.shape[1]), int(img.shape[2])
    else:
        ph, pw = _display_size(int(raw.shape[2]), int(raw.shape[3]))

    font = load_font(max(12, min(28, round(pw / 24))))
    pad = max(2, _line_height(font) // 4)
    cap_h = _line_height(font) + 2 * pad
    cell_w, cell_h = pw, ph + cap_h
    canvas_w = columns * cell_w + (columns - 1) * _GAP
    canvas_h = rows * cell_h + (rows - 1) * _GAP
    if canvas_w * canvas_h > _MAX_CANVAS_PIXELS:
        raise ValueError(
            f"heatmap_panels: {n} panels of {pw}x{ph} px make a {canvas_w}x{canvas_h} picture, over the "
            f"{_MAX_CANVAS_PIXELS // 2**20} megapixel limit; draw fewer words (EnfoqueAttentionMaps' 'words' input "
            "picks them) or a smaller image."
        )

    out = np.empty((batch, canvas_h, canvas_w, 3), dtype=np.uint8)
    for b in range(batch):
        mb = b if normed.shape[0] > 1 else 0
        canvas = Image.new("RGB", (canvas_w, canvas_h), _BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        if upscale == "guided" and img is not None:
            panel_maps = guided(normed[mb][None], img[b if img.shape[0] > 1 else 0][None])[0].clamp_(0.0, 1.0)
        else:
            panel_maps = resize(normed[mb], (ph, pw)).clamp_(0.0, 1.0)  # [n, ph, pw]
        for i in range(n):
            heat = apply_colormap(panel_maps[i], colormap)  # [ph, pw, 3]
            if img is not None:
                base = img[b if img.shape[0] > 1 else 0]
                heat = base * (1.0 - opacity) + heat * opacity
            x0 = (i % columns) * (cell_w + _GAP)
            y0 = (i // columns) * (cell_h + _GAP)
            canvas.paste(Image.fromarray(_to_uint8(heat)), (x0, y0))
            draw.rectangle((x0, y0 + ph, x0 + cell_w - 1, y0 + cell_h - 1), fill=_CAPTION_BG)
            label = f"{maps.words[i]}  {100.0 * float(shares[mb, i]):.1f}%"
            draw.text(
                (x0 + pad, y0 + ph + pad), _fit(label, font, cell_w - 2 * pad), fill=_CAPTION_FG, font=font
            )
        out[b] = np.asarray(canvas)
    return torch.from_numpy(out).to(torch.float32).div_(255.0)


def token_matrix_image(
    matrix: Tensor,
    labels: Sequence[str],
    colormap: str = "viridis",
    normalisation: str = "row",
    col_labels: Sequence[str] | None = None,
) -> Tensor:
    """A token x token attention matrix with labelled axes: `[1, H, W, 3]` in [0, 1].

    Rows are queries (labels on the left), columns are keys (labels on top,
    written vertically). Meant for text-encoder self-attention, where the start
    token soaks up most of the mass: `normalisation="row"` scales each row by
    its maximum so every query's pattern is visible; "global" rescales the
    whole matrix to [0, 1]; "none" only clamps. When there are too many tokens
    for one label each, every k-th token is labelled.
    """
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float32)
    if m.ndim != 2:
        raise ValueError(f"token_matrix_image: expected a [T, T] matrix, got {tuple(m.shape)}.")
    tq, tk = int(m.shape[0]), int(m.shape[1])
    row_labels = [str(x) for x in labels]
    cols = [str(x) for x in (col_labels if col_labels is not None else labels)]
    if len(row_labels) != tq or len(cols) != tk:
        raise ValueError(
            f"token_matrix_image: matrix is {tq}x{tk} but there are {len(row_labels)} row and {len(cols)} column labels."
        )
    if tq == 0 or tk == 0:
        raise ValueError("token_matrix_image: the matrix is empty.")
    if not torch.isfinite(m).all():
        raise ValueError("token_matrix_image: the matrix contains NaN or inf values.")
    mode = str(normalisation).strip().lower()
    if mode == "row":
        peak = m.amax(dim=1, keepdim=True)
        m = torch.where(peak > 0, m / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(m))
    elif mode == "global":
        lo, hi = m.min(), m.max()
        m = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    elif mode != "none":
        raise ValueError(
            f"token_matrix_image: unknown normalisation {normalisation!r}; use row, global or none."
        )

    t = max(tq, tk)
    font = load_font(12)
    line = _line_height(font)
    cell = max(2, min(32, 768 // t))
    if t <= 128:
        cell = max(cell, line + 2)
    stride = max(1, math.ceil((line + 2) / cell))  # label every `stride`-th token
    max_chars = 16

    def short(s: str) -> str:
        s = _drawable(s.strip() or "_", font)
        return s if len(s) <= max_chars else s[: max_chars - 2] + ".."

    rl = [short(s) for s in row_labels]
    cl = [short(s) for s in cols]
    pad = 4
    left = max(_text_size(s, font)[0] for s in rl[::stride]) + 2 * pad
    top = max(_text_size(s, font)[0] for s in cl[::stride]) + 2 * pad
    kw, qw = _text_size("keys", font)[0], _text_size("queries", font)[0]
    left = max(left, max(kw, qw) + 2 * pad)  # room for the axis names in the corner
    top = max(top, 2 * line + 3 * pad)
    grid_w, grid_h = tk * cell, tq * cell
    width, height = left + grid_w + pad, top + grid_h + pad

    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    colours = apply_colormap(m, colormap)  # [tq, tk, 3]
    grid = Image.fromarray(_to_uint8(colours)).resize((grid_w, grid_h), _NEAREST)
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    for i in range(0, tq, stride):
        w, _ = _text_size(rl[i], font)
        y = top + i * cell + (cell - line) // 2
        draw.text((left - pad - w, y), rl[i], fill=_CAPTION_FG, font=font)
    for j in range(0, tk, stride):
        w, _ = _text_size(cl[j], font)
        tag = Image.new("RGB", (w + 2, line + 2), _BACKGROUND)
        ImageDraw.Draw(tag).text((1, 0), cl[j], fill=_CAPTION_FG, font=font)
        tag = tag.rotate(90, expand=True)  # reads bottom-to-top, ending at the grid
        x = left + j * cell + (cell - tag.width) // 2
        canvas.paste(tag, (x, top - pad - tag.height))
    # Axis names in the corner: "keys" over the column labels, "queries" beside the row labels.
    draw.text((left - pad - kw, pad), "keys", fill=(160, 160, 160), font=font)
    draw.text((pad, top - pad - line), "queries", fill=(160, 160, 160), font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).to(torch.float32).div_(255.0).unsqueeze(0)


def titled(picture: Tensor, title: str) -> Tensor:
    """``[1, H, W, 3]`` with a caption bar on top: the title of one frame of an animation (a step, a
    block, a latent frame), in the panels' caption font scaled to the picture's width."""
    w = int(picture.shape[2])
    font = load_font(max(12, min(28, round(w / 40))))
    _, top, _, bottom = font.getbbox("Ag%|")
    pad = max(2, int(bottom - top) // 3)
    canvas = Image.new("RGB", (w, _line_height(font) + 2 * pad), _CAPTION_BG)
    ImageDraw.Draw(canvas).text((pad, pad), _drawable(title, font), fill=_CAPTION_FG, font=font)
    head = torch.from_numpy(np.asarray(canvas).copy()).to(torch.float32).div_(255.0)[None]
    return torch.cat([head, picture.to(torch.float32)], dim=1)
