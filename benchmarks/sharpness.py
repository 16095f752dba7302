"""Step 16's tables for benchmarks/map_quality.py: how sharp the maps are on the shapes model.

- per kind of map (``cross``: the exact attention; ``refined``: through the image's own attention) and
  per block range and step window, shape-word mIoU on the token grid (bilinear, Otsu): what the
  attention knows, never mixed with
- the same maps upsampled ``guided`` by the decoded picture (attention plus the picture's edges);
- the best setting on each caption set (held-out captions, trained captions with their own seeds), so a
  documented setting is one that holds on more than one set;
- leakage: on captions whose two objects share a colour or a shape, the share of a shape word's map
  (on the two objects) that lands on the other object.
"""

from __future__ import annotations

import numpy as np
import shapes_data as sd
import torch

from attention.upsample import guided


def guided_iou(small_map: np.ndarray, picture: np.ndarray, region: np.ndarray) -> float:
    """IoU of a word's map upsampled guided by the picture, thresholded by Otsu, with the object's region."""
    m = torch.from_numpy(np.asarray(small_map, dtype=np.float32))[None, None]
    img = torch.from_numpy(picture.astype(np.float32) / 255.0)[None]
    up = guided(m, img)[0, 0].double().numpy()
    return sd.iou(up > sd.otsu_threshold(up), region)


def setting_scores(runs, blocks: list[int], steps: range, upscale: str) -> dict:
    """Shape-word mIoU (Otsu) of correctly drawn objects for one block range and step window."""
    ious = []
    for r in runs:
        m = r.setting_map(blocks, steps)
        if m is None:
            continue
        for i in range(len(r.images)):
            for o, (_, si) in enumerate(sd.object_words(r.caption)):
                f = r.found[i][o]
                if (f.colour, f.shape) != sd.parse_caption(r.caption)[o]:
                    continue
                if upscale == "guided":
                    ious.append(guided_iou(m[i, si], r.images[i], f.mask))
                else:
                    ious.append(sd.map_iou(m[i, si], f.mask, "otsu"))
    return {"objects": len(ious), "shape_miou_otsu": float(np.mean(ious)) if ious else float("nan")}


def best(scores: dict) -> tuple:
    return max(scores, key=lambda k: np.nan_to_num(scores[k]["shape_miou_otsu"], nan=-1))


def leakage(runs) -> dict:
    """Per caption kind (shared colour, shared shape): the mean share of each object's shape-word map, on the
    two objects, that lands on the other object (bilinear on the picture), over correctly drawn pictures."""
    out: dict[str, list[float]] = {}
    for r in runs:
        (c1, s1), (c2, s2) = sd.parse_caption(r.caption)
        kind = "shared colour" if c1 == c2 else "shared shape" if s1 == s2 else "distinct"
        m = r.setting_map(list(range(len(r.block_maps))), range(len(r.step_maps)))
        for i in range(len(r.images)):
            if not r.ok[i]:
                continue
            masks = [r.found[i][0].mask, r.found[i][1].mask]
            for o, (_, si) in enumerate(sd.object_words(r.caption)):
                up = np.clip(sd.upsample(np.asarray(m[i, si], dtype=np.float64), masks[0].shape[0]), 0, None)
                own, other = float(up[masks[o]].sum()), float(up[masks[1 - o]].sum())
                if own + other > 0:
                    out.setdefault(kind, []).append(other / (own + other))
    return {k: {"objects": len(v), "leak": float(np.mean(v))} for k, v in out.items()}


def leakage_captions() -> list[str]:
    """Two-object captions whose objects share a colour, and ones that share a shape."""
    combos = [(c1, s1, c2, s2) for (c1, s1, c2, s2) in sd.two_object_combos() if (c1 == c2) != (s1 == s2)]
    chosen = sorted(combos, key=lambda c: sd._digest("leakage", *c))[:8]
    return [f"a {c1} {s1} on the left and a {c2} {s2} on the right" for c1, s1, c2, s2 in chosen]


def tables(res: dict) -> list[str]:
    """The markdown lines of Step 16's tables."""
    lines = ["", "(g) sharper maps: shape-word mIoU (Otsu) per kind of map, block range and step window. Token "
             "grid: each map upsampled bilinearly (what the attention knows); the guided rows add the picture's "
             "edges and are never mixed with them.", "",
             "| kind | blocks | steps | objects | token grid | guided by the picture |", "|---|---|---|---|---|---|"]
    for key, v in res["grid"].items():
        kind, bn, wn = key
        g = res["guided"].get(key)
        lines.append(f"| {kind} | {bn} | {wn} | {v['objects']} | {v['shape_miou_otsu']:.3f} | "
                     f"{g['shape_miou_otsu']:.3f} |" if g else
                     f"| {kind} | {bn} | {wn} | {v['objects']} | {v['shape_miou_otsu']:.3f} | - |")
    lines += ["", "(h) the best setting on each caption set (token grid): a documented setting holds on both", "",
              "| caption set | kind | best blocks | best steps | mIoU | documented setting's mIoU |",
              "|---|---|---|---|---|---|"]
    for (cset, kind), v in res["sets"].items():
        lines.append(f"| {cset} | {kind} | {v['best'][0]} | {v['best'][1]} | {v['best_miou']:.3f} | "
                     f"{v['documented_miou']:.3f} |")
    lines += ["", "(i) leakage: share of a shape word's map, on the two objects, that lands on the other object "
              "(all blocks, all steps, bilinear)", "", "| captions | kind | objects | leak |", "|---|---|---|---|"]
    for (cap_kind, kind), v in res["leakage"].items():
        lines.append(f"| {cap_kind} | {kind} | {v['objects']} | {v['leak']:.3f} |")
    return lines
