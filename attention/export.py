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

import errno
import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

from .export_png import load_png, save_png
from .mapfiles import (
    EXTENSIONS,
    FORMAT,
    FORMAT_VERSION,
    MAX_HEADER,
    PROBE_BYTES,
    PathLike,
    document_of,
    maps_from_document,
    write_new,
)
from .maps import AttentionMaps


def save_safetensors(maps: AttentionMaps, path: PathLike) -> Path:
    """Save as safetensors (tensor `maps`, JSON documents in the header metadata); never overwrites.

    Raises:
        FileExistsError: `path` exists (nothing is written).
        ValueError: NaN/inf maps or meta that is not JSON (nothing is written).
    """
    array, doc = document_of(maps)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "words": json.dumps(doc["words"], ensure_ascii=False),
        "meta": json.dumps(doc["meta"], ensure_ascii=False, allow_nan=False),
    }
    payload = safetensors.torch.save({"maps": torch.from_numpy(array)}, metadata=metadata)
    return write_new(path, payload)


def save_npz(maps: AttentionMaps, path: PathLike) -> Path:
    """Save as npz (array `maps` and the JSON document as 0-d string array `metadata`); never overwrites."""
    array, doc = document_of(maps)
    buf = io.BytesIO()
    np.savez(buf, maps=array, metadata=np.array(json.dumps(doc, ensure_ascii=False, allow_nan=False)))
    return write_new(path, buf.getvalue())


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
    return maps_from_document(tensor, doc, path)


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
    return maps_from_document(array, doc, path)


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
    return load_png(path)


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
                if n > MAX_HEADER:
                    return False
                header = json.loads(f.read(n))
            return (header.get("__metadata__") or {}).get("format") == FORMAT
        if kind == "npz":
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
            return {"maps.npy", "metadata.npy"} <= names
        with open(path, "rb") as f:
            head = f.read(PROBE_BYTES)
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


def save(maps: AttentionMaps, folder: PathLike, stem: str, fmt: str) -> list[Path]:
    """Write ``maps`` in ``fmt`` (one of `FORMATS`) as ``folder/stem.<ext>`` (a PNG set: the sidecar
    last); the files written, sidecar first for a PNG set. Never overwrites (FileExistsError)."""
    folder = Path(folder)
    if fmt == "safetensors":
        return [save_safetensors(maps, folder / f"{stem}.safetensors")]
    if fmt == "npz":
        return [save_npz(maps, folder / f"{stem}.npz")]
    return save_png(maps, folder, stem)
