"""Attention maps as a set of 16-bit PNGs and one JSON sidecar (`export`'s ``png`` format): one
grayscale image per batch row and word, the document and each map's value range in the sidecar.
Pure: numpy, Pillow, torch and the standard library."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .mapfiles import (
    FORMAT,
    PNG_LEVELS,
    PathLike,
    document_of,
    maps_from_document,
    refuse_existing,
    write_new,
)
from .maps import AttentionMaps

_SLUG = re.compile(r"[^A-Za-z0-9]+")


def _encode_png(q: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG of a uint16 `[H, W]` array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(q, dtype=np.uint16)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _decode_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im).astype(np.int64)
    except Exception as exc:  # missing file, truncated PNG
        raise ValueError(f"{path.name}: cannot read this PNG of the set ({exc}).") from exc
    if mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ValueError(f"{path.name}: expected a 16-bit grayscale PNG, found mode {mode}.")
    if arr.shape != size:
        raise ValueError(
            f"{path.name}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]}."
        )
    if arr.min(initial=0) < 0 or arr.max(initial=0) > PNG_LEVELS:
        raise ValueError(f"{path.name}: pixel values outside 0..65535.")
    return arr


def _slug(word: str) -> str:
    s = _SLUG.sub("-", word).strip("-")[:32].strip("-")
    return f"_{s}" if s else ""


def png_names(prefix: str, batch: int, words: Sequence[str]) -> tuple[str, list[str]]:
    """File names of a PNG set: the sidecar `<prefix>.json` and `<prefix>b00_w000_<word>.png` per map.

    A separator `_` is inserted when the prefix does not end with one, so
    ComfyUI's counter prefix `maps_00001_` gives `maps_00001_b00_w000_cat.png`.
    """
    if not prefix or "/" in prefix or "\\" in prefix or prefix in (".", ".."):
        raise ValueError(f"save_png: the prefix must be a plain file name, got {prefix!r}.")
    stem = prefix if prefix.endswith(("_", "-")) else prefix + "_"
    bw, ww = max(2, len(str(batch - 1))), max(3, len(str(len(words) - 1)))
    images = [
        f"{stem}b{b:0{bw}d}_w{i:0{ww}d}{_slug(w)}.png" for b in range(batch) for i, w in enumerate(words)
    ]
    return f"{prefix}.json", images


def save_png(maps: AttentionMaps, directory: PathLike, prefix: str) -> list[Path]:
    """Save one 16-bit grayscale PNG per (batch row, word) plus the JSON sidecar `<prefix>.json`.

    Returns the paths written, the sidecar first. All-or-nothing: any name
    already taken raises FileExistsError before writing; any failure removes
    what this call wrote. Load the set with `load(<sidecar>)`.
    """
    array, doc = document_of(maps)
    directory = Path(directory)
    b, n, h, w = array.shape
    sidecar_name, image_names = png_names(prefix, b, doc["words"])
    targets = [directory / sidecar_name] + [directory / x for x in image_names]
    for p in targets:
        refuse_existing(p)

    entries = []
    written: list[Path] = []
    try:
        k = 0
        for bi in range(b):
            for wi in range(n):
                x = array[bi, wi].astype(np.float64)
                lo, hi = min(0.0, float(x.min())), float(x.max())
                span = hi - lo
                if span > 0:
                    q = np.rint((x - lo) / span * PNG_LEVELS).clip(0, PNG_LEVELS).astype(np.uint16)
                else:
                    q = np.zeros((h, w), dtype=np.uint16)
                name = image_names[k]
                written.append(write_new(directory / name, _encode_png(q)))
                entries.append(
                    {"file": name, "batch": bi, "word": wi, "label": doc["words"][wi], "min": lo, "max": hi}
                )
                k += 1
        sidecar = {
            **doc,
            "storage": "png16",
            "quantisation": "value = min + png / 65535 * (max - min); |error| <= (max - min) / 131070",
            "files": entries,
        }
        payload = json.dumps(sidecar, ensure_ascii=False, allow_nan=False, indent=1).encode("utf-8")
        written.insert(0, write_new(directory / sidecar_name, payload))
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise
    return written


def load_png(path: Path) -> AttentionMaps:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path.name}: cannot read the PNG sidecar as JSON ({exc}).") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not an Enfoque attention-maps sidecar (no '{FORMAT}' format key).")
    shape, files = doc.get("shape"), doc.get("files")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(s, int) and s >= 0 for s in shape)
        or not isinstance(files, list)
    ):
        raise ValueError(f"{path.name}: the sidecar needs 'shape' [batch, words, H, W] and a 'files' list.")
    b, n, h, w = shape
    out = np.zeros((b, n, h, w), dtype=np.float32)
    seen = set()
    for e in files:
        try:
            bi, wi, name = int(e["batch"]), int(e["word"]), str(e["file"])
            lo, hi = float(e["min"]), float(e["max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path.name}: a 'files' entry is malformed: {e!r}.") from exc
        if not (0 <= bi < b and 0 <= wi < n) or (bi, wi) in seen:
            raise ValueError(f"{path.name}: 'files' entry {name!r} has a bad or repeated (batch, word).")
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{path.name}: 'files' entry {name!r} must be a file next to the sidecar.")
        if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
            raise ValueError(f"{path.name}: 'files' entry {name!r} has an invalid min/max.")
        seen.add((bi, wi))
        q = _decode_png(path.parent / name, (h, w))
        out[bi, wi] = (lo + q.astype(np.float64) / PNG_LEVELS * (hi - lo)).astype(np.float32)
    if len(seen) != b * n:
        raise ValueError(f"{path.name}: the sidecar lists {len(seen)} PNGs but the maps need {b * n}.")
    return maps_from_document(out, doc, path)
