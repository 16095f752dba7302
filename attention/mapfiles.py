"""What every Enfoque maps file holds, and how it is written: the shared JSON document (format, version,
words, provenance) and atomic, never-overwriting writes. `export` writes and reads safetensors and npz
files, `export_png` PNG sets. Pure: numpy, torch and the standard library."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .maps import AttentionMaps

FORMAT = "enfoque.attention_maps"
FORMAT_VERSION = 1
FORMATS: tuple[str, ...] = ("safetensors", "npz", "png")
EXTENSIONS: dict[str, str] = {".safetensors": "safetensors", ".npz": "npz", ".json": "png"}
PNG_LEVELS = 65535
PNG_RELATIVE_TOLERANCE = 0.5 / PNG_LEVELS  # of a map's (hi - lo) range, plus float32 rounding

PROBE_BYTES = 4096  # how much of a JSON file `is_maps_file` reads
MAX_HEADER = 100 * 1024 * 1024  # a safetensors header larger than this is not ours

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------
# the shared document
# ---------------------------------------------------------------------------


def document_of(maps: AttentionMaps) -> tuple[np.ndarray, dict[str, Any]]:
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


def maps_from_document(array: np.ndarray | torch.Tensor, doc: Any, path: Path) -> AttentionMaps:
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


def refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path))


def publish(tmp: Path, path: Path) -> None:
    """Give the finished temp file its final name, atomically and without overwriting."""
    try:
        os.link(tmp, path)  # atomic; EEXIST if the name is taken, even by a racing writer
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "refusing to overwrite an existing file", str(path)) from None
    except OSError:  # no hard links here (some network / FAT / container filesystems)
        refuse_existing(path)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_new(path: PathLike, payload: bytes) -> Path:
    """Write `payload` to the new file `path` (temp file + fsync + atomic publish)."""
    path = Path(path)
    refuse_existing(path)
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
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------------------
# safetensors and npz
# ---------------------------------------------------------------------------
