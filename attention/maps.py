"""Per-word attention maps: the container and the pure operations on it.

Everything here is plain torch so that capture, nodes, export and tests share
one definition of what a "word map" is:

- a word's map is the mean of its sub-token maps (`pool_tokens`);
- maps live in `AttentionMaps.maps`, float32 `[batch, words, H, W]`, with one
  label per word and JSON provenance in `meta` (what the export writes);
- every operation returns new tensors/containers; inputs are never modified
  in place, because ComfyUI caches node outputs and shares them downstream.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from .formats import listed
from .selection import NotAWord, parse_items
from .selection import select as select_words

NORMALISATIONS: tuple[str, ...] = ("none", "minmax", "softmax", "text")

_OTSU_BINS = 256


def _check_finite(t: Tensor, what: str) -> None:
    """Raise a ValueError that says NaN or inf, not a cryptic downstream failure."""
    if not t.is_floating_point():
        return
    if torch.isnan(t).any():
        raise ValueError(f"{what} hold NaN values; the attention capture produced invalid numbers.")
    if torch.isinf(t).any():
        raise ValueError(f"{what} hold inf values; the attention capture produced invalid numbers.")


@dataclass(frozen=True)
class AttentionMaps:
    """Per-word attention maps with labels and provenance.

    Frozen because ComfyUI hands the same output object to several nodes;
    derive new containers with `derive` instead of mutating.

    Attributes:
        maps: float32 `[batch, words, H, W]`, finite (converted to float32 on creation).
        words: one label per word (the prompt word, a phrase, or `#12` for a
            context position when the token layout is unknown).
        meta: JSON-serialisable provenance (token spans per encoder, model
            family, blocks, steps, sigma window, image size, normalisation, ...).
    """

    maps: Tensor
    words: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        maps = self.maps
        if not isinstance(maps, Tensor):
            try:
                maps = torch.as_tensor(maps)
            except Exception as exc:  # numpy arrays, nested lists
                raise ValueError(
                    f"AttentionMaps.maps must be a tensor, got {type(self.maps).__name__}."
                ) from exc
        if maps.ndim != 4:
            raise ValueError(
                f"the maps must have the shape [batch, words, H, W]; got {tuple(maps.shape)}."
            )
        b, n, h, w = maps.shape
        if b < 1 or h < 1 or w < 1:
            raise ValueError(
                f"the maps need batch, H and W of at least 1; got {tuple(maps.shape)}."
            )
        if maps.dtype != torch.float32:
            maps = maps.to(torch.float32)
        _check_finite(maps, "the maps")
        words = [str(x) for x in self.words] if not isinstance(self.words, str) else None
        if words is None:
            raise ValueError("the maps' words must be a list of labels, not a single string.")
        if len(words) != n:
            raise ValueError(
                f"{n} word maps but {len(words)} labels ({', '.join(words[:20])}); they must agree."
            )
        meta = dict(self.meta) if self.meta is not None else {}
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the maps' metadata is not JSON-serialisable: {exc}") from exc
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "meta", meta)

    @property
    def batch(self) -> int:
        return int(self.maps.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Map grid `(H, W)`."""
        return int(self.maps.shape[2]), int(self.maps.shape[3])

    def __len__(self) -> int:
        return len(self.words)

    def derive(
        self, maps: Tensor | None = None, words: Sequence[str] | None = None, **meta_updates: Any
    ) -> AttentionMaps:
        """A new container sharing provenance, with some parts replaced (meta is deep-copied)."""
        meta = copy.deepcopy(self.meta)
        meta.update(meta_updates)
        return AttentionMaps(
            maps=self.maps if maps is None else maps,
            words=list(self.words if words is None else words),
            meta=meta,
        )


def _as_tensor(maps: Tensor | AttentionMaps) -> Tensor:
    return maps.maps if isinstance(maps, AttentionMaps) else maps


def _check_maps4(t: Tensor, fn: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{fn}: expected a tensor or AttentionMaps, got {type(t).__name__}.")
    if t.ndim != 4:
        raise ValueError(f"{fn}: expected maps of shape [batch, words, H, W], got {tuple(t.shape)}.")
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


# ---------------------------------------------------------------------------
# Pooling sub-tokens into words
# ---------------------------------------------------------------------------


def pool_tokens(
    token_maps: Tensor,
    spans: Sequence[Sequence[int]],
    grid: tuple[int, int] | None = None,
    words: Sequence[str] | None = None,
) -> Tensor:
    """Average sub-token maps into word maps: `[B, words, H, W]` float32.

    A word's map is the MEAN of its sub-token maps (DESIGN.md, the engine's token layout), so a
    word split into many BPE pieces is not louder than a one-token word.

    Args:
        token_maps: `[B, T, H, W]`, or `[B, N, T]` (the capture's
            `[rows, image_tokens, captured_tokens]` layout, image tokens
            row-major) together with `grid=(H, W)`, `H * W == N`. Without
            `grid` a square grid is assumed.
        spans: per word, the token indices (into T) it covers; they may be
            non-contiguous (phrases, repeated words). Repeated indices count once.
        grid: the image token grid for the `[B, N, T]` layout.
        words: labels, only used to name the word in errors.

    Raises:
        ValueError: empty span (naming the word), index out of range, bad shapes.
    """
    if not isinstance(token_maps, Tensor):
        raise ValueError(f"pool_tokens: expected a tensor, got {type(token_maps).__name__}.")
    if words is not None and len(words) != len(spans):
        raise ValueError(f"pool_tokens: {len(spans)} spans but {len(words)} word labels.")
    if token_maps.ndim == 4:
        b, t, h, w = token_maps.shape
        if grid is not None and tuple(grid) != (h, w):
            raise ValueError(f"pool_tokens: grid {tuple(grid)} does not match the maps' {(h, w)}.")
        token_dim = 1
    elif token_maps.ndim == 3:
        b, n, t = token_maps.shape
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"pool_tokens: {n} image tokens is not a square grid; pass grid=(H, W) for this layout."
                )
            grid = (side, side)
        h, w = int(grid[0]), int(grid[1])
        if h * w != n:
            raise ValueError(
                f"pool_tokens: grid {(h, w)} has {h * w} cells but the maps have {n} image tokens."
            )
        token_dim = 2
    else:
        raise ValueError(
            f"pool_tokens: expected [B, T, H, W] or [B, N, T] token maps, got shape {tuple(token_maps.shape)}."
        )

    src = token_maps if token_maps.dtype in (torch.float32, torch.float64) else token_maps.float()
    pooled = []
    for i, span in enumerate(spans):
        name = words[i] if words is not None else f"#{i}"
        idx = sorted({int(j) for j in span})
        if not idx:
            raise ValueError(f"pool_tokens: word {name!r} has an empty token span; it maps to no token.")
        if idx[0] < 0 or idx[-1] >= t:
            raise ValueError(
                f"pool_tokens: word {name!r} refers to token {idx[0] if idx[0] < 0 else idx[-1]}, "
                f"outside the {t} captured tokens."
            )
        sel = torch.tensor(idx, dtype=torch.long, device=src.device)
        pooled.append(src.index_select(token_dim, sel).mean(dim=token_dim))
    if not pooled:
        return src.new_zeros((b, 0, h, w), dtype=torch.float32)
    out = torch.stack(pooled, dim=1)  # [B, words, H, W] or [B, words, N]
    return out.reshape(b, len(pooled), h, w).to(torch.float32)


# ---------------------------------------------------------------------------
# Normalisation and statistics
# ---------------------------------------------------------------------------


@overload
def normalise(maps: Tensor, mode: str = ...) -> Tensor: ...
@overload
def normalise(maps: AttentionMaps, mode: str = ...) -> AttentionMaps: ...


def normalise(maps: Tensor | AttentionMaps, mode: str = "minmax") -> Tensor | AttentionMaps:
    """Normalise `[B, words, H, W]` maps; returns the same kind it was given.

    Modes:
        "none": unchanged values (a copy): raw attention probabilities, comparable
            across words, blocks and images.
        "minmax": per word and per batch row, rescale to [0, 1]
            (`(x - min) / (max - min)`); a constant map becomes all zeros, never
            NaN. Shows *where* each word attends, hiding how strongly.
        "softmax": softmax over words at each pixel. The raw values are treated
            as scores, so it sharpens the contest between words at a pixel; on
            raw probabilities (all small) it is close to uniform.
        "text": each pixel divided by its sum over the words present, i.e. the
            attention renormalised over the captured text columns (image keys
            and uncaptured tokens left out). Pixels with no mass stay zero.

    On an `AttentionMaps`, `meta["normalisation"]` records the mode.
    """
    key = str(mode).strip().lower()
    if key not in NORMALISATIONS:
        raise ValueError(f"Unknown normalisation {mode!r}; choose one of: {', '.join(NORMALISATIONS)}.")
    if isinstance(maps, AttentionMaps):
        if key == "none":
            return maps.derive(maps.maps.clone())
        return maps.derive(normalise(maps.maps, key), normalisation=key)

    x = _check_maps4(maps, "normalise")
    _check_finite(x, "normalise: maps")
    if key == "none":
        return x.clone()
    if key == "minmax":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        rng = hi - lo
        safe = torch.where(rng > 0, rng, torch.ones_like(rng))
        return torch.where(rng > 0, (x - lo) / safe, torch.zeros_like(x)).clamp_(0.0, 1.0)
    if key == "softmax":
        if x.shape[1] == 0:
            return x.clone()
        return torch.softmax(x, dim=1)
    # "text"
    total = x.sum(dim=1, keepdim=True)
    safe = torch.where(total != 0, total, torch.ones_like(total))
    return torch.where(total != 0, x / safe, torch.zeros_like(x))


def share_of_text(maps: Tensor | AttentionMaps) -> Tensor:
    """Each word's share of the total attention mass over the words present: `[B, words]`.

    Mass is summed over all pixels, so the shares of a batch row add up to 1
    (or are all 0 when the row has no mass). Meant for captions ("cat 23%").
    """
    x = _check_maps4(_as_tensor(maps), "share_of_text")
    mass = x.to(torch.float64).sum(dim=(2, 3))
    total = mass.sum(dim=1, keepdim=True)
    safe = torch.where(total != 0, total, torch.ones_like(total))
    share = torch.where(total != 0, mass / safe, torch.zeros_like(mass))
    return share.to(torch.float32)


# ---------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------


def _resize_tensor(x: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: target size must be positive, got {(h, w)}.")
    if x.ndim < 2:
        raise ValueError(f"resize: expected [..., H, W], got shape {tuple(x.shape)}.")
    lead = x.shape[:-2]
    sh, sw = x.shape[-2], x.shape[-1]
    src = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if (sh, sw) == (h, w):
        return src.clone()
    flat = src.reshape(1, -1, sh, sw)
    downscale = h < sh or w < sw
    out = F.interpolate(flat, size=(h, w), mode="bilinear", align_corners=False, antialias=downscale)
    return out.reshape(*lead, h, w)


@overload
def resize(maps: Tensor, size: tuple[int, int]) -> Tensor: ...
@overload
def resize(maps: AttentionMaps, size: tuple[int, int]) -> AttentionMaps: ...


def resize(maps: Tensor | AttentionMaps, size: tuple[int, int]) -> Tensor | AttentionMaps:
    """Resize maps `[..., H, W]` to `size=(H, W)` with bilinear interpolation.

    Antialiased when shrinking (so a 152x104 map shown small does not alias),
    plain bilinear when growing; works for 1x1 maps and any aspect ratio, e.g.
    76x52 maps to a 1216x832 image. Bilinear never overshoots, so maps in
    [0, 1] stay in [0, 1].
    """
    if isinstance(maps, AttentionMaps):
        return maps.derive(_resize_tensor(maps.maps, size))
    if not isinstance(maps, Tensor):
        raise ValueError(f"resize: expected a tensor or AttentionMaps, got {type(maps).__name__}.")
    return _resize_tensor(maps, size)


# ---------------------------------------------------------------------------
# Selecting words
# ---------------------------------------------------------------------------


def select(maps: AttentionMaps, words_query: str) -> AttentionMaps:
    """Pick word maps by a ``words`` text such as ``"cat, red fur"``, by `selection`'s rule (the rule of
    every node that takes words): each item becomes one map, labelled as written, the mean of the maps
    of the words it selects (a repeated word: all its occurrences, ``word#2`` the second; a phrase: its
    words where they stand together). An empty text selects every map unchanged.

    Raises:
        ValueError: an item that selects no word; the message lists the labels.
    """
    if not isinstance(maps, AttentionMaps):
        raise ValueError(f"select: expected AttentionMaps, got {type(maps).__name__}.")
    if not parse_items(words_query):
        return maps.derive()
    try:
        picks = select_words(maps.words, words_query)
    except NotAWord as exc:
        hint = ""
        if maps.words and all(re.fullmatch(r"#\d+", w.strip()) for w in maps.words):
            hint = (
                " These maps are labelled by context position only: put EnfoquePatchCLIP before "
                "the text encode to get word labels."
            )
        raise ValueError(
            f"select: word {exc.item!r} is not among the map labels. Available: {listed(maps.words, quote=True)}.{hint}"
        ) from None
    out = torch.stack([maps.maps[:, list(p.indices)].mean(dim=1) for p in picks], dim=1)
    labels = [p.label for p in picks]
    return maps.derive(out, words=labels, selection=labels)


# ---------------------------------------------------------------------------
# Thresholding into masks
# ---------------------------------------------------------------------------


def otsu_threshold(x: Tensor) -> float:
    """Otsu's threshold of the values in `x` (256-bin histogram over [min, max]).

    Picks the histogram split that maximises the between-class variance. The
    value returned lies strictly between the largest value of the lower class
    and the smallest of the upper class, so `x > t` and `x >= t` give exactly
    the split Otsu chose. For constant input there is no split: it returns
    that constant.
    """
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    v = x.detach().reshape(-1).to(torch.float64)
    if v.numel() == 0:
        raise ValueError("otsu_threshold: empty input.")
    _check_finite(v, "otsu_threshold: input")
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return lo
    bins = ((v - lo) / (hi - lo) * _OTSU_BINS).floor().clamp_(0, _OTSU_BINS - 1).long()
    counts = torch.bincount(bins, minlength=_OTSU_BINS).to(torch.float64)
    width = (hi - lo) / _OTSU_BINS
    centers = lo + (torch.arange(_OTSU_BINS, dtype=torch.float64, device=v.device) + 0.5) * width
    p = counts / counts.sum()
    omega = torch.cumsum(p, 0)[:-1]  # weight of class 0 when it ends at bin k
    mu = torch.cumsum(p * centers, 0)[:-1]
    mu_t = (p * centers).sum()
    denom = omega * (1.0 - omega)
    var_b = torch.where(
        denom > 0, (mu_t * omega - mu) ** 2 / denom.clamp_min(1e-300), torch.zeros_like(denom)
    )
    k = int(torch.argmax(var_b))  # first maximum: the lowest threshold among ties
    lower = v[bins <= k]
    upper = v[bins > k]
    if lower.numel() == 0 or upper.numel() == 0:  # all mass on one side (cannot happen with hi > lo)
        return lo
    a, b = float(lower.max()), float(upper.min())
    t = (a + b) / 2.0
    if not a < t < b:  # adjacent floats: fall back to the lower class's top (use x > t)
        t = a
    return t


def to_mask(
    maps: Tensor | AttentionMaps, threshold: float = 0.0, size: tuple[int, int] | None = None,
    resample: Callable[[Tensor, tuple[int, int]], Tensor] | None = None,
) -> Tensor:
    """Binary mask `[B, H, W]` float32 in {0, 1} from the selected word maps.

    Words are combined by a max (a pixel belongs to the mask if any selected
    word attends there), optionally resized to `size` (before thresholding, so
    edges follow the smooth map; by `resample(maps, size)` when given, e.g. guided
    by the picture, `upsample.guided`), normalised to [0, 1] per batch row, and
    thresholded: pixels `>= threshold` are 1. `threshold=0` picks one
    automatically per batch row with Otsu's method. A row with no contrast
    (constant map) gives an empty mask.
    """
    x = _check_maps4(_as_tensor(maps), "to_mask")
    _check_finite(x, "to_mask: maps")
    t = float(threshold)
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ValueError(f"to_mask: threshold must be between 0 and 1 (0 = automatic), got {threshold}.")
    if x.shape[1] == 0:
        raise ValueError("to_mask: there are no word maps to make a mask from; select at least one word.")
    combined = x.amax(dim=1, keepdim=True)  # [B, 1, H, W]
    if size is not None:
        combined = (resample or _resize_tensor)(combined, size)
    combined = normalise(combined, "minmax")[:, 0]  # [B, H, W]
    masks = []
    for row in combined:
        if t > 0:
            m = row >= t
        else:
            m = row > otsu_threshold(row)
        masks.append(m & (row > 0))
    return torch.stack(masks).to(torch.float32)
