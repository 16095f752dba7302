"""The "shapes" world: a procedural dataset with exact masks, its captions, and
the judge that reads a decoded image back (colour segmentation).

Pure numpy, deterministic from a seed. Used by `tools/shapes.py` (training),
`benchmarks/map_quality.py` and the tests; it never imports torch or ComfyUI.

Grammar (all lower case, exactly as written):

- one object:  ``a {colour} {shape}``  (anywhere in the picture)
- two objects: ``a {c1} {s1} on the left and a {c2} {s2} on the right``
  (the first in the left half, the second in the right half)

colours: red (255,0,0), green (0,255,0), blue (0,0,255), yellow (255,255,0);
shapes: circle, square, triangle (upright), 24-48 px across, on a black
128x128 picture.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SIZE = 128
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "square", "triangle")
MIN_SIZE, MAX_SIZE = 24, 48
MARGIN = 2  # px between an object and the picture's edge or the middle line


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cx: float  # centre, in pixels (0..SIZE)
    cy: float
    size: float  # across, in pixels


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    sides: bool  # two objects, first on the left, second on the right

    @property
    def caption(self) -> str:
        return caption_of(self.objects, self.sides)


def caption_of(objects, sides: bool) -> str:
    if not sides:
        (o,) = objects
        return f"a {o.colour} {o.shape}"
    a, b = objects
    return f"a {a.colour} {a.shape} on the left and a {b.colour} {b.shape} on the right"


def parse_caption(text: str) -> list[tuple[str, str]]:
    """(colour, shape) per object, left first; raises ValueError outside the grammar."""
    w = text.strip().split()
    ok_obj = lambda c, s: c in COLOURS and s in SHAPES  # noqa: E731
    if len(w) == 3 and w[0] == "a" and ok_obj(w[1], w[2]):
        return [(w[1], w[2])]
    if (len(w) == 13 and w[0] == "a" and w[3:8] == ["on", "the", "left", "and", "a"]
            and w[10:13] == ["on", "the", "right"] and ok_obj(w[1], w[2]) and ok_obj(w[8], w[9])):
        return [(w[1], w[2]), (w[8], w[9])]
    raise ValueError(f"not a shapes caption: {text!r}")


def object_words(text: str) -> list[tuple[int, int]]:
    """(colour word, shape word) index in the caption's words, per object, left first."""
    return [(1, 2), (8, 9)][: len(parse_caption(text))]


# --------------------------------------------------------------------------- combinations


def two_object_combos() -> list[tuple[str, str, str, str]]:
    return [(c1, s1, c2, s2) for c1 in COLOURS for s1 in SHAPES for c2 in COLOURS for s2 in SHAPES]


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def held_out_combos(n: int = 16) -> list[tuple[str, str, str, str]]:
    """Two-object combinations never shown in training (fixed by a hash, not by a
    random generator, so the split never changes). Every (colour, shape) still
    appears on both sides in training."""
    combos = sorted(two_object_combos(), key=lambda c: _digest("held-out", *c))
    return sorted(combos[:n])


def training_captions() -> list[str]:
    held = set(held_out_combos())
    single = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    two = [caption_of((Obj(c1, s1, 0, 0, 0), Obj(c2, s2, 0, 0, 0)), True)
           for (c1, s1, c2, s2) in two_object_combos() if (c1, s1, c2, s2) not in held]
    return single + two


def held_out_captions() -> list[str]:
    return [caption_of((Obj(c1, s1, 0, 0, 0), Obj(c2, s2, 0, 0, 0)), True) for (c1, s1, c2, s2) in held_out_combos()]


# --------------------------------------------------------------------------- scenes and pictures


def random_object(rng: np.random.Generator, colour: str, shape: str, x_range: tuple[float, float]) -> Obj:
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    half = size / 2 + MARGIN
    cx = float(rng.uniform(x_range[0] + half, x_range[1] - half))
    cy = float(rng.uniform(half, SIZE - half))
    return Obj(colour, shape, cx, cy, size)


def scene_for(objs: list[tuple[str, str]], rng: np.random.Generator) -> Scene:
    """A random placement for (colour, shape) pairs in the caption's order."""
    if len(objs) == 1:
        return Scene((random_object(rng, *objs[0], (0, SIZE)),), sides=False)
    left = random_object(rng, *objs[0], (0, SIZE / 2))
    right = random_object(rng, *objs[1], (SIZE / 2, SIZE))
    return Scene((left, right), sides=True)


def random_scene(rng: np.random.Generator, captions: list[str], single_share: float = 0.3) -> Scene:
    singles = [c for c in captions if len(c.split()) == 3]
    pairs = [c for c in captions if len(c.split()) != 3]
    pool = singles if (pairs == [] or (singles and rng.random() < single_share)) else pairs
    return scene_for(parse_caption(pool[int(rng.integers(len(pool)))]), rng)


def object_mask(o: Obj, size: int = SIZE) -> np.ndarray:
    """Exact pixel mask: a pixel belongs to the object when its centre is inside it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - o.cx, y - o.cy
    h = o.size / 2
    if o.shape == "circle":
        return dx * dx + dy * dy <= h * h
    if o.shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if o.shape == "triangle":  # apex up, base at the bottom: |dx| <= (dy + h) / 2 within the box
        return (dy >= -h) & (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    raise ValueError(f"unknown shape {o.shape!r}")


def render(scene: Scene, size: int = SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """(image uint8 [H, W, 3], one bool mask per object). Pure colours, no antialiasing,
    so the masks are exactly the coloured pixels."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    masks = []
    for o in scene.objects:
        m = object_mask(o, size)
        img[m] = COLOURS[o.colour]
        masks.append(m)
    return img, masks


def dataset(seed: int, n: int, captions: list[str] | None = None, single_share: float = 0.3) -> list[Scene]:
    """``n`` scenes, deterministic from ``seed`` (numpy's PCG64 stream)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    caps = captions if captions is not None else training_captions()
    return [random_scene(rng, caps, single_share) for _ in range(n)]


# --------------------------------------------------------------------------- the judge

PALETTE = np.array([COLOURS[c] for c in COLOURS], dtype=np.float64)
COLOUR_NAMES = list(COLOURS)
MIN_AREA = 120  # px; the smallest object (a 24 px triangle) has about 290


def colour_labels(img: np.ndarray, min_brightness: float = 90.0) -> np.ndarray:
    """Per pixel: index into COLOUR_NAMES of the nearest palette colour, or -1 (background)."""
    f = img.astype(np.float64)
    d = ((f[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    lab = d.argmin(-1)
    lab[f.max(-1) < min_brightness] = -1
    return lab


# how full each corner quarter of the bounding box is (top-left, top-right, bottom-left, bottom-right)
SHAPE_CORNERS = {"circle": (0.3, 0.3, 0.3, 0.3), "square": (1.0, 1.0, 1.0, 1.0), "triangle": (0.0, 0.0, 0.78, 0.78)}


def corner_fill(mask: np.ndarray) -> np.ndarray:
    """The filled share of each corner (a quarter of the bounding box on each side) of a blob."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = box.shape
    ch, cw = max(1, h // 4), max(1, w // 4)
    return np.array([box[:ch, :cw].mean(), box[:ch, -cw:].mean(), box[-ch:, :cw].mean(), box[-ch:, -cw:].mean()])


def classify_shape(mask: np.ndarray) -> str | None:
    """circle / square / triangle: the nearest prototype of corner fill (a square fills its bounding box's
    corners, an upright triangle only the bottom ones, a circle a little of each); robust to a dent or a
    wobbly edge, which the model's pictures have."""
    if int(mask.sum()) < MIN_AREA:
        return None
    c = corner_fill(mask)
    return min(SHAPE_CORNERS, key=lambda s: float(((c - np.array(SHAPE_CORNERS[s])) ** 2).sum()))


@dataclass(frozen=True)
class Found:
    colour: str | None
    shape: str | None
    mask: np.ndarray  # the pixels of the judged object (empty when nothing was found)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool mask (plain flood fill; pictures are small)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, comp = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def find_object(img: np.ndarray, region: np.ndarray | None = None) -> Found:
    """The dominant coloured object within ``region`` (bool mask; None = whole picture)."""
    lab = colour_labels(img)
    if region is not None:
        lab = np.where(region, lab, -1)
    counts = [(int((lab == i).sum()), i) for i in range(len(COLOUR_NAMES))]
    n, best = max(counts)
    if n < MIN_AREA:
        return Found(None, None, np.zeros(lab.shape, dtype=bool))
    blob = largest_component(lab == best)
    return Found(COLOUR_NAMES[best], classify_shape(blob), blob)


def halves(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(size)[None, :].repeat(size, 0)
    return x < size // 2, x >= size // 2


def judge(img: np.ndarray, caption: str) -> tuple[bool, list[Found]]:
    """Whether the picture shows the caption: right colours and shapes, on the right
    sides; returns the objects found (one per caption object, in caption order)."""
    want = parse_caption(caption)
    if len(want) == 1:
        found = [find_object(img)]
    else:
        left, right = halves(img.shape[0])
        found = [find_object(img, left), find_object(img, right)]
    ok = all(f.colour == c and f.shape == s for f, (c, s) in zip(found, want, strict=True))
    return ok, found


# --------------------------------------------------------------------------- map scores


def upsample(m: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Bilinear upsampling of a small map (cell centres aligned as align_corners=False)."""
    h, w = m.shape
    def axis(n_in, n_out):
        c = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        c = np.clip(c, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo
    ylo, yhi, fy = axis(h, size)
    xlo, xhi, fx = axis(w, size)
    top = m[ylo][:, xlo] * (1 - fx) + m[ylo][:, xhi] * fx
    bot = m[yhi][:, xlo] * (1 - fx) + m[yhi][:, xhi] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (between-class variance maximised)."""
    v = values.ravel().astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - mu) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(edges[int(between.argmax()) + 1])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def map_iou(small_map: np.ndarray, region: np.ndarray, method: str = "otsu") -> float:
    """IoU of a word's map, upsampled to the picture and thresholded (``otsu`` or
    ``mean`` as ConceptAttention does), with an object's region."""
    up = upsample(np.asarray(small_map, dtype=np.float64), region.shape[0])
    t = otsu_threshold(up) if method == "otsu" else float(up.mean())
    return iou(up > t, region)


def inside_outside(small_map: np.ndarray, region: np.ndarray) -> float:
    """Mean of the map inside the region over its mean outside (1 = no localisation)."""
    up = upsample(np.asarray(small_map, dtype=np.float64), region.shape[0])
    inside, outside = up[region], up[~region]
    if inside.size == 0 or outside.size == 0 or outside.mean() <= 0:
        return float("nan")
    return float(inside.mean() / outside.mean())
