"""Enfoque Region on the tiny real model of every family in the support table, sampled by ComfyUI's
KSampler.

The float64 reference is written plainly here: a test-only override set *around* the pack's records,
for each attention call of the prompt's text, softmax(q k^T / sqrt(d) + mask + B) v over all keys,
where B is the region's bias written out on the whole matrix: ``log(1 - s (1 - m))`` at the word's key
columns for the cond rows' image queries, ``m`` the mask pooled by area onto the call's token grid by
loops (`test_regions_engine.area_reference`); the pack's output must equal it. Where the text sits in
each family's attention comes from ComfyUI's model code (`test_families.text_place`).
"""

from __future__ import annotations

import pytest
import torch
from family_cases import CASES
from helpers import patch
from test_families import _release_models as _release_families  # noqa: F401
from test_families import fam, grid_cells, text_place
from test_families import ksample as fam_ksample
from test_model_probe import (
    _release_models,  # noqa: F401
    family,
    ksample,
)
from test_regions_engine import area_reference

pytestmark = pytest.mark.host


def heads_view(t, heads, skip):
    return t if skip else t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def left_half(h: int, w: int, frames: int = 1) -> torch.Tensor:
    m = torch.zeros(frames, h, w)
    m[:, :, : w // 2] = 1.0
    return m


class RegionReference:
    """Around the pack's override: each call of the prompt's text attention is recomputed in float64 with
    the region's bias written out, and the largest difference from the pack's output kept."""

    def __init__(self, inner, is_text, q0: int, n_img: int | None, cols: list[int], grid_of, mask: torch.Tensor,
                 strength: float, see: bool):
        self.inner, self.is_text, self.q0, self.n_img, self.cols = inner, is_text, q0, n_img, cols
        self.grid_of, self.mask, self.strength, self.see = grid_of, mask, strength, see
        self.worst, self.calls = 0.0, 0

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        out = self.inner(func, q, k, v, heads, *args, **kwargs)
        skip = kwargs.get("skip_reshape", False)
        options = kwargs.get("transformer_options", {})
        qh, kh, vh = (heads_view(t, heads, skip) for t in (q, k, v))
        if not self.is_text(qh, kh) or 0 not in options.get("cond_or_uncond", []):
            return out
        n = self.n_img or qh.shape[2]
        frames, h, w = self.grid_of(n)
        pooled = area_reference(self.mask if self.mask.shape[0] == frames else self.mask.expand(frames, -1, -1), h, w)
        lw = torch.log((1.0 - self.strength * (1.0 - pooled.reshape(-1))).clamp(min=0.0))
        bias = torch.zeros(qh.shape[0], 1, qh.shape[2], kh.shape[2], dtype=torch.float64)
        mask = kwargs.get("mask")
        if mask is not None:
            bias = bias + mask.double()
        rows = qh.shape[0] // len(options["cond_or_uncond"])
        i = options["cond_or_uncond"].index(0)
        region = bias[i * rows:(i + 1) * rows, :, self.q0:self.q0 + n]
        region[..., self.cols] += lw[None, None, :, None]
        if self.see and qh.shape[2] == kh.shape[2]:  # joint attention: the word's own queries see the mask too
            bias[i * rows:(i + 1) * rows, :, self.cols, self.q0:self.q0 + n] += lw[None, None, None, :]
        logits = qh.double() @ kh.double().transpose(-1, -2) / qh.shape[-1] ** 0.5 + bias
        p = torch.softmax(logits, dim=-1)
        ref = p @ vh.double()
        got = heads_view(out, heads, False) if not kwargs.get("skip_output_reshape", False) else out
        self.worst = max(self.worst, float((got.double() - ref).abs().max()))
        self.calls += 1
        return out


def captured_outside(probe, positions: list[int], mask: torch.Tensor, margin: int = 0) -> float:
    """The largest value the pack captured, in the map of these context positions (the word's tokens), where
    the mask pooled onto the run's grid is 0, ``margin`` cells or more from it (a UNet's coarser levels reach
    the run's grid bilinearly): how much the image attended to the word outside the mask."""
    res = probe.result
    route = res.routes[("positive", 0)]
    maps = res.maps[("positive", 0)][:, route.group_of(positions)]
    f = res.frames
    m = mask if mask.shape[0] == f else mask.expand(f, -1, -1)
    inside = (area_reference(m, res.grid[0] // f, res.grid[1]).reshape(res.grid) > 0).double()
    near = torch.nn.functional.max_pool2d(inside[None, None], 2 * margin + 1, stride=1, padding=margin)[0, 0]
    outside = near == 0
    assert outside.any() and maps.numel()
    return float(maps[..., outside].abs().max())


def run_with_reference(comfy, model, cond, words, mask, strength, is_text, q0, n_img, cols, grid_of, sample,
                       see: bool | None = None):
    """``see``: whether the region's words, as queries, see only the image inside the mask; None: the pack's
    default (`nodes/model_patch/regions.WORDS_SEE_MASK`), which the node reads when it runs."""
    regions = comfy.submodule("nodes.model_patch.regions")
    default = regions.WORDS_SEE_MASK
    regions.WORDS_SEE_MASK = default if see is None else see
    try:
        region = comfy.run("EnfoqueRegion", conditioning=cond, mask=mask, words=words, strength=strength,
                           start_percent=0.0, end_percent=1.0)[0]
    finally:
        regions.WORDS_SEE_MASK = default
    patched, probe = patch(comfy, model)
    options = patched.model_options["transformer_options"]
    ref = RegionReference(options["optimized_attention_override"], is_text, q0, n_img, cols, grid_of,
                          mask, strength, default if see is None else see)
    options["optimized_attention_override"] = ref
    sample(patched, region)
    return ref, probe


@pytest.mark.parametrize(("strength", "see"), [(1.0, None), (0.5, None), (1.0, "other")])
@pytest.mark.parametrize("name", list(CASES))
def test_regions_equal_float64_reference_dit_families(comfy, tiny_dir, name, strength, see):
    """Each family, at the default of whether the words see only the inside of the mask, and at the other
    setting (the one benchmarks/regions.py measured against it)."""
    f = fam(comfy, tiny_dir, name)
    layout = f.pos[0][1]["enfoque_layout"]
    L = f.pos[0][0].shape[1]
    place = text_place(f, L)
    cat = list(layout.spans[layout.words.index("cat")])
    cols = [place.cols[p] for p in cat]
    frames, h, w = grid_cells(f)
    s = f.latent["samples"].shape
    mask = left_half(s[-2] * 8, s[-1] * 8)

    def is_text(q, k):
        return k.shape[2] == place.k_len and (place.q_len is None or q.shape[2] == place.q_len)

    ref, probe = run_with_reference(comfy, f.model, f.pos, "cat", mask, strength, is_text, place.q0, place.n_img,
                                    cols, lambda n: (frames, h, w), lambda m, c: fam_ksample(comfy, f, m, c, f.neg),
                                    see=None if see is None else not comfy.submodule("nodes.model_patch.regions").WORDS_SEE_MASK)
    assert ref.calls > 0 and ref.worst < 1e-5, (ref.calls, ref.worst)
    if strength == 1.0:  # outside the mask the image does not attend to "cat": its captured map is 0 there
        assert captured_outside(probe, cat, mask) == 0.0


@pytest.mark.parametrize("name", ["sd3", "flux", "sd15", "sdxl"])
def test_regions_equal_float64_reference(comfy, tiny_dir, name):
    model, _, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    clip = comfy.run("EnfoquePatchCLIP", clip=_clip(name), weight_mode="attention", capture=False)[0]
    pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat on a blue chair")[0]
    layout = pos[0][1]["enfoque_layout"]
    L = pos[0][0].shape[1]
    cols = list(layout.spans[layout.words.index("cat")])
    unet = name in ("sd15", "sdxl")
    mask = left_half(96, 128)
    grid = (12, 16) if unet else (6, 8)

    def grid_of(n):
        gh, gw = grid
        while gh * gw > n:
            gh, gw = (gh + 1) // 2, (gw + 1) // 2
        return 1, gh, gw

    def is_text(q, k):
        return (k.shape[2] == L and q.shape[2] != L) if unet else k.shape[2] == q.shape[2] >= L + 48

    ref, probe = run_with_reference(comfy, model, pos, "cat", mask, 1.0, is_text, 0 if unet else L,
                                    None if unet else 48, cols, grid_of,
                                    lambda m, c: ksample(comfy, m, c, neg, latent_node, cfg))
    assert ref.calls > 0 and ref.worst < 1e-5, (ref.calls, ref.worst)
    assert captured_outside(probe, cols, mask, margin=4 if unet else 0) == 0.0  # levels down to 1/4 of the grid


def _clip(name):
    import tiny_models

    return {"sd3": tiny_models.clip_sd3, "flux": tiny_models.clip_flux, "sd15": tiny_models.clip_sd15,
            "sdxl": tiny_models.clip_sdxl}[name]()


@pytest.mark.parametrize("name", ["sd3", "flux", "sd15"])
def test_a_full_mask_or_strength_zero_is_no_region(comfy, tiny_dir, name):
    model, _, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    clip = comfy.run("EnfoquePatchCLIP", clip=_clip(name), weight_mode="attention", capture=False)[0]
    pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat on a blue chair")[0]
    patched, _ = patch(comfy, model)
    plain = ksample(comfy, patched, pos, neg, latent_node, cfg)["samples"]
    full = comfy.run("EnfoqueRegion", conditioning=pos, mask=torch.ones(96, 128), words="cat", strength=1.0,
                     start_percent=0.0, end_percent=1.0)[0]
    none = comfy.run("EnfoqueRegion", conditioning=pos, mask=left_half(96, 128)[0], words="cat", strength=0.0,
                     start_percent=0.0, end_percent=1.0)[0]
    assert torch.equal(ksample(comfy, patched, full, neg, latent_node, cfg)["samples"], plain)
    assert torch.equal(ksample(comfy, patched, none, neg, latent_node, cfg)["samples"], plain)
    real = comfy.run("EnfoqueRegion", conditioning=pos, mask=left_half(96, 128)[0], words="cat", strength=1.0,
                     start_percent=0.0, end_percent=1.0)[0]
    assert not torch.equal(ksample(comfy, patched, real, neg, latent_node, cfg)["samples"], plain)
    assert "enfoque_regions" not in pos[0][1], "the input conditioning was changed"


def test_region_masks_per_video_frame_and_bad_batches(comfy, tiny_dir):
    f = fam(comfy, tiny_dir, "wan")
    frames, h, w = grid_cells(f)
    s = f.latent["samples"].shape
    per_frame = torch.zeros(frames, s[-2] * 8, s[-1] * 8)
    per_frame[0, :, : s[-1] * 4] = 1.0  # frame 0: the left half; frame 1: the right half
    per_frame[1, :, s[-1] * 4:] = 1.0
    layout = f.pos[0][1]["enfoque_layout"]
    place = text_place(f, f.pos[0][0].shape[1])
    cols = [place.cols[p] for p in layout.spans[layout.words.index("cat")]]
    ref, probe = run_with_reference(comfy, f.model, f.pos, "cat", per_frame, 1.0,
                                lambda q, k: k.shape[2] == place.k_len and q.shape[2] == place.q_len, place.q0,
                                place.n_img, cols, lambda n: (frames, h, w),
                                lambda m, c: fam_ksample(comfy, f, m, c, f.neg))
    assert ref.calls > 0 and ref.worst < 1e-5
    assert captured_outside(probe, layout.spans[layout.words.index("cat")], per_frame) == 0.0
    three = torch.ones(3, s[-2] * 8, s[-1] * 8)
    bad = comfy.run("EnfoqueRegion", conditioning=f.pos, mask=three, words="cat", strength=1.0, start_percent=0.0,
                    end_percent=1.0)[0]
    patched, _ = patch(comfy, f.model)
    with pytest.raises(ValueError, match=r"Enfoque Region: the mask batch holds 3 masks and the video has 2 latent "
                                         r"frames; give one mask for all frames, or one per latent frame"):
        fam_ksample(comfy, f, patched, bad, f.neg)


def test_region_bad_input(comfy, tiny_dir, caplog):
    model, _, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    clip = comfy.run("EnfoquePatchCLIP", clip=_clip("sd3"), weight_mode="attention", capture=False)[0]
    pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat on a blue chair")[0]
    args = dict(conditioning=pos, strength=1.0, start_percent=0.0, end_percent=1.0)
    with pytest.raises(ValueError, match=r"^Enfoque Region: the mask is empty \(all 0\)"):
        comfy.run("EnfoqueRegion", mask=torch.zeros(96, 128), words="cat", **args)
    with pytest.raises(ValueError, match=r"^Enfoque Region: 'dog' in words is not a word of the prompt; its words: "
                                         r"a, red, cat, on, blue, chair\."):
        comfy.run("EnfoqueRegion", mask=left_half(96, 128)[0], words="cat, dog", **args)
    stock = comfy.run("CLIPTextEncode", clip=_clip("sd3"), text="a red cat")[0]
    with pytest.raises(ValueError, match="'cat' in words: the prompt was encoded by a stock CLIP"):
        comfy.run("EnfoqueRegion", conditioning=stock, mask=left_half(96, 128)[0], words="cat", strength=1.0,
                  start_percent=0.0, end_percent=1.0)
    layout = pos[0][1]["enfoque_layout"]
    every = comfy.run("EnfoqueRegion", conditioning=pos, mask=left_half(96, 128)[0], words="", strength=1.0,
                      start_percent=0.0, end_percent=1.0)[0]  # empty: all the prompt's words
    assert every[0][1]["enfoque_regions"][0].positions == tuple(p for s in layout.spans for p in s)
    sinks = comfy.run("EnfoqueRegion", conditioning=pos, mask=left_half(96, 128)[0], words="cat, <end>",
                      strength=1.0, start_percent=0.0, end_percent=1.0)[0]  # special tokens when named
    ends = {p for kinds in layout.specials.values() for p in kinds["end"]}  # every encoder's end token
    assert set(sinks[0][1]["enfoque_regions"][0].positions) == {*layout.spans[2], *ends} and len(ends) == 2
    small = comfy.run("EnfoqueRegion", mask=left_half(48, 32)[0], words="cat", **args)[0]  # another size
    patched, _ = patch(comfy, model)
    with caplog.at_level("WARNING"):
        ksample(comfy, patched, small, neg, latent_node, cfg)
    said = [r.getMessage() for r in caplog.records if "the mask is 32x48 px, the picture 128x96" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_unpatched_sampler_found_in_the_graph(comfy):
    regions = comfy.submodule("nodes.regions")
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {}},
        "2": {"class_type": "EnfoquePatchModel", "inputs": {"model": ["1", 0]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {}},
        "4": {"class_type": "EnfoqueRegion", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["4", 0], "conditioning_2": ["3", 0]}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["5", 0]}},
        "7": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0]}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["7", 0], "positive": ["4", 0]}},
    }
    assert regions.unpatched_samplers(prompt, "4") == ["KSampler (node 8)"]
    # the node says so, in the log and on the node, when it runs in that graph
    sent = []
    real = regions.notify
    regions.notify = lambda node, text: sent.append((node, text))
    try:
        clip = comfy.run("EnfoquePatchCLIP", clip=_clip("sd15"), weight_mode="attention", capture=False)[0]
        pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat")[0]
        comfy.run("EnfoqueRegion", hidden={"PROMPT": prompt, "UNIQUE_ID": "4"}, conditioning=pos,
                  mask=left_half(8, 8)[0], words="cat", strength=1.0, start_percent=0.0, end_percent=1.0)
        prompt["7"]["inputs"]["model"] = ["2", 0]  # the LoRA on top of the patched model: fine
        assert regions.unpatched_samplers(prompt, "4") == []
        comfy.run("EnfoqueRegion", hidden={"PROMPT": prompt, "UNIQUE_ID": "4"}, conditioning=pos,
                  mask=left_half(8, 8)[0], words="cat", strength=1.0, start_percent=0.0, end_percent=1.0)
    finally:
        regions.notify = real
    assert sent[0] == ("4", "Enfoque Region: KSampler (node 8) samples with a model that Enfoque Patch Model did "
                            "not patch, so the region does nothing there; put Enfoque Patch Model on that model.")
    assert sent[1] == ("4", "")  # cleared once the graph is fixed
