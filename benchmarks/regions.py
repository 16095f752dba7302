"""Steering measured on the shapes model, beside what stock ComfyUI does, in one run.

    python benchmarks/regions.py            # the documented run (held-out seeds)
    python benchmarks/regions.py --quick    # a few cases (what the CI test runs)

(a) Enfoque Region on single-object captions ("a {colour} {shape}") with a quadrant mask: how often the
    object lands in the quadrant (its centre inside it; without a region, chance is about 25 %), beside
    stock ComfyUI's ConditioningSetMask with the same mask (the caption masked to the quadrant, an empty
    prompt for the rest), and the time of each;
(b) two-object captions whose region masks put each object's words on the other side from the one the
    caption says: how often both objects follow the masks (a finding either way), beside
    ConditioningSetMask (one conditioning per object, each masked);
(a2) where the image's attention to the object's words goes (the share of their map inside the mask),
    with a region at strength 1 and 0.5, none, and ConditioningSetMask;
(c) whether a region's words, as queries, should also see only the image inside the mask (as ComfyUI
    core's Flux attention masks do): (a) and (b) with and without it;
(d) weights, dose-response: presence and area of the left object for ``shape:w``, w in 0, 0.25, 0.5, 1,
    1.5, 2, through Enfoque Token Weights in bias and scale mode, Enfoque Patch CLIP's ``(shape:w)`` in
    attention mode, and stock ComfyUI's ``(shape:w)`` (plain CLIPTextEncode), on the same seeds.

Everything goes through ComfyUI in-process with the stock loaders and samplers (map_quality's rig).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools", ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import map_quality as mq  # noqa: E402
import shapes_data as sd  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
SIZE = sd.SIZE


def quadrants() -> dict[str, np.ndarray]:
    h = SIZE // 2
    out = {}
    for name, (y, x) in {"top left": (0, 0), "top right": (0, h), "bottom left": (h, 0), "bottom right": (h, h)}.items():
        m = np.zeros((SIZE, SIZE), dtype=np.float32)
        m[y : y + h, x : x + h] = 1.0
        out[name] = m
    return out


def halves() -> dict[str, np.ndarray]:
    left, right = sd.halves()
    return {"left": left.astype(np.float32), "right": right.astype(np.float32)}


def centre_inside(found: sd.Found, mask: np.ndarray) -> bool:
    if not found.mask.any():
        return False
    ys, xs = np.nonzero(found.mask)
    return bool(mask[int(round(ys.mean())), int(round(xs.mean()))] > 0.5)


class Steering:
    """The rig plus the region and stock-mask conditionings."""

    def __init__(self, rig: mq.Rig) -> None:
        self.rig = rig
        import torch

        self.torch = torch
        self.model, _ = rig.patch(capture=False)

    def mask(self, m: np.ndarray):
        return self.torch.from_numpy(m)[None]

    def region(self, cond, mask: np.ndarray, words: str, see: bool):
        import importlib

        regions = importlib.import_module(f"{self.rig.host.pack_module_name}.nodes.model_patch.regions")
        old = regions.WORDS_SEE_MASK
        regions.WORDS_SEE_MASK = see  # the default of the specs this node makes (measured here, case (c))
        try:
            return self.rig.node("EnfoqueRegion", conditioning=cond, mask=self.mask(mask), words=words, strength=1.0,
                                 start_percent=0.0, end_percent=1.0)[0]
        finally:
            regions.WORDS_SEE_MASK = old

    def stock_masked(self, parts: list[tuple[str, np.ndarray]], patched: bool = False):
        """ConditioningSetMask per part, combined (``patched``: encoded by Enfoque Patch CLIP, whose encode of a
        prompt without weights is the stock one, so the maps are labelled by words)."""
        conds = [self.rig.node("ConditioningSetMask", conditioning=self.rig.encode(text, patched=patched),
                               mask=self.mask(m), strength=1.0, set_cond_area="default")[0] for text, m in parts]
        out = conds[0]
        for c in conds[1:]:
            out = self.rig.node("ConditioningCombine", conditioning_1=out, conditioning_2=c)[0]
        return out

    def draw(self, model, positive, negative, seed: int, batch: int) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        images = self.rig.decode(self.rig.sample(model, positive, negative, seed, batch))
        return images, time.perf_counter() - t


def single_objects(st: Steering, captions: list[str], seed: int, batch: int, negative) -> dict:
    out: dict[str, dict] = {}
    quads = list(quadrants().items())
    for method in ("none", "region", "region+words see mask", "ConditioningSetMask"):
        hits, right, seconds, n = 0, 0, 0.0, 0
        for k, cap in enumerate(captions):
            _, q = quads[k % len(quads)]
            obj = " ".join(cap.split()[1:])
            if method == "none":
                pos, model = st.rig.encode(cap), st.model
            elif method == "ConditioningSetMask":
                pos, model = st.stock_masked([(cap, q), ("", 1.0 - q)]), st.rig.model
            else:
                pos, model = st.region(st.rig.encode(cap), q, obj, method.endswith("see mask")), st.model
            images, s = st.draw(model, pos, negative, seed + k, batch)
            seconds += s
            for img in images:
                ok, (found,) = sd.judge(img, cap)
                n += 1
                inside = centre_inside(found, q)
                hits += inside
                right += inside and ok
        out[method] = {"pictures": n, "in_quadrant": hits / n, "right_object_in_quadrant": right / n,
                       "seconds_per_picture": seconds / n}
    return out


def attention_inside(st: Steering, captions: list[str], seed: int, batch: int, negative) -> dict:
    """Where the image's attention to the object's words goes: the share of the words' map (mean over steps
    and blocks, token grid) inside the quadrant mask, per method. A region at strength 1 leaves nothing
    outside; ConditioningSetMask masks the model's output, not its attention."""
    model, probe = st.rig.patch(capture=True)
    quads = list(quadrants().items())
    out: dict[str, dict] = {}
    for method, strength in (("none", None), ("region, strength 0.5", 0.5), ("region", 1.0),
                             ("ConditioningSetMask", None)):
        shares = []
        for k, cap in enumerate(captions):
            _, q = quads[k % len(quads)]
            obj = " ".join(cap.split()[1:])
            if method == "ConditioningSetMask":
                pos = st.stock_masked([(cap, q), ("", 1.0 - q)], patched=True)
            elif strength is None:
                pos = st.rig.encode(cap)
            else:
                pos = st.rig.node("EnfoqueRegion", conditioning=st.rig.encode(cap), mask=st.mask(q), words=obj,
                                  strength=strength, start_percent=0.0, end_percent=1.0)[0]
            latent = st.rig.sample(model, pos, negative, seed + k, batch)
            maps = st.rig.node("EnfoqueAttentionMaps", probe=probe, latent=latent, words=obj)[0].maps.numpy()
            cells = area_cells(q, maps.shape[-2:])
            shares += list((maps[:, 0] * cells).sum(axis=(1, 2)) / maps[:, 0].sum(axis=(1, 2)))
        out[method] = {"pictures": len(shares), "share_inside": float(np.mean(shares)),
                       "share_inside_min": float(np.min(shares))}
    return out


def area_cells(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask's mean over each cell of a ``size`` grid (the sizes divide)."""
    h, w = size
    return mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).mean(axis=(1, 3))


def swapped_objects(st: Steering, captions: list[str], seed: int, batch: int, negative) -> dict:
    sides = halves()
    out: dict[str, dict] = {}
    for method in ("none", "region", "region+words see mask", "ConditioningSetMask"):
        both, n, seconds = 0, 0, 0.0
        for k, cap in enumerate(captions):
            (c1, s1), (c2, s2) = sd.parse_caption(cap)
            if method == "none":
                pos, model = st.rig.encode(cap), st.model
            elif method == "ConditioningSetMask":
                pos = st.stock_masked([(f"a {c1} {s1}", sides["right"]), (f"a {c2} {s2}", sides["left"])])
                model = st.rig.model
            else:
                see = method.endswith("see mask")
                pos = st.region(st.rig.encode(cap), sides["right"], f"{c1} {s1}", see)
                pos = st.region(pos, sides["left"], f"{c2} {s2}", see)
                model = st.model
            images, s = st.draw(model, pos, negative, seed + k, batch)
            seconds += s
            for img in images:
                left = sd.find_object(img, sides["left"] > 0)
                right = sd.find_object(img, sides["right"] > 0)
                n += 1
                both += (left.colour, left.shape) == (c2, s2) and (right.colour, right.shape) == (c1, s1)
        out[method] = {"pictures": n, "both_follow_the_masks": both / n, "seconds_per_picture": seconds / n}
    return out


def dose_response(st: Steering, captions: list[str], seed: int, batch: int, negative) -> dict:
    """Left object's presence and area (pixels) for ``s1:w``, per way of weighing."""
    left, right = sd.halves()
    bias, _ = st.rig.patch(capture=False, reweight="bias")
    scale, _ = st.rig.patch(capture=False, reweight="scale")
    out: dict[str, dict] = {}
    for way in ("Enfoque bias", "Enfoque scale", "Patch CLIP attention", "stock ComfyUI"):
        rows = {}
        for w in WEIGHTS:
            present, areas, kept = [], [], []
            for k, cap in enumerate(captions):
                (c1, s1), (c2, s2) = sd.parse_caption(cap)
                weighted = cap.replace(f" {s1} ", f" ({s1}:{w:g}) ", 1)
                if way in ("Enfoque bias", "Enfoque scale"):
                    pos = st.rig.node("EnfoqueTokenWeights", conditioning=st.rig.encode(cap), weights=f"{s1}:{w:g}")[0]
                    model = bias if way == "Enfoque bias" else scale
                elif way == "Patch CLIP attention":
                    pos, model = st.rig.encode(weighted), bias
                else:
                    pos, model = st.rig.encode(weighted, patched=False), st.rig.model
                images, _ = st.draw(model, pos, negative, seed + k, batch)
                for img in images:
                    f = sd.find_object(img, left)
                    r = sd.find_object(img, right)
                    present.append((f.colour, f.shape) == (c1, s1))
                    areas.append(int(f.mask.sum()) if f.colour == c1 else 0)
                    kept.append((r.colour, r.shape) == (c2, s2))
            rows[w] = {"present": float(np.mean(present)), "area": float(np.mean(areas)),
                       "other_kept": float(np.mean(kept))}
        out[way] = rows
    return out


def tables(res: dict) -> str:
    lines = ["(a) single objects with a quadrant mask: the object's centre in the quadrant (chance: about 25 %)", "",
             "| method | pictures | in the quadrant | right object in it | s / picture |", "|---|---|---|---|---|"]
    for m, v in res["single"].items():
        lines.append(f"| {m} | {v['pictures']} | {v['in_quadrant']:.0%} | {v['right_object_in_quadrant']:.0%} | "
                     f"{v['seconds_per_picture']:.2f} |")
    lines += ["", "(a2) the image's attention to the object's words: the share of their map (token grid, mean over "
              "steps and blocks) inside the quadrant mask (the quadrant is 25 % of the picture)", "",
              "| method | pictures | share inside (mean) | share inside (lowest) |", "|---|---|---|---|"]
    for m, v in res["attention"].items():
        lines.append(f"| {m} | {v['pictures']} | {v['share_inside']:.1%} | {v['share_inside_min']:.1%} |")
    lines += ["", "(b) two objects, each object's words masked to the other side than the caption says: both "
              "objects follow the masks", "", "| method | pictures | both follow | s / picture |", "|---|---|---|---|"]
    for m, v in res["swapped"].items():
        lines.append(f"| {m} | {v['pictures']} | {v['both_follow_the_masks']:.0%} | {v['seconds_per_picture']:.2f} |")
    lines += ["", "(d) weights, dose-response: the left object's shape word weighted w (held-out captions, same seeds)",
              "", "| way | w | left object present | its area (px) | right object kept |", "|---|---|---|---|---|"]
    for way, rows in res["dose"].items():
        for w, v in rows.items():
            lines.append(f"| {way} | {w:g} | {v['present']:.0%} | {v['area']:.0f} | {v['other_kept']:.0%} |")
    return "\n".join(lines)


def evaluate(rig: mq.Rig, quick: bool = False, seed: int = 515151, log=print) -> dict:
    st = Steering(rig)
    negative = rig.encode("")
    batch = 2 if quick else 4
    singles = [c for c in sd.training_captions() if len(c.split()) == 3]
    held = sd.held_out_captions()
    rng = np.random.Generator(np.random.PCG64(99))
    singles = list(rng.choice(singles, 4 if quick else 12, replace=False))
    t0 = time.time()
    res = {"single": single_objects(st, singles, seed, batch, negative)}
    log(f"  single objects ({time.time() - t0:.0f} s)")
    distinct = [c for c in held if sd.parse_caption(c)[0] != sd.parse_caption(c)[1]]  # a swap must show
    res["attention"] = attention_inside(st, singles[:2] if quick else singles[:6], seed + 300, batch, negative)
    log(f"  attention inside the mask ({time.time() - t0:.0f} s)")
    res["swapped"] = swapped_objects(st, distinct[: 2 if quick else 8], seed + 100, batch, negative)
    log(f"  swapped objects ({time.time() - t0:.0f} s)")
    dose_caps = [c for c in held if sd.parse_caption(c)[0][1] != sd.parse_caption(c)[1][1]][: 2 if quick else 6]
    res["dose"] = {} if quick else dose_response(st, dose_caps, seed + 200, batch, negative)
    res["seconds"] = time.time() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few cases (the CI version)")
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "regions" / "results.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="enfoque_regions_"))
    rig = mq.load_rig(mq.host_in_process(work), work / "models")
    res = evaluate(rig, quick=args.quick)
    print(tables(res))
    print(f"ran in {res['seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
