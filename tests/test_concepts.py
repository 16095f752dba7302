"""Concept maps (EnfoqueConcepts -> EnfoquePatchModel's concepts -> EnfoqueAttentionMaps kind=concept)
and EnfoqueImageMaps on tiny real SD3 and Flux models, sampled by ComfyUI's own samplers.

The reference for the concept scores is written plainly here in float64 from each block's own
weights (ComfyUI's modules, copied to float64) and the inputs the block saw in the run: the
concept stream through the text stream's weights, concept queries over [concepts; image] keys,
image queries over [text; image] keys, softmax over concepts of image output . concept output."""

from __future__ import annotations

import copy
import math

import pytest
import tiny_models
import torch
from helpers import patch, released

pytestmark = pytest.mark.host

NAMES = "cat, chair, background"
_cache: dict = {}

_release = released(_cache)


def setup(comfy, tiny_dir, family):
    if family not in _cache:
        if family == "sd3":
            model, clip, cfg = tiny_models.sd3(tiny_dir, name="concepts_sd3").model, tiny_models.clip_sd3(), 3.0
        else:  # two double blocks: the stream's update after a block reaches the next block's scores
            model, clip, cfg = tiny_models.flux(tiny_dir, depth=2, name="concepts_flux").model, tiny_models.clip_flux(), 2.0
        pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat on a blue chair")[0]
        neg = comfy.run("CLIPTextEncode", clip=clip, text="blurry")[0]
        concepts = comfy.run("EnfoqueConcepts", clip=clip, concepts=NAMES)[0]
        _cache[family] = (model, clip, pos, neg, cfg, concepts)
    return _cache[family]


def ksample(comfy, model, pos, neg, cfg, steps=2, seed=3, batch=1):
    latent = comfy.run("EmptySD3LatentImage", width=128, height=96, batch_size=batch)[0]
    return comfy.run("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_sampling_with_concepts_is_bit_identical(comfy, tiny_dir, family):
    model, _, pos, neg, cfg, concepts = setup(comfy, tiny_dir, family)
    stock = ksample(comfy, model, pos, neg, cfg)["samples"]
    patched, probe = patch(comfy, model, concepts=concepts, keep_steps=True, keep_blocks=True)
    out = ksample(comfy, patched, pos, neg, cfg)
    assert torch.equal(out["samples"], stock), "concepts changed the picture"
    res = probe.result
    m = res.concept_maps[("positive", 0)]
    assert m.shape == (1, 3, 6, 8)
    # a softmax over the concepts at every pixel, averaged over block calls: sums to 1
    torch.testing.assert_close(m.sum(1), torch.ones(1, 6, 8))
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", kind="concept")[0]
    assert maps.words == ["cat", "chair", "background"] and maps.meta["kind"] == "concept"
    torch.testing.assert_close(maps.maps, m)
    one = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="chair", kind="concept", step=1)[0]
    torch.testing.assert_close(one.maps[:, 0], res.concept_step_maps[("positive", 0)][1][:, 1])
    # the cross maps are still there, unchanged by the concepts
    plain, probe2 = patch(comfy, model)
    ksample(comfy, plain, pos, neg, cfg)
    assert torch.equal(probe2.result.maps[("positive", 0)], res.maps[("positive", 0)])


class BlockInputs:
    """A test-only ``dit`` double-block replace (installed before EnfoquePatchModel, which chains it):
    keeps what each block call received, then runs the block."""

    def __init__(self, index: int, calls: list):
        self.index, self.calls = index, calls

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        to = args["transformer_options"]
        keep = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()
                if k in ("img", "txt", "vec", "pe")}
        self.calls.append((self.index, keep, list(to["cond_or_uncond"])))
        return extra["original_block"](args)


def heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*D] or [B, N, H, D] -> [B, H, N, D]."""
    if t.ndim == 4:
        return t.transpose(1, 2)
    return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def attention64(q, k, v):
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = p @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)  # [B, N, H*D]


def reference_sd3(dm, emb, calls):
    dm = copy.deepcopy(dm).double()
    scores, x = [], None
    for index, a, cond_or_uncond in calls:
        img, txt, vec = a["img"].double(), a["txt"].double(), a["vec"].double()
        if index == 0:
            x = dm.context_embedder(emb.double()[None].expand(img.shape[0], -1, -1))
        block = dm.joint_blocks[index]
        cb, xb, h = block.context_block, block.x_block, block.x_block.attn.num_heads
        (qc, kc, vc), inter = cb.pre_attention(x, vec)
        (qt, kt, vt), _ = cb.pre_attention(txt, vec)
        (qi, ki, vi), _ = xb.pre_attention(img, vec)
        qc, kc, vc, qt, kt, vt, qi, ki, vi = (heads_first(t, h) for t in (qc, kc, vc, qt, kt, vt, qi, ki, vi))
        o_img = attention64(qi, torch.cat((kt, ki), 2), torch.cat((vt, vi), 2))
        o_c = attention64(qc, torch.cat((kc, ki), 2), torch.cat((vc, vi), 2))
        scores.append((torch.softmax(o_img @ o_c.transpose(1, 2), dim=-1), cond_or_uncond))
        if not cb.pre_only:
            x = cb.post_attention(o_c, *inter)
    return scores


def rotate(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Flux's rotary embedding: each channel pair (x0, x1) times the 2x2 rotation in ``pe``."""
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(x.shape)


def reference_flux(dm, emb, calls):
    dm = copy.deepcopy(dm).double()
    scores, x = [], None
    for index, a, cond_or_uncond in calls:
        img, txt, vec, pe = a["img"].double(), a["txt"].double(), a["vec"].double(), a["pe"].double()
        if index == 0:
            x = dm.txt_in(emb.double()[None].expand(img.shape[0], -1, -1))
        blk = dm.double_blocks[index]
        h = blk.num_heads

        def qkv(stream, mod, norm, attn, h=h):
            m = (1 + mod.scale) * norm(stream) + mod.shift
            q, k, v = attn.qkv(m).view(m.shape[0], m.shape[1], 3, h, -1).permute(2, 0, 3, 1, 4)
            q, k = attn.norm(q, k, v)
            return q, k, v

        img_mod1, _ = blk.img_mod(vec)
        txt_mod1, txt_mod2 = blk.txt_mod(vec)
        qi, ki, vi = qkv(img, img_mod1, blk.img_norm1, blk.img_attn)
        qt, kt, vt = qkv(txt, txt_mod1, blk.txt_norm1, blk.txt_attn)
        qc, kc, vc = qkv(x, txt_mod1, blk.txt_norm1, blk.txt_attn)
        q, k = rotate(torch.cat((qt, qi), 2), pe), rotate(torch.cat((kt, ki), 2), pe)
        n = qt.shape[2]
        o_img = attention64(q[:, :, n:], k, torch.cat((vt, vi), 2))
        # concepts sit at text position 0: no rotation; image keys as the image sees them
        o_c = attention64(qc, torch.cat((kc, k[:, :, n:]), 2), torch.cat((vc, vi), 2))
        scores.append((torch.softmax(o_img @ o_c.transpose(1, 2), dim=-1), cond_or_uncond))
        x = x + txt_mod1.gate * blk.txt_attn.proj(o_c)
        x = x + txt_mod2.gate * blk.txt_mlp((1 + txt_mod2.scale) * blk.txt_norm2(x) + txt_mod2.shift)
    return scores


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_concept_scores_equal_float64_reference(comfy, tiny_dir, family):
    model, _, pos, neg, cfg, concepts = setup(comfy, tiny_dir, family)
    dm = model.get_model_object("diffusion_model")
    doubles = len(dm.joint_blocks) if family == "sd3" else len(dm.double_blocks)
    # the stream leaves block 0 through the text stream's projection and MLP (`ConceptStream.post`) and
    # only a later joint block's scores see that: at least two blocks that update the text
    assert doubles >= 2 and (family == "flux" or not dm.joint_blocks[0].context_block.pre_only)
    calls: list = []
    m = model.clone()
    for i in range(doubles):
        m.set_model_patch_replace(BlockInputs(i, calls), "dit", "double_block", i)
    patched, probe = patch(comfy, m, concepts=concepts)
    ksample(comfy, patched, pos, neg, cfg, steps=2)
    ref = (reference_sd3 if family == "sd3" else reference_flux)(dm, concepts.embeddings, calls)
    assert len(ref) == 2 * doubles
    rows = []
    for s, cond_or_uncond in ref:
        n = s.shape[0] // len(cond_or_uncond)
        i = cond_or_uncond.index(0)
        rows.append(s[i * n:(i + 1) * n])
    expected = torch.stack(rows).mean(0)  # [rows, image tokens, concepts]
    got = probe.result.concept_maps[("positive", 0)].flatten(2).transpose(1, 2)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_concept_frames_are_each_steps_and_blocks_own_maps(comfy, tiny_dir):
    """Concept maps' per-step (per-block) frames are the concept maps read with step = k (block = k), and
    Enfoque Heatmaps over steps (blocks) draws each frame from them."""
    model, _, pos, neg, cfg, concepts = setup(comfy, tiny_dir, "sd3")
    patched, probe = patch(comfy, model, concepts=concepts, keep_steps=True, keep_blocks=True)
    out = ksample(comfy, patched, pos, neg, cfg, steps=3)
    words = "cat, background"
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=words, kind="concept")[0]
    run = dict(colormap="viridis", opacity=0.6, normalisation="minmax", columns=0)
    res = probe.result
    for over, kept in (("steps", res.active_steps), ("blocks", res.blocks)):
        frames = getattr(maps, over)
        assert [f.caption.split("  ")[0] for f in frames] == [f"{over[:-1]} {k}" for k in kept] and len(kept) >= 2
        pictures = comfy.run("EnfoqueHeatmaps", maps=maps, over=over, **run)[0]
        for i, k in enumerate(kept):
            one = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=words, kind="concept",
                            **{over[:-1]: k})[0]
            assert torch.equal(frames[i].maps, one.maps), f"concept {over} frame {i} holds other maps"
            own = comfy.run("EnfoqueHeatmaps", maps=one, **run)[0][0]
            assert torch.equal(pictures[i, pictures.shape[1] - own.shape[0]:], own)
        assert not torch.equal(frames[0].maps, frames[-1].maps)
        assert not any(torch.equal(f.maps, maps.maps) for f in frames)
        # every step (block) has the same number of block calls: the frames' mean is the mean
        torch.testing.assert_close(torch.stack([f.maps for f in frames]).mean(0), maps.maps)


def test_concepts_only_in_chosen_blocks_and_budget(comfy, tiny_dir):
    model, _, pos, neg, cfg, concepts = setup(comfy, tiny_dir, "sd3")
    patched, probe = patch(comfy, model, concepts=concepts, blocks="1", keep_blocks=True)
    ksample(comfy, patched, pos, neg, cfg)
    assert sorted(probe.result.concept_block_maps[("positive", 0)]) == [1]
    patched, probe = patch(comfy, model, concepts=concepts, budget_mb=1.0)
    with pytest.raises(ValueError, match="token maps and concepts .* over the budget of 1 MB"):
        latent = comfy.run("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)[0]
        comfy.run("KSampler", model=patched, seed=1, steps=1, cfg=cfg, sampler_name="euler", scheduler="simple",
                  positive=pos, negative=neg, latent_image=latent, denoise=1.0)


def test_concept_errors(comfy, tiny_dir):
    model, clip, pos, neg, cfg, concepts = setup(comfy, tiny_dir, "sd3")
    with pytest.raises(ValueError, match="Enfoque Concepts: concepts is empty"):
        comfy.run("EnfoqueConcepts", clip=clip, concepts=" , ")
    unet = tiny_models.sd15_unet(tiny_dir, name="concepts_unet").model
    with pytest.raises(ValueError, match="Enfoque Patch Model: concepts work on the joint blocks of SD3"):
        patch(comfy, unet, concepts=concepts)
    flux_concepts = comfy.run("EnfoqueConcepts", clip=tiny_models.clip_sd15(), concepts="cat")[0]
    with pytest.raises(ValueError, match="encoded into 768 channels, this SD3 .* reads text of 4096"):
        patch(comfy, model, concepts=flux_concepts)
    patched, probe = patch(comfy, model)
    out = ksample(comfy, patched, pos, neg, cfg, steps=1)
    with pytest.raises(ValueError, match="has no concepts; connect Enfoque Concepts"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", kind="concept")
    patched, probe = patch(comfy, model, concepts=concepts)
    out = ksample(comfy, patched, pos, neg, cfg, steps=1)
    with pytest.raises(ValueError, match="'dog' in words is not one of the concepts; concepts: cat, chair, background"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="dog", kind="concept")


def test_concepts_are_each_encoded_alone(comfy, tiny_dir):
    _, clip, *_ , concepts = setup(comfy, tiny_dir, "sd3")
    assert concepts.names == ("cat", "chair", "background")
    alone = comfy.run("EnfoqueConcepts", clip=clip, concepts="chair")[0]
    torch.testing.assert_close(alone.embeddings[0], concepts.embeddings[1])
    # "cat" alone: the mean of its context vectors (CLIP position 1, T5 position 77) of the stock encode
    cond = comfy.run("CLIPTextEncode", clip=clip, text="cat")[0][0][0]
    torch.testing.assert_close(concepts.embeddings[0], cond[0, [1, 77]].float().mean(0))


class SigmaSeen:
    """A test-only APPLY_MODEL wrapper (set before EnfoquePatchModel): the sigma and input of each model call."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, *args, **kwargs):
        self.calls.append((float(t.max()), x.detach().clone()))
        return executor(x, t, *args, **kwargs)


def test_image_maps(comfy, tiny_dir):
    import comfy.patcher_extension as pe
    import comfy.sample as comfy_sample

    model, _, pos, _, _, concepts = setup(comfy, tiny_dir, "sd3")
    seen = SigmaSeen()
    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_sigma", seen)
    patched, probe = patch(comfy, m, concepts=concepts)
    latent = {"samples": torch.randn(1, 16, 12, 16, generator=torch.Generator().manual_seed(0))}
    maps, concept_maps = comfy.run("EnfoqueImageMaps", model=patched, positive=pos, latent=latent, noise=0.4,
                                   repeats=2, seed=5)[:2]
    ms = model.get_model_object("model_sampling")
    sigma = float(ms.sigma_min) + 0.4 * (float(ms.sigma_max) - float(ms.sigma_min))
    assert len(seen.calls) == 2, "one model call per repeat (cfg 1, one step)"
    for s, _ in seen.calls:
        assert s == pytest.approx(sigma, rel=1e-6)
    # what reaches the model at repeat r: the picture's latent, as ComfyUI's samplers take it in
    # (`process_latent_in`), noised with seed + r's noise at that sigma by the model's own noise scaling
    picture = comfy_sample.fix_empty_latent_channels(model, latent["samples"])
    assert torch.count_nonzero(picture) > 0  # (ComfyUI leaves an all-zero latent as it is)
    picture_in = model.model.process_latent_in(picture)
    assert sigma < float(ms.sigma_max)  # not max_denoise
    for r, (_, x) in enumerate(seen.calls):
        noise_r = comfy_sample.prepare_noise(picture, 5 + r)
        expected = ms.noise_scaling(torch.tensor(sigma, dtype=torch.float32), noise_r, picture_in, False)
        assert torch.equal(x, expected), f"repeat {r}: the model was not given the picture noised with seed {5 + r}"
    assert maps.maps.shape[:2] == (1, len(maps.words)) and concept_maps.words == ["cat", "chair", "background"]
    # the average of the two repeats, each a run of its own seed
    singles = [comfy.run("EnfoqueImageMaps", model=patched, positive=pos, latent=latent, noise=0.4, repeats=1,
                         seed=s)[:2] for s in (5, 6)]
    torch.testing.assert_close(maps.maps, (singles[0][0].maps + singles[1][0].maps) / 2)
    torch.testing.assert_close(concept_maps.maps, (singles[0][1].maps + singles[1][1].maps) / 2)
    assert not torch.equal(singles[0][0].maps, singles[1][0].maps), "the repeats used the same noise"
    # downstream nodes take them unchanged
    heat = comfy.run("EnfoqueHeatmaps", maps=concept_maps, colormap="viridis", opacity=0.6, normalisation="minmax",
                     columns=0)[0]
    assert heat.shape[0] == 1 and heat.shape[-1] == 3
    mask = comfy.run("EnfoqueMapsToMask", maps=concept_maps, words="cat", threshold=0.0)[0]
    assert mask.shape[-2:] == (96, 128)


def test_image_maps_errors(comfy, tiny_dir):
    model, _, pos, *_ = setup(comfy, tiny_dir, "sd3")
    latent = {"samples": torch.zeros(1, 16, 12, 16)}
    with pytest.raises(ValueError, match="Enfoque Image Maps: the model is not patched by Enfoque Patch Model"):
        comfy.run("EnfoqueImageMaps", model=model, positive=pos, latent=latent, noise=0.5, repeats=1, seed=0)
    patched, _ = patch(comfy, model, capture=False)
    with pytest.raises(ValueError, match="capture is off"):
        comfy.run("EnfoqueImageMaps", model=patched, positive=pos, latent=latent, noise=0.5, repeats=1, seed=0)
