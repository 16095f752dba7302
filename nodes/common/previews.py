"""What Enfoque Attention Maps and Enfoque Heatmaps hand the frontend's word chips (js/enfoque.js):
the words, each word's share of the text attention, and one small heatmap PNG per word in ComfyUI's
temp folder, which the frontend loads with ``/view`` when a chip is hovered."""

from __future__ import annotations

import uuid
from pathlib import Path

import folder_paths
import numpy as np
import torch
from PIL import Image

from ...attention.colormaps import apply_colormap
from ...attention.maps import AttentionMaps, normalise, resize, share_of_text

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
    the order of ``maps.words`` (None past the first ``WORD_PREVIEW_MAX_WORDS``). The temp folder is
    emptied when ComfyUI starts.
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


def chips(maps: AttentionMaps, image: torch.Tensor | None = None, colormap: str = "viridis", opacity: float = 0.6,
          normalisation: str = "minmax") -> dict:
    """The ``ui`` entries of the word chips: ``enfoque_words``, ``enfoque_shares`` (per batch row, per
    word) and ``enfoque_word_images`` (one preview per word, in the order of the words)."""
    return {
        "enfoque_words": list(maps.words),
        "enfoque_shares": [[round(float(s), 6) for s in row] for row in share_of_text(maps).tolist()],
        "enfoque_word_images": word_preview_images(maps, image, colormap, opacity, normalisation),
    }
