"""Tests for attention/export.py (pure: no ComfyUI host).

Round trips: bitwise for safetensors and npz, within half a 16-bit step of each
map's range for PNG. Writing never overwrites and never leaves a partial or
temporary file behind, even when it fails half-way.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import export, export_png, mapfiles  # noqa: E402
from attention.maps import AttentionMaps  # noqa: E402

META = {
    "model_family": "sd3",
    "words": ["a", "red", "cat"],
    "context_positions": [[1], [2, 79], [3]],
    "token_spans": {"clip_l": [[1], [2], [3]], "t5xxl": [[0], [1, 2], [3]]},
    "blocks": [0, 1],
    "steps": 2,
    "sigma_window": [0.0, 1.0],
    "grid": [8, 8],
    "image_size": [128, 128],
    "normalisation": "none",
    "unicode": "gato rojo 🐱 猫",
}

SAVERS = {
    "safetensors": lambda m, d: [export.save_safetensors(m, d / "maps.safetensors")],
    "npz": lambda m, d: [export.save_npz(m, d / "maps.npz")],
    "png": lambda m, d: export.save_png(m, d, "maps_00001_"),
}


def attention_like(shape: tuple[int, int, int, int], seed: int = 0) -> torch.Tensor:
    """Small positive values spread over decades, like real attention probabilities."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) ** 3 * 0.05


def make(shape=(1, 3, 8, 8), seed=0, maps=None, words=None, meta=None) -> AttentionMaps:
    t = attention_like(shape, seed) if maps is None else maps
    n = t.shape[1]
    words = words if words is not None else (["a", "red", "cat"] if n == 3 else [f"w{i}" for i in range(n)])
    return AttentionMaps(maps=t, words=words, meta=dict(META if meta is None else meta))


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def check_png_close(loaded: AttentionMaps, original: AttentionMaps) -> None:
    x = original.maps.double()
    lo = torch.minimum(x.amin(dim=(2, 3), keepdim=True), torch.zeros(()))
    hi = x.amax(dim=(2, 3), keepdim=True)
    tol = (hi - lo) * mapfiles.PNG_RELATIVE_TOLERANCE + 2 * torch.finfo(torch.float32).eps * hi.abs()
    err = (loaded.maps.double() - x).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max())}, allowed {float(tol.max())}"


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_exact_round_trip(tmp_path, fmt):
    m = make((2, 3, 8, 8))
    (path,) = SAVERS[fmt](m, tmp_path)
    back = export.load(path)
    assert back.maps.dtype == torch.float32
    assert torch.equal(back.maps, m.maps)
    assert back.maps.numpy().tobytes() == m.maps.numpy().tobytes()  # bitwise, not just ==
    assert back.words == m.words
    assert back.meta == m.meta


def test_png_round_trip_within_quantisation(tmp_path):
    m = make((2, 3, 8, 8))
    paths = export.save_png(m, tmp_path, "maps_00001_")
    assert paths[0].name == "maps_00001_.json"
    assert len(paths) == 1 + 2 * 3
    assert all(p.is_file() for p in paths)
    back = export.load(paths[0])
    assert back.words == m.words and back.meta == m.meta
    assert back.maps.shape == m.maps.shape
    check_png_close(back, m)
    assert not torch.equal(back.maps, m.maps)  # it is quantised, and the tolerance is what makes it pass


def test_png_files_are_16_bit_grayscale_scaled_by_max(tmp_path):
    from PIL import Image

    m = make((1, 3, 8, 8))
    paths = export.save_png(m, tmp_path, "maps_00001_")
    sidecar = json.loads(paths[0].read_text(encoding="utf-8"))
    assert sidecar["format"] == mapfiles.FORMAT and sidecar["storage"] == "png16"
    assert sidecar["shape"] == [1, 3, 8, 8]
    assert [e["file"] for e in sidecar["files"]] == [p.name for p in paths[1:]]
    assert [e["label"] for e in sidecar["files"]] == m.words
    for entry, p in zip(sidecar["files"], paths[1:], strict=True):
        with Image.open(p) as im:
            assert im.mode.startswith("I;16") and im.size == (8, 8)
            arr = np.asarray(im)
        assert int(arr.max()) == 65535  # scaled by the map's own max
        assert entry["min"] == 0.0  # non-negative attention: 0 stays 0
        assert entry["max"] == float(m.maps[0, entry["word"]].max())
    # the sidecar starts with the format key: that is what the cheap check reads
    assert paths[0].read_text(encoding="utf-8").lstrip("{\n ").startswith('"format"')


def test_safetensors_metadata_is_readable_by_other_tools(tmp_path):
    import safetensors

    m = make()
    path = export.save_safetensors(m, tmp_path / "m.safetensors")
    with safetensors.safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        arr = f.get_tensor("maps")
    assert meta["format"] == mapfiles.FORMAT and meta["format_version"] == str(mapfiles.FORMAT_VERSION)
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["words"]) == m.words
    assert json.loads(meta["meta"]) == m.meta
    assert arr.dtype == np.float32 and arr.shape == (1, 3, 8, 8)


def test_npz_loads_without_pickle(tmp_path):
    m = make()
    path = export.save_npz(m, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"maps", "metadata"}
        doc = json.loads(str(z["metadata"]))
        assert np.array_equal(z["maps"], m.maps.numpy())
    assert doc["words"] == m.words and doc["meta"] == m.meta and doc["format"] == mapfiles.FORMAT


TRICKY = {
    "all_zero": torch.zeros(1, 3, 8, 8),
    "one_pixel": torch.tensor([[[[0.25]], [[0.0]], [[1e-30]]]]),
    "non_square_152x104": attention_like((1, 3, 152, 104), 1),
    "batch_of_4": attention_like((4, 3, 16, 12), 2),
    "constant": torch.full((1, 3, 5, 5), 0.125),
    "negative_values": attention_like((2, 3, 6, 9), 3) - 0.01,
    "no_words": torch.zeros(2, 0, 4, 4),
}


@pytest.mark.parametrize("fmt", list(SAVERS))
@pytest.mark.parametrize("case", list(TRICKY))
def test_tricky_maps(tmp_path, fmt, case):
    t = TRICKY[case]
    m = make(maps=t, words=[f"w{i}" for i in range(t.shape[1])])
    paths = SAVERS[fmt](m, tmp_path)
    back = export.load(paths[0])
    assert back.maps.shape == t.shape
    assert back.words == m.words
    if fmt == "png":
        check_png_close(back, m)
        if case in ("all_zero", "constant", "one_pixel", "no_words"):
            assert torch.equal(back.maps, m.maps)  # a map's extremes come back exactly
    else:
        assert torch.equal(back.maps, m.maps)


def test_word_names_in_png_files_are_safe(tmp_path):
    m = make(words=["../../etc", "猫", "red fur!"])
    paths = export.save_png(m, tmp_path, "p_")
    names = [p.name for p in paths]
    assert names == ["p_.json", "p_b00_w000_etc.png", "p_b00_w001.png", "p_b00_w002_red-fur.png"]
    assert all(p.parent == tmp_path for p in paths)
    assert export.load(paths[0]).words == m.words


# ---------------------------------------------------------------------------
# never overwrite, never leave debris
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_no_overwrite(tmp_path, fmt):
    first = make(seed=1)
    paths = SAVERS[fmt](first, tmp_path)
    before = {p: p.read_bytes() for p in paths}
    with pytest.raises(FileExistsError):
        SAVERS[fmt](make(seed=2), tmp_path)
    assert {p: p.read_bytes() for p in paths} == before
    assert listing(tmp_path) == sorted(p.name for p in paths)


def test_png_set_refuses_when_any_member_exists(tmp_path):
    m = make()
    _, image_names = export_png.png_names("maps_00001_", 1, m.words)
    (tmp_path / image_names[2]).write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        export.save_png(m, tmp_path, "maps_00001_")
    assert listing(tmp_path) == [image_names[2]]  # nothing written, the stranger untouched
    assert (tmp_path / image_names[2]).read_bytes() == b"someone else's file"


def test_symlink_target_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"keep")
    (tmp_path / "m.safetensors").symlink_to(target)
    with pytest.raises(FileExistsError):
        export.save_safetensors(make(), tmp_path / "m.safetensors")
    assert target.read_bytes() == b"keep"


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, fmt):
    """The disk fails after the data went out but before it is durable: no final file, no temp file."""

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        SAVERS[fmt](make(), tmp_path)
    assert listing(tmp_path) == []


def test_png_failure_half_way_rolls_back_the_set(tmp_path, monkeypatch):
    real = export_png._encode_png
    calls = []

    def flaky(q):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("encoder crashed")
        return real(q)

    monkeypatch.setattr(export_png, "_encode_png", flaky)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        export.save_png(make((2, 3, 8, 8)), tmp_path, "maps_00001_")
    assert len(calls) == 4  # three PNGs had been published when it failed
    assert listing(tmp_path) == []


def test_interrupted_write_keeps_existing_files_and_leaves_no_temp(tmp_path, monkeypatch):
    """A write that dies half-way through the payload (e.g. KeyboardInterrupt) cleans up its temp file."""
    keep = export.save_npz(make(seed=1), tmp_path / "keep.npz")
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        export.save_safetensors(make(), tmp_path / "new.safetensors")
    monkeypatch.undo()
    assert listing(tmp_path) == ["keep.npz"]
    assert torch.equal(export.load(keep).maps, make(seed=1).maps)


def test_bad_maps_write_nothing(tmp_path):
    m = make()
    m.meta["oops"] = object()  # the dict is mutable after validation
    with pytest.raises(ValueError, match="JSON"):
        export.save_safetensors(m, tmp_path / "a.safetensors")
    n = make()
    n.maps[0, 0, 0, 0] = float("nan")  # so is the tensor
    for fmt in SAVERS:
        with pytest.raises(ValueError, match="NaN"):
            SAVERS[fmt](n, tmp_path)
    assert listing(tmp_path) == []


def test_creates_missing_folders(tmp_path):
    path = export.save_npz(make(), tmp_path / "a" / "b" / "m.npz")
    assert path.is_file()


# ---------------------------------------------------------------------------
# loading damaged or foreign files
# ---------------------------------------------------------------------------


def test_load_rejects_foreign_and_damaged_files(tmp_path):
    import safetensors.torch

    foreign = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="no 'maps' tensor"):
        export.load(foreign)
    assert not export.is_maps_file(foreign)

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"maps": torch.zeros(1, 1, 2, 2)}, str(plain))
    with pytest.raises(ValueError, match="not an Enfoque"):
        export.load(plain)

    good = export.save_safetensors(make(), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        export.load(truncated)

    npz = tmp_path / "x.npz"
    np.savez(npz, maps=np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="'maps' and 'metadata'"):
        export.load(npz)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read it as npz"):
        export.load(tmp_path / "junk.npz")
    assert not export.is_maps_file(tmp_path / "junk.npz")

    workflow = tmp_path / "workflow.json"
    workflow.write_text('{"nodes": []}')
    with pytest.raises(ValueError, match="not an Enfoque"):
        export.load(workflow)
    assert not export.is_maps_file(workflow)

    with pytest.raises(ValueError, match="unknown attention-maps file type"):
        export.load(tmp_path / "maps.pt")
    with pytest.raises(FileNotFoundError):
        export.load(tmp_path / "missing.npz")


def test_load_png_set_with_missing_or_tampered_member(tmp_path):
    paths = export.save_png(make(), tmp_path, "s_")
    sidecar = paths[0]
    paths[2].unlink()
    with pytest.raises(ValueError, match=paths[2].name):
        export.load(sidecar)
    doc = json.loads(sidecar.read_text())
    doc["files"][0]["file"] = "../escape.png"
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="next to the sidecar"):
        export.load(evil)


def test_nan_in_a_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "nan.npz"
    doc = {"format": mapfiles.FORMAT, "format_version": 1, "words": ["a"], "meta": {}}
    arr = np.zeros((1, 1, 2, 2), np.float32)
    arr[0, 0, 1, 1] = np.nan
    np.savez(path, maps=arr, metadata=np.array(json.dumps(doc)))
    with pytest.raises(ValueError, match="nan.npz: .*NaN"):
        export.load(path)


def test_newer_format_version_is_refused_clearly(tmp_path):
    m = make()
    path = tmp_path / "future.npz"
    doc = {"format": mapfiles.FORMAT, "format_version": 99, "words": m.words, "meta": {}}
    np.savez(path, maps=m.maps.numpy(), metadata=np.array(json.dumps(doc)))
    with pytest.raises(ValueError, match="update Enfoque"):
        export.load(path)


def test_mismatched_words_and_maps_are_refused(tmp_path):
    path = tmp_path / "bad.npz"
    doc = {"format": mapfiles.FORMAT, "format_version": 1, "words": ["a"], "meta": {}}
    np.savez(path, maps=np.zeros((1, 2, 3, 3), np.float32), metadata=np.array(json.dumps(doc)))
    with pytest.raises(ValueError, match="bad.npz"):
        export.load(path)


@pytest.mark.parametrize("fmt", list(SAVERS))
def test_is_maps_file_and_fingerprint(tmp_path, fmt):
    paths = SAVERS[fmt](make(seed=1), tmp_path)
    assert export.is_maps_file(paths[0])
    fp = export.fingerprint(paths[0])
    assert fp == export.fingerprint(paths[0])
    # the same name with different content gives a different fingerprint (a PNG member counts too)
    victim = paths[-1]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert export.fingerprint(paths[0]) != fp
