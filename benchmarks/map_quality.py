"""Map quality on the trained "shapes" model (tools/shapes.py): one run, six tables.

    python benchmarks/map_quality.py            # the documented run (held-out captions and seeds)
    python benchmarks/map_quality.py --quick    # a few captions, no concept maps (what the CI test runs)

Everything goes through ComfyUI in-process with the stock loaders and samplers
(UNETLoader, CLIPLoader type sd3, VAELoader, EmptySD3LatentImage, KSampler
euler/simple 20 steps cfg 4, VAEDecode) and the pack's nodes (EnfoquePatchCLIP,
EnfoquePatchModel, EnfoqueAttentionMaps, EnfoqueTokenWeights).

(a) generation accuracy: colour and shape of every object on the right side,
    judged by colour segmentation of the decoded picture (tools/shapes_data.py);
(b) map quality: IoU of each object's shape word (and colour word) map with that
    object's region in the decoded picture, thresholded by Otsu and by the mean
    (as ConceptAttention does), per block range and step window;
(c) weights acting on the picture: ``shape:0`` removes that object, ``colour:2``
    raises that colour's area, in bias and scale mode;
(d) maps from a stock CLIP encode (labelled by position) against maps from an
    EnfoquePatchCLIP encode (labelled by word): they must agree;
(e) concept maps (EnfoqueConcepts: circle, square, triangle, background) of the
    generated pictures, per step window and per block;
(f) existing pictures (dataset pictures with their exact masks) through
    EnfoqueImageMaps: shape-word and concept mIoU, by noise and repeats.

The quick run computes no concept maps ((e) and the concept columns of (f)): they do not localise on
this model (README), so no threshold could hold them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tools", ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import shapes_data as sd  # noqa: E402
import sharpness  # noqa: E402

STEPS, CFG = 20, 4.0
CONCEPTS = ("circle", "square", "triangle", "background")  # EnfoqueConcepts for the concept maps
WINDOWS = {  # name -> steps (of 20) averaged
    "all steps": range(0, 20),
    "steps 0-4": range(0, 5),
    "steps 5-9": range(5, 10),
    "steps 10-14": range(10, 15),
    "steps 15-19": range(15, 20),
    "steps 0-9": range(0, 10),
    "steps 10-19": range(10, 20),
}
DEFAULT_SETTING = ("all blocks", "all steps")
QUICK_LATE = ("all blocks", "steps 15-19")  # the quick run's second setting: late steps, no per-block runs needed


@dataclass
class Rig:
    """The shapes model loaded by the stock nodes, and the pack's nodes, in one ComfyUI process."""

    host: object
    model: object
    clip: object
    pclip: object
    vae: object
    n_blocks: int
    concepts: object = None  # ENFOQUE_CONCEPTS of CONCEPTS

    def node(self, node_id: str, **inputs):
        import torch

        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            return self.host.run(node_id, **inputs)

    def encode(self, text: str, patched: bool = True):
        return self.node("CLIPTextEncode", clip=self.pclip if patched else self.clip, text=text)[0]

    def patch(self, blocks: str = "all", reweight: str = "bias", keep_steps: bool = False,
              keep_blocks: bool = False, concepts: bool = False, capture: bool = True, refine: str = "off"):
        extra = {"concepts": self.concepts} if concepts else {}
        out = self.node("EnfoquePatchModel", model=self.model, capture=capture, reweight=reweight, blocks=blocks,
                        start_percent=0.0, end_percent=1.0, keep_steps=keep_steps, keep_blocks=keep_blocks,
                        refine=refine, **extra)
        return out[0], out[1]

    def sample(self, model, positive, negative, seed: int, batch: int):
        latent = self.node("EmptySD3LatentImage", width=128, height=128, batch_size=batch)[0]
        return self.node("KSampler", model=model, seed=seed, steps=STEPS, cfg=CFG, sampler_name="euler",
                         scheduler="simple", positive=positive, negative=negative, latent_image=latent,
                         denoise=1.0)[0]

    def decode(self, latent) -> np.ndarray:
        img = self.node("VAEDecode", samples=latent, vae=self.vae)[0]
        return (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)

    def maps(self, probe, latent, step: int = -1, block: int = -1, kind: str = "cross"):
        return self.node("EnfoqueAttentionMaps", probe=probe, latent=latent, words="", step=step, block=block,
                         kind=kind)[0]

    def image_maps(self, model, positive, picture: np.ndarray, noise: float, repeats: int, seed: int):
        """EnfoqueImageMaps of an existing picture (VAE Encode of it): (cross maps, concept maps)."""
        import torch

        pixels = torch.from_numpy(picture[None].astype(np.float32) / 255.0)
        latent = self.node("VAEEncode", pixels=pixels, vae=self.vae)[0]
        out = self.node("EnfoqueImageMaps", model=model, positive=positive, latent=latent, noise=noise,
                        repeats=repeats, seed=seed)
        return out[0], out[1]


def load_rig(h, models_dir: Path, dit: Path | None = None, vae: Path | None = None) -> Rig:
    """The shapes files installed in ``models_dir``, loaded by the stock loaders of the
    in-process ComfyUI ``h`` (a ``tests/host.Host``), and a patched CLIP."""
    import folder_paths
    import shapes

    models_dir = Path(models_dir)
    if dit is None or vae is None:
        shapes.install(models_dir)
    else:  # evaluating training outputs: only the generated CLIP-L is needed
        shapes.install_clip(models_dir)
    for sub in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(sub, str(models_dir / sub), is_default=True)
    unet_name, vae_name = shapes.DIT_FILE, shapes.VAE_FILE
    if dit is not None:  # a checkpoint under evaluation
        folder_paths.add_model_folder_path("diffusion_models", str(Path(dit).resolve().parent), is_default=True)
        unet_name = Path(dit).name
    if vae is not None:
        folder_paths.add_model_folder_path("vae", str(Path(vae).resolve().parent), is_default=True)
        vae_name = Path(vae).name
    model = h.run("UNETLoader", unet_name=unet_name, weight_dtype="default")[0]
    clip = h.run("CLIPLoader", clip_name=shapes.CLIP_FILE, type="sd3")[0]
    vae_obj = h.run("VAELoader", vae_name=vae_name)[0]
    pclip = h.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=False)[0]
    n_blocks = len(model.get_model_object("diffusion_model").joint_blocks)
    concepts = h.run("EnfoqueConcepts", clip=clip, concepts=", ".join(CONCEPTS))[0]
    return Rig(h, model, clip, pclip, vae_obj, n_blocks, concepts)


def host_in_process(work: Path):
    """ComfyUI in-process (``--cpu``) with the pack, as the tests load it."""
    import host

    return host.in_process(work, who="map_quality")


# --------------------------------------------------------------------------- one caption


@dataclass
class CaptionRun:
    caption: str
    seed: int
    images: np.ndarray  # [B, H, W, 3] uint8
    ok: list[bool]
    found: list[list[sd.Found]]
    words: list[str]
    step_maps: list[np.ndarray]  # per step, mean over all blocks: [B, words, h, w]
    block_maps: list[np.ndarray]  # per block, mean over all steps
    joint: list[list[np.ndarray]] | None = None  # [block][step], when each block was run on its own
    concept_steps: list[np.ndarray] | None = None  # concept maps per step (all blocks): [B, concepts, h, w]
    concept_blocks: list[np.ndarray] | None = None  # concept maps per block (all steps)
    refined: CaptionRun | None = None  # the same pictures' refined maps (Enfoque Patch Model's refine)

    def view(self, kind: str) -> CaptionRun:
        """This run's cross maps, or its refined maps in their place."""
        return self if kind == "cross" else self.refined

    def setting_map(self, blocks: list[int], steps: range) -> np.ndarray | None:
        """The mean map over these blocks and steps (every block and step is called equally often)."""
        if self.joint is not None:
            return np.mean([self.joint[b][s] for b in blocks for s in steps], axis=0)
        if len(blocks) == len(self.block_maps):
            return np.mean([self.step_maps[s] for s in steps], axis=0)
        if len(steps) == len(self.step_maps):
            return np.mean([self.block_maps[b] for b in blocks], axis=0)
        return None


def object_word_index(words: list[str], caption: str) -> list[tuple[int, int]]:
    """(colour word index, shape word index) per caption object, in the maps' word list."""
    if [w.lower() for w in words] != caption.split():
        raise RuntimeError(f"map_quality: the maps' words {words} are not the caption's words {caption.split()}")
    return sd.object_words(caption)


def run_caption(rig: Rig, caption: str, seed: int, batch: int, negative, joint: bool = False,
                concepts: bool = True) -> CaptionRun:
    """Sample ``batch`` pictures of the caption with capture on (per step and per block), the refined maps
    too (refine changes nothing else); with ``joint`` each block is also run on its own, so that any block
    range and step window can be scored; with ``concepts`` the concept maps too."""
    positive = rig.encode(caption)
    model, probe = rig.patch(keep_steps=True, keep_blocks=True, concepts=concepts, refine="self-attention")
    latent = rig.sample(model, positive, negative, seed, batch)
    images = rig.decode(latent)
    step_maps = [rig.maps(probe, latent, step=s).maps.numpy() for s in range(STEPS)]
    block_maps = [rig.maps(probe, latent, block=b).maps.numpy() for b in range(rig.n_blocks)]
    words = rig.maps(probe, latent).words
    concept_steps = concept_blocks = None
    if concepts:
        concept_steps = [rig.maps(probe, latent, step=s, kind="concept").maps.numpy() for s in range(STEPS)]
        concept_blocks = [rig.maps(probe, latent, block=b, kind="concept").maps.numpy()
                          for b in range(rig.n_blocks)]
        if list(rig.maps(probe, latent, kind="concept").words) != list(CONCEPTS):
            raise RuntimeError(f"map_quality: the concept maps are not labelled {CONCEPTS}")
    refined_steps = [rig.maps(probe, latent, step=s, kind="refined").maps.numpy() for s in range(STEPS)]
    refined_blocks = [rig.maps(probe, latent, block=b, kind="refined").maps.numpy() for b in range(rig.n_blocks)]
    per_block = refined_joint = None
    if joint:
        per_block, refined_joint = [], []
        for b in range(rig.n_blocks):
            model_b, probe_b = rig.patch(blocks=str(b), keep_steps=True, refine="self-attention")
            latent_b = rig.sample(model_b, positive, negative, seed, batch)
            if not bool((latent_b["samples"] == latent["samples"]).all()):
                raise RuntimeError("map_quality: capture changed the sampled latent")
            per_block.append([rig.maps(probe_b, latent_b, step=s).maps.numpy() for s in range(STEPS)])
            refined_joint.append([rig.maps(probe_b, latent_b, step=s, kind="refined").maps.numpy()
                                  for s in range(STEPS)])
    verdicts = [sd.judge(img, caption) for img in images]
    ok, found = [v[0] for v in verdicts], [v[1] for v in verdicts]
    refined = CaptionRun(caption, seed, images, ok, found, list(words), refined_steps, refined_blocks, refined_joint)
    return CaptionRun(caption, seed, images, ok, found, list(words), step_maps, block_maps, per_block,
                      concept_steps, concept_blocks, refined)


# --------------------------------------------------------------------------- scores


def settings(n_blocks: int) -> list[tuple[str, list[int], str, range]]:
    blocks = {"all blocks": list(range(n_blocks))}
    for b in range(n_blocks):
        blocks[f"block {b}"] = [b]
    for b in range(n_blocks - 1):
        blocks[f"blocks {b}-{b + 1}"] = [b, b + 1]
    return [(bn, bl, wn, wr) for bn, bl in blocks.items() for wn, wr in WINDOWS.items()]


def map_scores(runs: list[CaptionRun], n_blocks: int) -> dict:
    """Per setting: mIoU (otsu, mean) of shape words and colour words over correctly drawn objects,
    and how often the object's own shape word scores a higher inside/outside ratio than the other object's."""
    out = {}
    for bn, bl, wn, wr in settings(n_blocks):
        shape_otsu, shape_mean, colour_otsu, colour_mean, own_wins, in_out = [], [], [], [], [], []
        share_otsu, share_mean = [], []
        for r in runs:
            idx = object_word_index(r.words, r.caption)
            m = r.setting_map(bl, wr)
            if m is None:
                continue
            # each word's share of the attention the pixel gives the prompt's words
            share = m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
            for i in range(len(r.images)):
                for o, (ci, si) in enumerate(idx):
                    f = r.found[i][o]
                    want = sd.parse_caption(r.caption)[o]
                    if (f.colour, f.shape) != want:
                        continue
                    region = f.mask
                    shape_otsu.append(sd.map_iou(m[i, si], region, "otsu"))
                    shape_mean.append(sd.map_iou(m[i, si], region, "mean"))
                    share_otsu.append(sd.map_iou(share[i, si], region, "otsu"))
                    share_mean.append(sd.map_iou(share[i, si], region, "mean"))
                    colour_otsu.append(sd.map_iou(m[i, ci], region, "otsu"))
                    colour_mean.append(sd.map_iou(m[i, ci], region, "mean"))
                    ratio = sd.inside_outside(m[i, si], region)
                    in_out.append(ratio)
                    if len(idx) == 2:
                        other = idx[1 - o][1]
                        own_wins.append(ratio > sd.inside_outside(m[i, other], region))
        if not shape_otsu:
            continue
        out[(bn, wn)] = {
            "objects": len(shape_otsu),
            "shape_miou_otsu": _mean(shape_otsu), "shape_miou_mean": _mean(shape_mean),
            "shape_share_miou_otsu": _mean(share_otsu), "shape_share_miou_mean": _mean(share_mean),
            "colour_miou_otsu": _mean(colour_otsu), "colour_miou_mean": _mean(colour_mean),
            "inside_over_outside_gt1": _mean([float(x > 1) for x in in_out]),
            "own_word_beats_other": _mean([float(x) for x in own_wins]),
        }
    return out


def shape_region(found: list[sd.Found], shape: str) -> np.ndarray:
    """The pixels of every object of this shape (a concept map covers all objects of its concept)."""
    out = np.zeros_like(found[0].mask)
    for f in found:
        if f.shape == shape:
            out |= f.mask
    return out


def concept_ious(cmap: np.ndarray, region: np.ndarray, concept: int) -> tuple[float, float, float]:
    """IoU of one concept's map with its region: Otsu, mean, and the argmax over concepts
    (ConceptAttention's segmentation), upsampled to the picture."""
    up = np.stack([sd.upsample(c, region.shape[0]) for c in cmap])
    argmax = sd.iou(up.argmax(0) == concept, region)
    return sd.map_iou(cmap[concept], region, "otsu"), sd.map_iou(cmap[concept], region, "mean"), argmax


def concept_scores_generated(runs: list[CaptionRun], n_blocks: int) -> dict:
    """Concept maps of the generated pictures, for correctly drawn objects: all blocks per step window,
    and each block over all steps."""
    views = {("all blocks", wn): (lambda r, wr=wr: np.mean([r.concept_steps[s] for s in wr], axis=0))
             for wn, wr in WINDOWS.items()}
    views.update({(f"block {b}", "all steps"): (lambda r, b=b: r.concept_blocks[b]) for b in range(n_blocks)})
    out = {}
    for key, view in views.items():
        otsu, mean, arg = [], [], []
        for r in runs:
            if r.concept_steps is None or r.concept_blocks is None:
                continue
            cm = view(r)
            for i in range(len(r.images)):
                for o, want in enumerate(sd.parse_caption(r.caption)):
                    if (r.found[i][o].colour, r.found[i][o].shape) != want:
                        continue
                    region = shape_region(r.found[i], want[1])
                    a, b, c = concept_ious(cm[i], region, CONCEPTS.index(want[1]))
                    otsu.append(a)
                    mean.append(b)
                    arg.append(c)
        if otsu:
            out[key] = {"objects": len(otsu), "miou_otsu": _mean(otsu), "miou_mean": _mean(mean),
                       "miou_argmax": _mean(arg)}
    return out


def existing_images(rig: Rig, n: int, settings_: list[tuple[float, int]], seed: int, concepts: bool = True) -> dict:
    """Maps of dataset pictures (held-out captions, fresh placements) through EnfoqueImageMaps, scored on
    their exact masks: the caption's shape words (cross) and, with ``concepts``, the shape concepts."""
    scenes = sd.dataset(seed, n, sd.held_out_captions() + [c for c in sd.training_captions()
                                                           if len(c.split()) == 3], single_share=0.25)
    model, _ = rig.patch(concepts=concepts)
    out = {}
    for noise, repeats in settings_:
        cross_o, cross_m, con_o, con_m, con_a = [], [], [], [], []
        for k, scene in enumerate(scenes):
            picture, masks = sd.render(scene)
            positive = rig.encode(scene.caption)
            maps, concept_maps = rig.image_maps(model, positive, picture, noise, repeats, seed + k)
            words = object_word_index(maps.words, scene.caption)
            if list(concept_maps.words) != (list(CONCEPTS) if concepts else []):
                raise RuntimeError(f"map_quality: the concept maps are not labelled {CONCEPTS if concepts else []}")
            m, cm = maps.maps.numpy()[0], concept_maps.maps.numpy()[0]
            for o, (obj, mask) in enumerate(zip(scene.objects, masks, strict=True)):
                si = words[o][1]
                cross_o.append(sd.map_iou(m[si], mask, "otsu"))
                cross_m.append(sd.map_iou(m[si], mask, "mean"))
                if not concepts:
                    continue
                region = np.any([mm for oo, mm in zip(scene.objects, masks, strict=True) if oo.shape == obj.shape],
                                axis=0)
                a, b, c = concept_ious(cm, region, CONCEPTS.index(obj.shape))
                con_o.append(a)
                con_m.append(b)
                con_a.append(c)
        out[(noise, repeats)] = {"objects": len(cross_o), "cross_miou_otsu": _mean(cross_o),
                                 "cross_miou_mean": _mean(cross_m)}
        if concepts:
            out[(noise, repeats)].update(concept_miou_otsu=_mean(con_o), concept_miou_mean=_mean(con_m),
                                         concept_miou_argmax=_mean(con_a))
    return out


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def accuracy(runs: list[CaptionRun]) -> dict:
    groups: dict[str, list[bool]] = {}
    held = set(sd.held_out_captions())
    for r in runs:
        kind = "one object" if len(r.caption.split()) == 3 else ("two objects, held out" if r.caption in held
                                                                  else "two objects, trained")
        groups.setdefault(kind, []).extend(r.ok)
    return {k: {"images": len(v), "accuracy": _mean([float(x) for x in v])} for k, v in groups.items()}


# --------------------------------------------------------------------------- (c) weights


def weight_effects(rig: Rig, captions: list[str], seed: int, batch: int, negative) -> dict:
    """``s1:0`` must remove the left object (its colour and shape gone from the left half) and keep
    the right one; ``c1:2`` must raise the area of colour c1 on the left. The picture without weights is
    the stock one in both modes (weights of 1 change nothing): sampled once per caption."""
    left, right = sd.halves()
    out = {}
    bases = {}
    for mode in ("bias", "scale"):
        removed, kept, raised, ratios, base_ok = [], [], [], [], 0
        for cap in captions:
            (c1, s1), (c2, s2) = sd.parse_caption(cap)
            positive = rig.encode(cap)
            model, _ = rig.patch(reweight=mode, capture=False)  # the pictures alone: no maps to record
            if cap not in bases:
                bases[cap] = rig.decode(rig.sample(model, positive, negative, seed, batch))
            base = bases[cap]
            zero = rig.node("EnfoqueTokenWeights", conditioning=positive, weights=f"{s1}:0")[0]
            no_shape = rig.decode(rig.sample(model, zero, negative, seed, batch))
            two = rig.node("EnfoqueTokenWeights", conditioning=positive, weights=f"{c1}:2")[0]
            more = rig.decode(rig.sample(model, two, negative, seed, batch))
            ci = sd.COLOUR_NAMES.index(c1)
            for i in range(batch):
                ok, found = sd.judge(base[i], cap)
                if not ok:
                    continue
                base_ok += 1
                after_l = sd.find_object(no_shape[i], left)
                after_r = sd.find_object(no_shape[i], right)
                removed.append((after_l.colour, after_l.shape) != (c1, s1))
                kept.append((after_r.colour, after_r.shape) == (c2, s2))
                a0 = int(((sd.colour_labels(base[i]) == ci) & left).sum())
                a1 = int(((sd.colour_labels(more[i]) == ci) & left).sum())
                raised.append(a1 > a0)
                ratios.append(a1 / max(a0, 1))
        out[mode] = {
            "cases": base_ok,
            "shape0_removes_object": _mean([float(x) for x in removed]),
            "shape0_keeps_other": _mean([float(x) for x in kept]),
            "colour2_raises_area": _mean([float(x) for x in raised]),
            "colour2_area_ratio_median": float(np.median(ratios)) if ratios else float("nan"),
        }
    return out


# --------------------------------------------------------------------------- (d) stock vs patched CLIP


def stock_vs_patched(rig: Rig, captions: list[str], seed: int, negative) -> dict:
    """The same caption encoded by the stock CLIP and by EnfoquePatchCLIP: word maps equal position maps."""
    worst, compared = 0.0, 0
    for cap in captions:
        maps = {}
        for patched in (True, False):
            model, probe = rig.patch()
            pos = rig.encode(cap, patched=patched)
            latent = rig.sample(model, pos, negative, seed, 1)
            maps[patched] = rig.maps(probe, latent)
        words, stock = maps[True], maps[False]
        spans = words.meta["context_positions"]
        for w, span in enumerate(spans):
            cols = [stock.words.index(f"#{p}") for p in span]
            diff = float(np.abs(words.maps[:, w].numpy() - stock.maps[:, cols].numpy().mean(1)).max())
            worst = max(worst, diff)
            compared += 1
    return {"words_compared": compared, "max_abs_difference": worst}


# --------------------------------------------------------------------------- the run


def caption_sets(quick: bool) -> dict[str, list[str]]:
    held = sd.held_out_captions()
    trained_two = [c for c in sd.training_captions() if len(c.split()) > 3]
    singles = [c for c in sd.training_captions() if len(c.split()) == 3]
    rng = np.random.Generator(np.random.PCG64(1234))
    if quick:
        return {"held": held[:4], "trained": list(rng.choice(trained_two, 2, replace=False)),
                "single": list(rng.choice(singles, 2, replace=False))}
    return {"held": held, "trained": list(rng.choice(trained_two, 16, replace=False)), "single": singles}


def evaluate(rig: Rig, quick: bool = False, batch: int | None = None, seed: int = 424242,
             log=print) -> dict:
    batch = batch or (2 if quick else 4)
    sets = caption_sets(quick)
    negative = rig.encode("")
    t0 = time.time()
    runs = []
    for name, caps in sets.items():
        for c in caps:
            runs.append(run_caption(rig, c, seed, batch, negative, joint=not quick, concepts=not quick))
            log(f"  {name}: {c!r}: {sum(runs[-1].ok)}/{batch} right ({time.time() - t0:.0f} s)")
    # weights: held-out captions whose two objects differ in shape (4 in the quick run: 8 pictures to judge)
    weight_caps = [c for c in sd.held_out_captions() if sd.parse_caption(c)[0][1] != sd.parse_caption(c)[1][1]]
    weight_caps = weight_caps[: (4 if quick else 10)]
    res = {
        "accuracy": accuracy(runs),
        "maps": map_scores(runs, rig.n_blocks),
        "weights": weight_effects(rig, weight_caps, seed + 1, batch, negative),
        "stock_vs_patched": stock_vs_patched(rig, sets["held"][:2], seed + 2, negative),
        "concepts_generated": {} if quick else concept_scores_generated(runs, rig.n_blocks),
        "existing": existing_images(rig, 4 if quick else 24,
                                    [(0.5, 4)] if quick else [(0.25, 4), (0.5, 1), (0.5, 4), (0.75, 4), (0.5, 8)],
                                    seed + 3, concepts=not quick),
        "sharp": sharp_maps(rig, runs, sets, quick, seed + 4, batch, negative),
        "seconds": time.time() - t0,
        "batch": batch,
        "seed": seed,
    }
    return res


def sharp_maps(rig: Rig, runs: list[CaptionRun], sets: dict[str, list[str]], quick: bool, seed: int, batch: int,
               negative) -> dict:
    """Step 16's tables (`sharpness`): cross and refined maps per setting on the token grid and guided by the
    picture, the best setting per caption set, the documented setting (the best worst case over the sets),
    and leakage on captions whose objects share a colour or a shape."""
    two = [r for r in runs if len(r.caption.split()) > 3]
    per_set = {name: [r for r in two if r.caption in caps] for name, caps in sets.items() if name != "single"}
    grid, by_set = {}, {}
    for kind in ("cross", "refined"):
        views = [r.view(kind) for r in runs]
        for bn, bl, wn, wr in settings(rig.n_blocks):
            if quick and (bn, wn) not in (DEFAULT_SETTING, QUICK_LATE):
                continue
            grid[(kind, bn, wn)] = sharpness.setting_scores(views, bl, wr, "bilinear")
            for name, rs in per_set.items():
                by_set[(name, kind, bn, wn)] = sharpness.setting_scores([r.view(kind) for r in rs], bl, wr,
                                                                          "bilinear")
    documented = {}
    sets_out = {}
    for kind in ("cross", "refined"):
        keys = [(bn, wn) for (k, bn, wn) in grid if k == kind]
        worst = {key: min(by_set[(name, kind, *key)]["shape_miou_otsu"] for name in per_set) for key in keys}
        documented[kind] = max(keys, key=lambda key: np.nan_to_num(worst[key], nan=-1))
        for name in per_set:
            scores = {key: by_set[(name, kind, *key)] for key in keys}
            b = sharpness.best(scores)
            sets_out[(name, kind)] = {"best": b, "best_miou": scores[b]["shape_miou_otsu"],
                                      "documented_miou": scores[documented[kind]]["shape_miou_otsu"]}
    guided = {}
    blocks_of = {bn: bl for bn, bl, _, _ in settings(rig.n_blocks)}
    for kind in ("cross", "refined"):  # every step window of all blocks and of the documented blocks
        for bn, wn in sorted({(bn, wn) for (k, bn, wn) in grid if k == kind
                              and bn in (DEFAULT_SETTING[0], documented[kind][0])}):
            guided[(kind, bn, wn)] = sharpness.setting_scores([r.view(kind) for r in runs], blocks_of[bn],
                                                              WINDOWS[wn], "guided")
    leaks = {}
    if not quick:
        leak_runs = [run_caption(rig, c, seed, batch, negative, concepts=False) for c in sharpness.leakage_captions()]
        for kind in ("cross", "refined"):
            for cap_kind, v in sharpness.leakage([r.view(kind) for r in leak_runs]).items():
                leaks[(cap_kind, kind)] = v
    return {"grid": grid, "guided": guided, "sets": sets_out, "documented": documented, "leakage": leaks}


def tables(res: dict) -> str:
    lines = ["(a) generation accuracy (colour, shape and side all right)", "",
             "| captions | images | accuracy |", "|---|---|---|"]
    for k, v in res["accuracy"].items():
        lines.append(f"| {k} | {v['images']} | {v['accuracy']:.1%} |")
    lines += ["", "(b) map quality: mIoU with the object's region (correctly drawn objects), by setting; 'share' "
              "divides each word's map by the sum over the prompt's words at each pixel (Enfoque Heatmaps' "
              "normalisation text)", "",
              "| blocks | steps | objects | shape Otsu | shape mean | shape share Otsu | shape share mean "
              "| colour Otsu | colour mean | in>out | own>other |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (bn, wn), v in res["maps"].items():
        mark = " **(default)**" if (bn, wn) == DEFAULT_SETTING else ""
        lines.append(f"| {bn}{mark} | {wn} | {v['objects']} | {v['shape_miou_otsu']:.3f} | {v['shape_miou_mean']:.3f} "
                     f"| {v['shape_share_miou_otsu']:.3f} | {v['shape_share_miou_mean']:.3f} "
                     f"| {v['colour_miou_otsu']:.3f} | {v['colour_miou_mean']:.3f} "
                     f"| {v['inside_over_outside_gt1']:.0%} | {v['own_word_beats_other']:.0%} |")
    lines += ["", "(c) weights acting on the picture (held-out two-object captions, left object)", "",
              "| mode | cases | `shape:0` removes it | other kept | `colour:2` raises its area | area ratio (median) |",
              "|---|---|---|---|---|---|"]
    for mode, v in res["weights"].items():
        lines.append(f"| {mode} | {v['cases']} | {v['shape0_removes_object']:.0%} | {v['shape0_keeps_other']:.0%} "
                     f"| {v['colour2_raises_area']:.0%} | {v['colour2_area_ratio_median']:.2f} |")
    lines += ["", f"(e) concept maps ({', '.join(CONCEPTS)}) of the generated pictures: mIoU of each object's "
              "shape concept with the region of its shape (argmax: ConceptAttention's segmentation)", "",
              "| blocks | steps | objects | Otsu | mean | argmax |", "|---|---|---|---|---|---|"]
    for (bn, wn), v in res["concepts_generated"].items():
        lines.append(f"| {bn} | {wn} | {v['objects']} | {v['miou_otsu']:.3f} | {v['miou_mean']:.3f} | {v['miou_argmax']:.3f} |")
    if not res["concepts_generated"]:
        lines.append("| (not computed: the quick run has no concept maps) | | | | | |")
    lines += ["", "(f) existing pictures (dataset pictures with exact masks) through Enfoque Image Maps: shape word "
              "(cross) and shape concept mIoU, by noise and repeats", "",
              "| noise | repeats | objects | cross Otsu | cross mean | concept Otsu | concept mean | concept argmax |",
              "|---|---|---|---|---|---|---|---|"]
    for (noise, repeats), v in res["existing"].items():
        concept = " | ".join(f"{v[k]:.3f}" if k in v else "-"
                             for k in ("concept_miou_otsu", "concept_miou_mean", "concept_miou_argmax"))
        lines.append(f"| {noise} | {repeats} | {v['objects']} | {v['cross_miou_otsu']:.3f} | {v['cross_miou_mean']:.3f} "
                     f"| {concept} |")
    s = res["stock_vs_patched"]
    lines += ["", f"(d) stock CLIP vs EnfoquePatchCLIP encodes: {s['words_compared']} word maps compared, "
              f"max |difference| {s['max_abs_difference']:.3g}"]
    lines += sharpness.tables(res["sharp"])
    return "\n".join(lines)


def best_setting(res: dict) -> tuple[tuple[str, str], float]:
    key = max(res["maps"], key=lambda k: np.nan_to_num(res["maps"][k]["shape_miou_otsu"], nan=-1))
    return key, res["maps"][key]["shape_miou_otsu"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few captions (the CI version)")
    ap.add_argument("--batch", type=int, default=None, help="pictures per caption (seeds)")
    ap.add_argument("--dit", type=Path, default=None, help="evaluate another diffusion model file (a checkpoint)")
    ap.add_argument("--vae", type=Path, default=None, help="evaluate another VAE file")
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "map_quality" / "results.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="enfoque_mapq_"))
    rig = load_rig(host_in_process(work), work / "models", dit=args.dit, vae=args.vae)
    res = evaluate(rig, quick=args.quick, batch=args.batch)
    print(tables(res))
    (bn, wn), v = best_setting(res)
    print(f"\nbest shape-word setting: {bn}, {wn}: mIoU (Otsu) {v:.3f}; "
          f"default ({', '.join(DEFAULT_SETTING)}): {res['maps'][DEFAULT_SETTING]['shape_miou_otsu']:.3f}")
    print(f"ran in {res['seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**res, "maps": {f"{b} | {w}": v for (b, w), v in res["maps"].items()},
                                     "existing": {f"noise {n} | repeats {r}": v for (n, r), v in res["existing"].items()},
                                     "concepts_generated": {f"{b} | {w}": v for (b, w), v
                                                            in res["concepts_generated"].items()},
                                     "sharp": {part: {k if isinstance(k, str) else " | ".join(map(str, k)): v
                                                      for k, v in table.items()}
                                               for part, table in res["sharp"].items()}},
                                    indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
