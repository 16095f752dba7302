"""Attention maps to files and back: safetensors, npz, and 16-bit PNGs with a JSON sidecar.

Formats (all carry the same document: format name and version, `words`, and
the `AttentionMaps.meta` provenance: token spans per encoder, model family,
blocks, steps, sigma window, image size, normalisation, ...):

- safetensors: tensor `maps` `[batch, words, H, W]` float32; the safetensors
  header metadata (string values only) holds `format`, `format_version`,
  `words` (a JSON list) and `meta` (a JSON object). Round trip is bitwise.
- npz: array `maps` (the same) and `metadata`, a 0-d unicode array holding
  the JSON document. Loads with `allow_pickle=False`. Round trip is bitwise.
- png: one 16-bit grayscale PNG per (batch row, word) and ONE JSON sidecar
  with the document, the file list and each map's value range. A pixel is
  `round((x - lo) / (hi - lo) * 65535)` with `hi` the map's max and
  `lo = min(0, map min)`, so for ordinary (non-negative) attention the PNG is
  the map scaled by its own max and 0 means no attention. Loading restores
  `lo + q / 65535 * (hi - lo)`: within `(hi - lo) / 131070` (half a
  quantisation step, `PNG_RELATIVE_TOLERANCE` of the range) of the saved
  float32 values; all-zero and constant maps come back exactly.

Writing is atomic and never overwrites: each file is written to a hidden
temporary name in the target folder, flushed and fsynced, then published with
a hard link (atomic, and fails if the name exists; folders that refuse hard
links fall back to an existence check and `os.replace`). Nothing is written if
any target name exists; a failure removes the temporary file, and for PNG
sets also the files this call already published, so a reader never sees a
half-written file or an incomplete set (the sidecar is written last).

Pure: torch, numpy, Pillow, safetensors and the standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from PIL import Image

from .maps import AttentionMaps

FORMAT = "enfoque.attention_maps"
FORMAT_VERSION = 1
FORMATS: tuple[str, ...] = ("safetensors", "npz", "png")
EXTENSIONS: dict[str, str] = {".safetensors": "safetensors", ".npz": "npz", ".json": "png"}
PNG_LEVELS = 65535
PNG_RELATIVE_TOLERANCE = 0.5 / PNG_LEVELS  # of a map's (hi - lo) range, plus float32 rounding

_PROBE_BYTES = 4096  # how much of a JSON file `is_maps_file` reads
_MAX_HEADER = 100 * 1024 * 1024  # a safetensors header larger than this is not ours
_SLUG = re.compile(r"[^A-Za-z0-9]+")

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------
# the shared document
# ---------------------------------------------------------------------------


def _checked(maps: AttentionMaps) -> tuple[np.ndarray, dict[str, Any]]:
    """The float32 array and the JSON document of `maps`, validated before anything is written.

    AttentionMaps validates on creation, but its tensor and meta dict are
    mutable objects; check again so a file never holds NaN or unreadable JSON.
    """
    if not isinstance(maps, AttentionMaps):
        raise ValueError(f"export: expected AttentionMaps, got {type(maps).__name__}.")
    t = maps.maps.detach().to("cpu", torch.float32).contiguous()
    if t.ndim != 4 or t.shape[1] != len(maps.words):
        raise ValueError(
            f"export: maps of shape {tuple(t.shape)} do not match {len(maps.words)} word labels."
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError("export: the maps contain NaN or inf values; refusing to save them.")
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": list(t.shape),
        "words": [str(w) for w in maps.words],
        "meta": maps.meta,
    }
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"export: the maps' meta is not JSON-serialisable: {exc}") from exc
    return t.numpy(), doc


def _from_doc(array: np.ndarray | torch.Tensor, doc: Any, path: Path) -> AttentionMaps:
    """Rebuild the container, with errors that name the file."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not an Enfoque attention-maps file (no '{FORMAT}' metadata).")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path.name}: format version {version!r} is newer than this Enfoque reads "
            f"({FORMAT_VERSION}); update Enfoque."
        )
    words = doc.get("words")
    meta = doc.get("meta", {})
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{path.name}: the 'words' metadata must be a list of strings.")
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name}: the 'meta' metadata must be a JSON object.")
    t = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    if t.dtype != torch.float32:
        raise ValueError(f"{path.name}: maps must be float32, found {t.dtype}.")
    shape = doc.get("shape")
    if shape is not None and list(t.shape) != list(shape):
        raise ValueError(f"{path.name}: maps have shape {list(t.shape)} but the metadata says {shape}.")
    try:
        return AttentionMaps(maps=t, words=words, meta=meta)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc


# ---------------------------------------------------------------------------
# atomic, no-clobber writing
# ---------------------------------------------------------------------------


def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path))


def _publish(tmp: Path, path: Path) -> None:
    """Give the finished temp file its final name, atomically and without overwriting."""
    try:
        os.link(tmp, path)  # atomic; EEXIST if the name is taken, even by a racing writer
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path)) from None
    except OSError:  # no hard links here (some network / FAT / container filesystems)
        _refuse_existing(path)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _write_new(path: PathLike, payload: bytes) -> Path:
    """Write `payload` to the new file `path` (temp file + fsync + atomic publish)."""
    path = Path(path)
    _refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # create the temp file exclusively; mode 0o666 so the umask applies as for any save
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------------------
# safetensors and npz
# ---------------------------------------------------------------------------


def save_safetensors(maps: AttentionMaps, path: PathLike) -> Path:
    """Save as safetensors (tensor `maps`, JSON documents in the header metadata); never overwrites.

    Raises:
        FileExistsError: `path` exists (nothing is written).
        ValueError: NaN/inf maps or meta that is not JSON (nothing is written).
    """
    array, doc = _checked(maps)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "words": json.dumps(doc["words"], ensure_ascii=False),
        "meta": json.dumps(doc["meta"], ensure_ascii=False, allow_nan=False),
    }
    payload = safetensors.torch.save({"maps": torch.from_numpy(array)}, metadata=metadata)
    return _write_new(path, payload)


def save_npz(maps: AttentionMaps, path: PathLike) -> Path:
    """Save as npz (array `maps` and the JSON document as 0-d string array `metadata`); never overwrites."""
    array, doc = _checked(maps)
    buf = io.BytesIO()
    np.savez(buf, maps=array, metadata=np.array(json.dumps(doc, ensure_ascii=False, allow_nan=False)))
    return _write_new(path, buf.getvalue())


def _load_safetensors(path: Path) -> AttentionMaps:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensor = f.get_tensor("maps") if "maps" in keys else None
    except Exception as exc:  # safetensors raises its own SafetensorError on a damaged file
        raise ValueError(f"{path.name}: cannot read it as safetensors ({exc}).") from exc
    if tensor is None:
        raise ValueError(f"{path.name}: no 'maps' tensor in this safetensors file (found {keys[:8]}).")
    try:
        doc = {
            "format": meta.get("format"),
            "format_version": int(meta.get("format_version", "0")),
            "words": json.loads(meta["words"]) if "words" in meta else None,
            "meta": json.loads(meta.get("meta", "{}")),
        }
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path.name}: the Enfoque metadata is not valid JSON ({exc}).") from exc
    return _from_doc(tensor, doc, path)


def _load_npz(path: Path) -> AttentionMaps:
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle anything else
        raise ValueError(f"{path.name}: cannot read it as npz (not a zip archive).")
    try:
        with np.load(str(path), allow_pickle=False) as z:
            files = list(z.files)
            if "maps" in files and "metadata" in files:
                array = z["maps"]
                raw = z["metadata"]
    except Exception as exc:  # zipfile.BadZipFile, truncated members, pickled objects
        raise ValueError(f"{path.name}: cannot read it as npz ({exc}).") from exc
    if "maps" not in files or "metadata" not in files:
        raise ValueError(f"{path.name}: an Enfoque npz has arrays 'maps' and 'metadata'; found {files}.")
    try:
        doc = json.loads(str(raw.item()) if raw.ndim == 0 else "")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path.name}: the 'metadata' entry is not a JSON string ({exc}).") from exc
    if array.dtype != np.float32:
        raise ValueError(f"{path.name}: maps must be float32, found {array.dtype}.")
    return _from_doc(array, doc, path)


# ---------------------------------------------------------------------------
# PNG + sidecar
# ---------------------------------------------------------------------------


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
    array, doc = _checked(maps)
    directory = Path(directory)
    b, n, h, w = array.shape
    sidecar_name, image_names = png_names(prefix, b, doc["words"])
    targets = [directory / sidecar_name] + [directory / x for x in image_names]
    for p in targets:
        _refuse_existing(p)

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
                written.append(_write_new(directory / name, _encode_png(q)))
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
        written.insert(0, _write_new(directory / sidecar_name, payload))
    except BaseException:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise
    return written


def _load_png(path: Path) -> AttentionMaps:
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
    return _from_doc(out, doc, path)


# ---------------------------------------------------------------------------
# loading, discovery, fingerprints
# ---------------------------------------------------------------------------


def format_of(path: PathLike) -> str:
    """'safetensors', 'npz' or 'png' (a `.json` sidecar) from the file name."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ValueError(
            f"{Path(path).name}: unknown attention-maps file type; use .safetensors, .npz or a PNG set's .json sidecar."
        )
    return EXTENSIONS[suffix]


def load(path: PathLike) -> AttentionMaps:
    """Load a file written by `save_safetensors`, `save_npz` or `save_png` (give the `.json` sidecar).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an Enfoque maps file, or damaged; the message names the file and the problem.
    """
    path = Path(path)
    kind = format_of(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such attention-maps file", str(path))
    if kind == "safetensors":
        return _load_safetensors(path)
    if kind == "npz":
        return _load_npz(path)
    return _load_png(path)


def is_maps_file(path: PathLike) -> bool:
    """A cheap check (headers only) that `path` looks like an Enfoque maps file; for file pickers."""
    path = Path(path)
    try:
        kind = format_of(path)
        if kind == "safetensors":
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    return False
                (n,) = struct.unpack("<Q", raw)
                if n > _MAX_HEADER:
                    return False
                header = json.loads(f.read(n))
            return (header.get("__metadata__") or {}).get("format") == FORMAT
        if kind == "npz":
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
            return {"maps.npy", "metadata.npy"} <= names
        with open(path, "rb") as f:
            head = f.read(_PROBE_BYTES)
        return f'"format": "{FORMAT}"'.encode() in head
    except (OSError, ValueError, zipfile.BadZipFile, struct.error, AttributeError):
        return False


def files_of(path: PathLike) -> list[Path]:
    """Every file a saved set consists of: the file itself, plus a sidecar's PNGs (best effort)."""
    path = Path(path)
    out = [path]
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            out += [path.parent / Path(str(e["file"])).name for e in doc.get("files", [])]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass
    return out


def fingerprint(path: PathLike) -> str:
    """SHA-256 over the content of every file of the set (a PNG set's images included).

    Lets a loader node re-run when a file is replaced, even by one with the same mtime.
    """
    h = hashlib.sha256()
    for p in files_of(path):
        h.update(p.name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            h.update(b"<missing>")
    return h.hexdigest()
