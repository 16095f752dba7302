"""Conditionings whose context is not one encoded prompt: ComfyUI's stock conditioning nodes.

- ConditioningConcat ("a red cat" ++ "a blue dog"): the context is 154 long, the word layout
  covers the first 77. Positions past it are labelled by position (``#80``), never weighted,
  and never folded onto the first prompt's words (``cat:0`` must not zero "dog").
- A context extended by a non-multiple (as StyleModelApply appends image tokens) is captured
  and reweighted, not skipped.
- ComfyUI's own repeat-to-common-length: conditionings of different lengths in one batch are
  repeated to their least common multiple; each keeps exactly its own maps.
- ConditioningCombine and ConditioningSetArea: each conditioning its own maps; an area
  conditioning's maps lie inside its area.

References are computed here from q and k in float64 by an override ComfyUI calls before
Enfoque's; on the UNet (cross-attention over text only) the per-pixel sum over all captured
columns of a stock-encoded prompt is 1.
"""

from __future__ import annotations

import logging

import pytest
import tiny_models
import torch
import torch.nn.functional as F
from helpers import patch, released

pytestmark = pytest.mark.host

_models: dict = {}

_release_models = released(_models)


def sd15(tiny_dir):
    if "sd15" not in _models:
        _models["sd15"] = tiny_models.sd15_unet(tiny_dir, name="layouts_sd15").model
    return _models["sd15"]


def sd3(tiny_dir):
    if "sd3" not in _models:
        _models["sd3"] = tiny_models.sd3(tiny_dir, name="layouts_sd3").model
    return _models["sd3"]


def encode(comfy, clip, text):
    return comfy.run("CLIPTextEncode", clip=clip, text=text)[0]


def patched_clip(comfy, factory=tiny_models.clip_sd15):
    return comfy.run("EnfoquePatchCLIP", clip=factory(), weight_mode="attention", capture=False)[0]


def ksample(comfy, model, pos, neg, steps=1, width=128, height=96, latent_node="EmptyLatentImage", cfg=3.0, seed=3):
    latent = comfy.run(latent_node, width=width, height=height, batch_size=1)[0]
    return comfy.run("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]


class CrossReference:
    """A test-only override set before Enfoque's (so Enfoque calls through it): for every UNet
    cross-attention call it records, per conditioning uuid, softmax(q k^T / sqrt(d)) over all text
    keys in float64, head mean: ``[rows, image tokens, text tokens]``. Plain torch, no Enfoque code."""

    def __init__(self):
        self.calls: dict = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        if q.shape[1] != k.shape[1] and "uuids" in to:
            qh, kh = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2).double() for t in (q, k))
            p = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1).mean(1)
            rows = p.shape[0] // len(to["uuids"])
            for i, u in enumerate(to["uuids"]):
                self.calls.setdefault(u, []).append(p[i * rows:(i + 1) * rows])
        return func(q, k, v, heads, *args, **kwargs)

    def mean_map(self, uuid, grid, region=None) -> torch.Tensor:
        """Mean over calls of each call's map on the grid (UNet levels resized as ComfyUI's latent halves):
        ``[rows, text tokens, H, W]``; with ``region`` (y, x, h, w) the queries cover that part only."""
        y, x, h, w = region or (0, 0, *grid)
        out = []
        for p in self.calls[uuid]:
            lh, lw = h, w
            while lh * lw > p.shape[1]:
                lh, lw = (lh + 1) // 2, (lw + 1) // 2
            m = p.transpose(1, 2).reshape(p.shape[0], p.shape[2], lh, lw)
            if (lh, lw) != (h, w):
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            full = m.new_zeros((*m.shape[:2], *grid))
            full[:, :, y:y + h, x:x + w] = m
            out.append(full)
        return torch.stack(out).mean(0)


def with_reference(model):
    ref = CrossReference()
    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = ref
    return m, ref


def uuids_of(probe):
    """uuid of each (role, index) of the last run, from the routes the probe kept."""
    return {(r.role, r.index): u for u, r in probe._last_routes.items()}


@pytest.fixture
def keep_routes(comfy, monkeypatch):
    """Keep each run's uuid -> route table on the probe (the reference is keyed by uuid)."""
    hooks = comfy.submodule("nodes.model_patch.probe")
    begin = hooks.ModelProbe.begin_run

    def spy(self, *args, **kwargs):
        begin(self, *args, **kwargs)
        self._last_routes = dict(self.run.routes)

    monkeypatch.setattr(hooks.ModelProbe, "begin_run", spy)


# --------------------------------------------------------------------------- ConditioningConcat


def test_concat_positions_past_the_layout_get_position_labels(comfy, tiny_dir, keep_routes, caplog):
    clip = patched_clip(comfy)
    a, b = encode(comfy, clip, "a red cat"), encode(comfy, clip, "a blue dog")
    both = comfy.run("ConditioningConcat", conditioning_to=a, conditioning_from=b)[0]
    assert both[0][0].shape[1] == 154 and both[0][1]["enfoque_layout"].context_length == 77
    model, ref = with_reference(sd15(tiny_dir))
    patched, probe = patch(comfy, model)
    with caplog.at_level(logging.INFO):
        out = ksample(comfy, patched, both, encode(comfy, clip, ""))
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    assert maps.words[:3] == ["a", "red", "cat"] and maps.words[3:] == [f"#{p}" for p in range(77, 154)]
    said = [r.getMessage() for r in caplog.records if "154 context tokens long but its words cover" in r.getMessage()]
    assert len(said) == 1, said  # once per run, with the reason
    expected = ref.mean_map(uuids_of(probe)[("positive", 0)], probe.result.grid)
    got = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="cat, #80, #77")[0]
    # "cat" is context position 3 alone; "dog" is position 80 (77 + 3), labelled #80, not part of "cat"
    torch.testing.assert_close(got.maps[:, 0].double(), expected[:, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.maps[:, 1].double(), expected[:, 80], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.maps[:, 2].double(), expected[:, 77], atol=1e-5, rtol=0)
    assert got.meta["words"] == ["cat", "#80", "#77"] and got.meta["context_positions"] == [[3], [80], [77]]
    # the export carries the labels
    prefix = "layouts/concat"
    saved = comfy.run("EnfoqueSaveAttentionMaps", maps=got, filename_prefix=prefix, format="safetensors")
    (entry,) = saved.ui["enfoque_files"]
    back = comfy.submodule("attention.export").load(comfy.output_dir / entry["subfolder"] / entry["filename"])
    assert back.words == ["cat", "#80", "#77"] and back.meta["context_positions"] == [[3], [80], [77]]


def test_concat_weights_apply_only_where_the_layout_says(comfy, tiny_dir):
    """cat:0 on "a red cat" ++ "a blue dog" removes context position 3 only: the same output as weights
    {3: 0} on a layout of all 154 positions. Read as two copies of one prompt it would also remove 80."""
    tokens = comfy.submodule("attention.layout")
    clip = patched_clip(comfy)
    a, b = encode(comfy, clip, "a red cat"), encode(comfy, clip, "a blue dog")
    both = comfy.run("ConditioningConcat", conditioning_to=a, conditioning_from=b)[0]
    neg = encode(comfy, clip, "")
    weighted = comfy.run("EnfoqueTokenWeights", conditioning=both, weights="cat:0")[0]
    explicit = [[t, {**d, tokens.LAYOUT_KEY: tokens.TokenLayout.positional(154).with_weights({3: 0.0})}]
                for t, d in both]
    patched, probe = patch(comfy, sd15(tiny_dir))
    out_words = ksample(comfy, patched, weighted, neg)["samples"]
    out_explicit = ksample(comfy, patched, explicit, neg)["samples"]
    assert torch.equal(out_words, out_explicit)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent={"samples": out_words}, words="#3, #80")[0]
    assert maps.maps[:, 0].abs().max() == 0 and maps.maps[:, 1].min() > 0


def test_context_extended_by_a_non_multiple_is_not_skipped(comfy, tiny_dir, keep_routes):
    """As StyleModelApply does: 10 more tokens appended to the prompt's 77 (87, no multiple of 77)."""
    clip = patched_clip(comfy)
    a = encode(comfy, clip, "a red cat")
    extra = torch.randn(1, 10, 768, generator=torch.Generator().manual_seed(1))
    styled = [[torch.cat((t, extra), dim=1), d.copy()] for t, d in a]
    neg = encode(comfy, clip, "")
    model, ref = with_reference(sd15(tiny_dir))
    patched, probe = patch(comfy, model)
    out = ksample(comfy, patched, styled, neg)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    assert maps.words == ["a", "red", "cat", *(f"#{p}" for p in range(77, 87))]
    expected = ref.mean_map(uuids_of(probe)[("positive", 0)], probe.result.grid)
    got = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="cat, #86")[0]
    torch.testing.assert_close(got.maps[:, 0].double(), expected[:, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.maps[:, 1].double(), expected[:, 86], atol=1e-5, rtol=0)
    # its weights act
    plain, _ = patch(comfy, sd15(tiny_dir))
    base = ksample(comfy, plain, styled, neg)["samples"]
    up = ksample(comfy, plain, comfy.run("EnfoqueTokenWeights", conditioning=styled, weights="cat:3")[0], neg)
    assert (up["samples"] - base).abs().max() > 1e-4


# --------------------------------------------------------------------------- batches, combine, area


def column_sums(probe, key):
    """Per pixel, the sum over all captured columns: ``[rows, H, W]``."""
    return probe.result.maps[key].sum(1)


def test_different_lengths_in_one_batch(comfy, tiny_dir, keep_routes):
    """A 77-token positive and a 154-token negative run in one batch (ComfyUI repeats the positive to 154):
    each keeps its own maps, equal to the reference with the positive's two copies summed; per pixel the
    captured columns of each sum to 1."""
    stock = tiny_models.clip_sd15()
    pos = encode(comfy, stock, "a red cat")
    neg = encode(comfy, stock, ", ".join(["a small blue dog on a green wooden chair in the garden"] * 7))
    assert (pos[0][0].shape[1], neg[0][0].shape[1]) == (77, 154)
    model, ref = with_reference(sd15(tiny_dir))
    patched, probe = patch(comfy, model, capture_negative=True)
    ksample(comfy, patched, pos, neg)
    ids = uuids_of(probe)
    grid = probe.result.grid
    expected_pos = ref.mean_map(ids[("positive", 0)], grid)
    assert expected_pos.shape[1] == 154, "the two prompts did not run in one batch"
    expected_pos = expected_pos[:, :77] + expected_pos[:, 77:]
    torch.testing.assert_close(probe.result.maps[("positive", 0)].double(), expected_pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(probe.result.maps[("negative", 0)].double(), ref.mean_map(ids[("negative", 0)], grid),
                               atol=1e-5, rtol=0)
    for key in (("positive", 0), ("negative", 0)):
        torch.testing.assert_close(column_sums(probe, key), torch.ones_like(column_sums(probe, key)), atol=1e-5,
                                   rtol=0)


def test_combine_of_different_lengths_keeps_each_prompt(comfy, tiny_dir):
    clip = patched_clip(comfy)
    short = encode(comfy, clip, "a red cat")
    long = encode(comfy, clip, ", ".join(["a small blue dog on a green wooden chair in the garden"] * 7))
    both = comfy.run("ConditioningCombine", conditioning_1=short, conditioning_2=long)[0]
    neg = encode(comfy, clip, "")
    patched, probe = patch(comfy, sd15(tiny_dir), blocks="0")
    out = ksample(comfy, patched, both, neg)
    a, b = probe.result.maps[("positive", 0)], probe.result.maps[("positive", 1)]
    for cond, expect in ((short, a), (long, b)):
        p2, probe2 = patch(comfy, sd15(tiny_dir), blocks="0")
        ksample(comfy, p2, cond, neg)
        torch.testing.assert_close(probe2.result.maps[("positive", 0)], expect, atol=1e-6, rtol=0)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", cond_index=1)[0]
    assert maps.words[:3] == ["a", "small", "blue"] and not any(w.startswith("#") for w in maps.words)


def test_concat_and_combine_sum_to_one_per_pixel(comfy, tiny_dir):
    """Stock encodes (every position captured): ConditioningConcat of two prompts and ConditioningCombine
    with a third; per pixel the captured columns of each sum to 1."""
    stock = tiny_models.clip_sd15()
    a, b, c = (encode(comfy, stock, t) for t in ("a red cat", "a blue dog", "a green bird"))
    concat = comfy.run("ConditioningConcat", conditioning_to=a, conditioning_from=b)[0]
    both = comfy.run("ConditioningCombine", conditioning_1=concat, conditioning_2=c)[0]
    patched, probe = patch(comfy, sd15(tiny_dir))
    ksample(comfy, patched, both, encode(comfy, stock, ""), steps=2)
    assert probe.result.maps[("positive", 0)].shape[1] == 154 and probe.result.maps[("positive", 1)].shape[1] == 77
    for key in (("positive", 0), ("positive", 1)):
        s = column_sums(probe, key)
        torch.testing.assert_close(s, torch.ones_like(s), atol=1e-5, rtol=0)


def test_area_conditioning_maps_lie_in_its_area(comfy, tiny_dir, keep_routes):
    """ConditioningSetArea: a prompt for the left half (a 64x96 px area of a 128x96 image) and one for the
    whole image, combined. The area prompt's maps are its queries' attention placed in the area, zero
    outside; per pixel its columns sum to 1 inside the area, the whole-image prompt's everywhere."""
    stock = tiny_models.clip_sd15()
    whole = encode(comfy, stock, "a garden")
    left = comfy.run("ConditioningSetArea", conditioning=encode(comfy, stock, "a red cat"), width=64, height=96,
                     x=0, y=0, strength=1.0)[0]
    both = comfy.run("ConditioningCombine", conditioning_1=whole, conditioning_2=left)[0]
    model, ref = with_reference(sd15(tiny_dir))
    patched, probe = patch(comfy, model)
    out = ksample(comfy, patched, both, encode(comfy, stock, ""), steps=2)
    assert tuple(out["samples"].shape[-2:]) == (12, 16) == probe.result.grid
    ids = uuids_of(probe)
    area_map = probe.result.maps[("positive", 1)]
    torch.testing.assert_close(area_map.double(), ref.mean_map(ids[("positive", 1)], (12, 16), (0, 0, 12, 8)),
                               atol=1e-5, rtol=0)
    s = column_sums(probe, ("positive", 1))
    torch.testing.assert_close(s[..., :8], torch.ones_like(s[..., :8]), atol=1e-5, rtol=0)
    assert s[..., 8:].abs().max() == 0
    s = column_sums(probe, ("positive", 0))
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-5, rtol=0)


def test_area_conditioning_on_a_dit(comfy, tiny_dir):
    """SD3 (joint attention, 2x2 patches): the area prompt's maps sit on its patches only."""
    stock = tiny_models.clip_sd3()
    whole = encode(comfy, stock, "a garden")
    right = comfy.run("ConditioningSetArea", conditioning=encode(comfy, stock, "a red cat"), width=64, height=96,
                      x=64, y=0, strength=1.0)[0]
    both = comfy.run("ConditioningCombine", conditioning_1=whole, conditioning_2=right)[0]
    patched, probe = patch(comfy, sd3(tiny_dir))
    ksample(comfy, patched, both, encode(comfy, stock, ""), steps=2, latent_node="EmptySD3LatentImage")
    assert probe.result.grid == (6, 8)
    m = probe.result.maps[("positive", 1)]
    assert m[..., :4].abs().max() == 0 and (m[..., 4:].sum(1) > 0).all()
    assert (probe.result.maps[("positive", 0)].sum(1) > 0).all()
