"""Tests for the pure map engine: attention/maps.py, colormaps.py, render.py.

Each operation is checked against a naive reference written out plainly here
(loops, brute force), plus the edge cases that break real pictures: all-zero
maps, NaN/inf, one-pixel maps, non-square SDXL/Flux grids, batches.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from attention import colormaps, maps, render  # noqa: E402
from attention.maps import AttentionMaps  # noqa: E402

# ---------------------------------------------------------------------------
# naive references
# ---------------------------------------------------------------------------


def ref_pool(token_maps: torch.Tensor, spans: list[list[int]]) -> torch.Tensor:
    """[B, T, H, W] -> [B, words, H, W], by explicit accumulation."""
    b, _, h, w = token_maps.shape
    out = torch.zeros(b, len(spans), h, w, dtype=torch.float64)
    for bi in range(b):
        for wi, span in enumerate(spans):
            uniq = sorted(set(span))
            acc = torch.zeros(h, w, dtype=torch.float64)
            for j in uniq:
                acc += token_maps[bi, j].double()
            out[bi, wi] = acc / len(uniq)
    return out


def ref_minmax(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x, dtype=torch.float64)
    for bi in range(x.shape[0]):
        for wi in range(x.shape[1]):
            m = x[bi, wi].double()
            lo, hi = float(m.min()), float(m.max())
            if hi > lo:
                out[bi, wi] = (m - lo) / (hi - lo)
    return out


def ref_text(x: torch.Tensor) -> torch.Tensor:
    b, n, h, w = x.shape
    out = torch.zeros(b, n, h, w, dtype=torch.float64)
    for bi in range(b):
        for yi in range(h):
            for xi in range(w):
                s = sum(float(x[bi, k, yi, xi]) for k in range(n))
                if s != 0:
                    for k in range(n):
                        out[bi, k, yi, xi] = float(x[bi, k, yi, xi]) / s
    return out


def ref_bilinear(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Half-pixel-centre bilinear upsampling (align_corners=False), pixel by pixel."""
    ih, iw = img.shape
    out = np.zeros((oh, ow))
    for y in range(oh):
        sy = max((y + 0.5) * ih / oh - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), ih - 1)
        y1 = min(y0 + 1, ih - 1)
        fy = sy - y0
        for x in range(ow):
            sx = max((x + 0.5) * iw / ow - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), iw - 1)
            x1 = min(x0 + 1, iw - 1)
            fx = sx - x0
            top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
            bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bot * fy
    return out


def between_class_variance(values: np.ndarray, foreground: np.ndarray) -> float:
    """Exact between-class variance of a two-class split of the data."""
    n = values.size
    a, b = values[~foreground], values[foreground]
    if a.size == 0 or b.size == 0:
        return 0.0
    wa, wb = a.size / n, b.size / n
    return wa * wb * (a.mean() - b.mean()) ** 2


def brute_force_otsu_split(values: np.ndarray, bins: int = 256) -> float:
    """Try every histogram split; return the best between-class variance (histogram-based)."""
    lo, hi = float(values.min()), float(values.max())
    idx = np.minimum(((values - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    counts = [0] * bins
    for i in idx:
        counts[i] += 1
    width = (hi - lo) / bins
    centers = [lo + (k + 0.5) * width for k in range(bins)]
    total = len(values)
    best = -1.0
    for k in range(bins - 1):
        n0 = sum(counts[: k + 1])
        n1 = total - n0
        if n0 == 0 or n1 == 0:
            continue
        m0 = sum(counts[i] * centers[i] for i in range(k + 1)) / n0
        m1 = sum(counts[i] * centers[i] for i in range(k + 1, bins)) / n1
        var = (n0 / total) * (n1 / total) * (m0 - m1) ** 2
        best = max(best, var)
    return best


def histogram_variance_of_split(values: np.ndarray, threshold: float, bins: int = 256) -> float:
    """The histogram between-class variance of the split `values > threshold`."""
    lo, hi = float(values.min()), float(values.max())
    idx = np.minimum(((values - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    centers = lo + (idx + 0.5) * (hi - lo) / bins
    fg = values > threshold
    # the split must not cut through a bin
    for k in np.unique(idx):
        sel = fg[idx == k]
        assert sel.all() or not sel.any(), "threshold cuts a histogram bin in two"
    return between_class_variance(centers, fg)


def to_hex(rgb: torch.Tensor) -> str:
    r, g, b = (int(round(float(c) * 255)) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------
# AttentionMaps container
# ---------------------------------------------------------------------------


def test_container_validates_and_converts():
    m = AttentionMaps(torch.rand(2, 3, 4, 5, dtype=torch.float64), ["a", "b", "c"], {"family": "flux"})
    assert m.maps.dtype == torch.float32
    assert m.batch == 2 and m.size == (4, 5) and len(m) == 3
    with pytest.raises(ValueError, match="3 word maps but 2 labels"):
        AttentionMaps(torch.rand(1, 3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[batch, words, H, W\]"):
        AttentionMaps(torch.rand(3, 4, 4), ["a", "b", "c"])
    with pytest.raises(ValueError, match="JSON"):
        AttentionMaps(torch.rand(1, 1, 2, 2), ["a"], {"t": torch.zeros(1)})


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "inf")])
def test_container_rejects_non_finite(bad: float, word: str):
    x = torch.rand(1, 2, 3, 3)
    x[0, 1, 2, 2] = bad
    with pytest.raises(ValueError, match=word):
        AttentionMaps(x, ["a", "b"])
    with pytest.raises(ValueError, match=word):
        maps.normalise(x, "minmax")
    with pytest.raises(ValueError, match=word):
        maps.to_mask(x)


def test_derive_does_not_touch_original():
    m = AttentionMaps(torch.rand(1, 2, 3, 3), ["a", "b"], {"spans": {"clip_l": [[1], [2]]}})
    d = m.derive(words=["x", "y"], normalisation="minmax")
    d.meta["spans"]["clip_l"].append([3])
    assert m.meta == {"spans": {"clip_l": [[1], [2]]}}
    assert m.words == ["a", "b"] and d.meta["normalisation"] == "minmax"


# ---------------------------------------------------------------------------
# pool_tokens
# ---------------------------------------------------------------------------


def test_pool_tokens_matches_loop_reference_both_layouts():
    torch.manual_seed(0)
    b, t, h, w = 4, 9, 5, 7  # non-square grid, batch of 4
    tok = torch.rand(b, t, h, w)
    spans = [[1], [2, 3], [7, 4], [5, 5, 6], [0, 8, 2]]  # non-contiguous, unordered, repeated index
    expect = ref_pool(tok, spans)
    got4 = maps.pool_tokens(tok, spans)
    assert got4.shape == (b, len(spans), h, w) and got4.dtype == torch.float32
    torch.testing.assert_close(got4.double(), expect, rtol=0, atol=1e-6)
    # capture layout [B, N, T] with image tokens row-major
    flat = tok.permute(0, 2, 3, 1).reshape(b, h * w, t).contiguous()
    got3 = maps.pool_tokens(flat, spans, grid=(h, w))
    torch.testing.assert_close(got3.double(), expect, rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 12),
    st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=5), min_size=1, max_size=6),
)
def test_pool_tokens_property(b: int, t: int, spans: list[list[int]]):
    spans = [[j % t for j in span] for span in spans]
    tok = torch.rand(b, t, 3, 2)
    torch.testing.assert_close(maps.pool_tokens(tok, spans).double(), ref_pool(tok, spans), rtol=0, atol=1e-6)


def test_pool_tokens_errors():
    tok = torch.rand(1, 4, 2, 2)
    with pytest.raises(ValueError, match="'fur'.*empty"):
        maps.pool_tokens(tok, [[0], []], words=["red", "fur"])
    with pytest.raises(ValueError, match="outside the 4"):
        maps.pool_tokens(tok, [[4]])
    with pytest.raises(ValueError, match="not a square grid"):
        maps.pool_tokens(torch.rand(1, 6, 4), [[0]])
    with pytest.raises(ValueError, match="grid"):
        maps.pool_tokens(torch.rand(1, 6, 4), [[0]], grid=(2, 2))
    square = maps.pool_tokens(torch.rand(2, 16, 3), [[0, 2]])
    assert square.shape == (2, 1, 4, 4)


# ---------------------------------------------------------------------------
# normalise / share_of_text
# ---------------------------------------------------------------------------


def test_minmax_matches_loop_and_handles_constant_maps():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 6, 5) * 0.02
    x[1, 2] = 0.5  # constant map
    x[3] = 0.0  # all-zero row
    got = maps.normalise(x, "minmax")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref_minmax(x), rtol=0, atol=1e-6)
    assert (got[1, 2] == 0).all() and (got[3] == 0).all()
    assert got[0, 0].max() == 1 and got[0, 0].min() == 0


def test_text_and_softmax_modes():
    torch.manual_seed(2)
    x = torch.rand(2, 3, 4, 4)
    x[0, :, 0, 0] = 0.0  # pixel with no text mass
    text = maps.normalise(x, "text")
    torch.testing.assert_close(text.double(), ref_text(x), rtol=0, atol=1e-6)
    assert (text[0, :, 0, 0] == 0).all()
    sums = text.sum(dim=1)
    sums[0, 0, 0] = 1.0
    torch.testing.assert_close(sums, torch.ones_like(sums))
    soft = maps.normalise(x, "softmax")
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(2, 4, 4))
    torch.testing.assert_close(soft[1, :, 2, 3], torch.softmax(x[1, :, 2, 3], dim=0))
    none = maps.normalise(x, "none")
    assert torch.equal(none, x) and none is not x


def test_all_zero_maps_never_nan():
    z = torch.zeros(2, 3, 4, 4)
    for mode in maps.NORMALISATIONS:
        assert torch.isfinite(maps.normalise(z, mode)).all(), mode
    assert (maps.share_of_text(z) == 0).all()
    assert (maps.to_mask(z) == 0).all()
    assert (maps.to_mask(z, 0.5) == 0).all()


def test_normalise_on_container_records_mode():
    m = AttentionMaps(torch.rand(1, 2, 3, 3), ["a", "b"], {"normalisation": "none"})
    n = maps.normalise(m, "minmax")
    assert isinstance(n, AttentionMaps) and n.meta["normalisation"] == "minmax"
    assert m.meta["normalisation"] == "none"
    with pytest.raises(ValueError, match="choose one of"):
        maps.normalise(m, "zscore")


def test_share_of_text_matches_loop():
    torch.manual_seed(3)
    x = torch.rand(3, 4, 5, 6)
    x[2] = 0
    got = maps.share_of_text(AttentionMaps(x, list("abcd")))
    assert got.shape == (3, 4)
    for bi in range(2):
        masses = [float(x[bi, k].double().sum()) for k in range(4)]
        for k in range(4):
            assert abs(float(got[bi, k]) - masses[k] / sum(masses)) < 1e-6
        assert abs(float(got[bi].sum()) - 1) < 1e-6
    assert (got[2] == 0).all()


# ---------------------------------------------------------------------------
# resize
# ---------------------------------------------------------------------------


def test_resize_matches_naive_bilinear_upscale():
    torch.manual_seed(4)
    x = torch.rand(1, 1, 3, 4)
    got = maps.resize(x, (7, 9))
    expect = ref_bilinear(x[0, 0].double().numpy(), 7, 9)
    np.testing.assert_allclose(got[0, 0].double().numpy(), expect, atol=1e-6)


def test_resize_one_pixel_and_non_square_targets():
    one = torch.full((4, 2, 1, 1), 0.25)
    one[:, 1] = 0.75
    big = maps.resize(one, (832, 1216))
    assert big.shape == (4, 2, 832, 1216)
    assert torch.allclose(big[:, 0], torch.tensor(0.25)) and torch.allclose(big[:, 1], torch.tensor(0.75))
    for grid in [(104, 152), (52, 76)]:  # SDXL latent / Flux token grid of a 1216x832 image
        ramp = torch.linspace(0, 1, grid[1]).expand(1, 1, *grid).contiguous()
        up = maps.resize(ramp, (832, 1216))
        assert up.shape == (1, 1, 832, 1216)
        assert up.min() >= 0 and up.max() <= 1
        assert (up[0, 0, :, 1:] >= up[0, 0, :, :-1] - 1e-6).all()  # stays monotone along x
    m = AttentionMaps(torch.rand(1, 1, 52, 76), ["cat"], {"family": "flux"})
    r = maps.resize(m, (13, 19))
    assert isinstance(r, AttentionMaps) and r.size == (13, 19) and r.meta == {"family": "flux"}


def test_resize_downscale_is_antialiased():
    # a factor of 7 puts plain bilinear samples exactly on pixels (0 or 1): only a filter averages
    checker = ((torch.arange(63)[:, None] + torch.arange(63)[None, :]) % 2).float()[None, None]
    small = maps.resize(checker, (9, 9))
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)


# ---------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------


def _labelled() -> AttentionMaps:
    torch.manual_seed(5)
    return AttentionMaps(torch.rand(2, 6, 4, 4), ["a", "Cat", "with", "red", "fur", "cat"], {"k": 1})


def test_select_words_and_phrases():
    m = _labelled()
    s = maps.select(m, "cat, red fur")
    assert s.words == ["cat", "red fur"] and s.maps.shape == (2, 2, 4, 4)
    torch.testing.assert_close(s.maps[:, 0], (m.maps[:, 1] + m.maps[:, 5]) / 2)  # repeated word: mean
    torch.testing.assert_close(s.maps[:, 1], (m.maps[:, 3] + m.maps[:, 4]) / 2)  # phrase: mean of its words
    assert s.meta["k"] == 1 and s.meta["selection"] == ["cat", "red fur"]
    assert maps.select(m, " ,  ").words == m.words  # empty query: everything
    exact = AttentionMaps(torch.rand(1, 2, 2, 2), ["red fur", "red"])
    torch.testing.assert_close(maps.select(exact, "Red Fur.").maps[:, 0], exact.maps[:, 0])


def test_select_unknown_word_lists_labels():
    with pytest.raises(ValueError, match=r"'dog'.*Available: 'a', 'Cat', 'with'"):
        maps.select(_labelled(), "cat, dog")
    with pytest.raises(ValueError, match="'blue fur' is not among"):  # a phrase selects its words together
        maps.select(_labelled(), "blue fur")
    with pytest.raises(ValueError, match="'fur red' is not among"):  # ... where they stand together, in order
        maps.select(_labelled(), "fur red")
    positional = AttentionMaps(torch.rand(1, 2, 2, 2), ["#1", "#2"])
    with pytest.raises(ValueError, match="EnfoquePatchCLIP"):
        maps.select(positional, "cat")
    assert maps.select(positional, "#2").words == ["#2"]


# ---------------------------------------------------------------------------
# Otsu and masks
# ---------------------------------------------------------------------------


def test_otsu_matches_brute_force():
    rng = np.random.default_rng(6)
    cases = [
        np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.7, 0.1, 200)]),
        rng.random(400),
        rng.exponential(1.0, 500),
        np.round(rng.random(300) * 10) / 10,  # few distinct values, on bin edges
    ]
    for values in cases:
        t = maps.otsu_threshold(torch.from_numpy(values))
        best = brute_force_otsu_split(values)
        ours = histogram_variance_of_split(values, t)
        assert ours >= best * (1 - 1e-9), (ours, best)
    bimodal = cases[0]
    t = maps.otsu_threshold(torch.from_numpy(bimodal))
    assert 0.35 < t < 0.55
    assert maps.otsu_threshold(torch.full((5,), 0.3)) == pytest.approx(0.3)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=60))
def test_otsu_property_optimal_split(xs: list[float]):
    values = np.array(xs, dtype=np.float64)
    if values.max() == values.min():
        return
    t = maps.otsu_threshold(torch.from_numpy(values))
    assert values.min() <= t < values.max()
    assert histogram_variance_of_split(values, t) >= brute_force_otsu_split(values) * (1 - 1e-9) - 1e-15


def test_to_mask_batch_combines_words_and_thresholds():
    b, h, w = 4, 12, 18
    x = torch.zeros(b, 2, h, w)
    for bi in range(b):
        x[bi, 0, 1 : 4 + bi, 2:6] = 1.0 + bi  # word 0 blob
        x[bi, 1, 8:11, 10 : 12 + bi] = 0.5  # word 1 blob, weaker
    x += 0.01 * torch.rand_like(x)
    auto = maps.to_mask(AttentionMaps(x, ["cat", "dog"]))
    assert auto.shape == (b, h, w) and auto.dtype == torch.float32
    assert set(auto.unique().tolist()) <= {0.0, 1.0}
    for bi in range(b):
        assert auto[bi, 2, 3] == 1 and auto[bi, 0, 0] == 0
    # explicit threshold: normalised max over words >= t, by hand
    combined = x.amax(dim=1)
    for t in (0.2, 0.6):
        got = maps.to_mask(x, t)
        for bi in range(b):
            lo, hi = combined[bi].min(), combined[bi].max()
            expect = ((combined[bi] - lo) / (hi - lo) >= t).float()
            assert torch.equal(got[bi], expect)
    sized = maps.to_mask(x, 0.0, size=(30, 45))
    assert sized.shape == (b, 30, 45) and set(sized.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="between 0 and 1"):
        maps.to_mask(x, 1.5)
    one = maps.to_mask(torch.ones(1, 1, 1, 1))
    assert one.shape == (1, 1, 1) and one.item() == 0.0  # no contrast, no mask


# ---------------------------------------------------------------------------
# colormaps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, lo, hi",
    [
        ("viridis", "#440154", "#fde725"),
        ("inferno", "#000004", "#fcffa4"),
        ("turbo", "#30123b", "#7a0403"),
        ("jet", "#000080", "#800000"),
    ],
)
def test_colormap_endpoints(name: str, lo: str, hi: str):
    c = colormaps.apply_colormap(torch.tensor([0.0, 1.0]), name)
    assert c.shape == (2, 3)
    assert to_hex(c[0]) == lo and to_hex(c[1]) == hi
    assert colormaps.colormap_lut(name).shape == (256, 3)


def test_apply_colormap_shapes_range_and_errors():
    x = torch.rand(2, 3, 5, 7)
    c = colormaps.apply_colormap(x, "viridis")
    assert c.shape == (2, 3, 5, 7, 3) and c.min() >= 0 and c.max() <= 1
    mid = colormaps.apply_colormap(torch.tensor(0.5))
    assert np.allclose(mid.numpy(), np.array([0x21, 0x91, 0x8C]) / 255, atol=2 / 255)
    clamped = colormaps.apply_colormap(torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(clamped, colormaps.apply_colormap(torch.tensor([0.0, 1.0])))
    with pytest.raises(ValueError, match="viridis"):
        colormaps.apply_colormap(x, "rainbow")
    with pytest.raises(ValueError, match="NaN"):
        colormaps.apply_colormap(torch.tensor([float("nan")]))


def test_colormap_data_is_small_plain_data():
    data = Path(colormaps.__file__).with_name("_colormap_data.py")
    assert data.stat().st_size < 40_000
    assert "import" not in data.read_text().split('"""')[2]


# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------


def _blob_maps(b: int, n: int, h: int, w: int) -> AttentionMaps:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    rows = []
    for bi in range(b):
        rows.append(
            torch.stack(
                [
                    torch.exp(-((xx - (k + 1) / (n + 1)) ** 2 + (yy - 0.5) ** 2) / (0.02 + 0.01 * bi))
                    for k in range(n)
                ]
            )
        )
    return AttentionMaps(torch.stack(rows) * 0.05, [f"w{k}" for k in range(n)], {"family": "sd3"})


def test_heatmap_panels_grid_shape_range_and_captions():
    m = _blob_maps(4, 5, 8, 12)
    out = render.heatmap_panels(m)
    assert out.dtype == torch.float32 and out.ndim == 4 and out.shape[0] == 4 and out.shape[-1] == 3
    assert out.min() >= 0 and out.max() <= 1
    ph, pw = 256, 384  # 8x12 upscaled to a 256 px short side
    cols, rows = 3, 2  # ceil(sqrt(5)) columns
    gap = render._GAP
    cell_h = (out.shape[1] - (rows - 1) * gap) // rows
    assert out.shape[2] == cols * pw + (cols - 1) * gap
    cap_h = cell_h - ph
    assert 10 < cap_h < 60
    caption = out[0, ph : ph + cap_h, :pw]  # first panel's caption strip
    assert (caption > 0.5).any(), "caption text missing"
    blank = torch.zeros_like(caption)  # caption background is black
    assert not torch.equal(caption, blank)
    other = out[0, ph : ph + cap_h, pw + gap : 2 * pw + gap]
    assert not torch.equal(caption, other)  # different word, different caption
    last_cell = out[0, cell_h + gap :, 2 * (pw + gap) :]  # 6th cell of a 3x2 grid is empty background
    assert torch.allclose(last_cell, torch.full_like(last_cell, render._BACKGROUND[0] / 255))
    two_cols = render.heatmap_panels(m, columns=2)
    assert two_cols.shape[2] == 2 * pw + gap


def test_heatmap_panels_overlay_on_non_square_image():
    m = _blob_maps(1, 2, 52, 76)
    image = torch.rand(1, 832, 1216, 3)
    out = render.heatmap_panels(m, image, colormap="inferno", opacity=0.0, columns=2)
    assert out.shape[1] > 832 and out.shape[2] == 2 * 1216 + render._GAP
    # opacity 0 shows the image itself (up to 8-bit rounding)
    assert torch.allclose(out[0, :832, :1216], image[0], atol=1 / 255 + 1e-6)
    full = render.heatmap_panels(m, image, colormap="inferno", opacity=1.0, columns=2)
    heat = colormaps.apply_colormap(
        maps.resize(maps.normalise(m.maps, "minmax"), (832, 1216))[0, 1], "inferno"
    )
    assert torch.allclose(full[0, :832, 1216 + render._GAP :], heat, atol=1 / 255 + 1e-6)
    batch = render.heatmap_panels(_blob_maps(1, 1, 4, 4), torch.rand(3, 20, 30, 3))
    assert batch.shape[0] == 3 and batch.shape[2] == 30
    with pytest.raises(ValueError, match="2 map rows but 3 images"):
        render.heatmap_panels(_blob_maps(2, 1, 4, 4), torch.rand(3, 20, 30, 3))
    with pytest.raises(ValueError, match="opacity"):
        render.heatmap_panels(m, opacity=2)


def test_heatmap_panels_one_pixel_and_zero_maps():
    z = AttentionMaps(torch.zeros(1, 2, 1, 1), ["cat", "猫"])
    out = render.heatmap_panels(z)
    assert out.shape[1] > 256 and out.shape[2] == 2 * 256 + render._GAP
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="no words"):
        render.heatmap_panels(AttentionMaps(torch.zeros(1, 0, 2, 2), []))


def test_font_fallback_for_old_pillow(monkeypatch: pytest.MonkeyPatch):
    from PIL import ImageFont

    original = ImageFont.load_default

    def old_load_default():  # Pillow < 10.1 takes no size
        return original()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    render.load_font.cache_clear()
    try:
        font = render.load_font(20)
        assert font is not None
        out = render.heatmap_panels(AttentionMaps(torch.rand(1, 2, 3, 3), ["猫", "cat"]))
        assert out.shape[0] == 1 and torch.isfinite(out).all()
    finally:
        render.load_font.cache_clear()


def test_token_matrix_image():
    labels = ["<start>", "a", "photo", "of", "a", "cat", "<end>"]
    t = len(labels)
    logits = torch.randn(t, t) + torch.triu(torch.full((t, t), -1e9), 1)
    out = render.token_matrix_image(torch.softmax(logits, dim=-1), labels)
    assert out.shape[0] == 1 and out.shape[-1] == 3 and out.shape[1] > t * 12 and out.shape[2] > t * 12
    assert out.min() >= 0 and out.max() <= 1
    big = render.token_matrix_image(
        torch.rand(200, 200), [f"t{i}" for i in range(200)], normalisation="global"
    )
    assert big.shape[1] < 2000
    with pytest.raises(ValueError, match="labels"):
        render.token_matrix_image(torch.rand(3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        render.token_matrix_image(torch.full((2, 2), float("nan")), ["a", "b"])
