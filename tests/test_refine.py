"""Refined maps (Enfoque Patch Model's ``refine``, Enfoque Attention Maps' kind ``refined``) on the tiny
real model of every family in the support table, sampled by ComfyUI's KSampler.

The reference is written plainly here, in float64, from the q and k a test-only attention override (set
before the pack's) sees: for each attention call of the prompt's text, ``M`` is the head mean of
softmax(q k^T / sqrt(d) + mask) over the image queries and the prompt's key columns, and the refined
map is ``mean over heads of softmax_over_image_keys(q_img k_img^T / sqrt(d) + mask) @ M``, with the
image queries and keys of the same joint attention, or, for a cross-attention (Wan, the UNets), of the
self-attention the block ran just before. The run's refined map is the mean over calls.
"""

from __future__ import annotations

import pytest
import torch
from family_cases import CASES
from helpers import patch
from test_families import _release_models as _release_families  # noqa: F401
from test_families import fam, text_place
from test_families import ksample as fam_ksample
from test_model_probe import (
    _release_models,  # noqa: F401
    family,
    ksample,
)

pytestmark = pytest.mark.host

GRID = (6, 8)  # the DiTs' token grid of the 128 x 96 latent of test_model_probe (the UNets': 12 x 16)


def heads_view(t: torch.Tensor, heads: int, skip: bool) -> torch.Tensor:
    return t if skip else t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def refined(maps: torch.Tensor, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T / sqrt(d) + mask) @ maps, all float64: ``[rows, image, columns]``."""
    logits = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        logits = logits + mask.double()
    return (torch.softmax(logits, dim=-1) @ maps[:, None]).mean(1)


class RefinedReference:
    """Records the refined map of every text attention call of the cond rows (see the module's doc).

    ``is_text(q, k)`` tells the prompt's text attention; ``q0``/``n_img``: where the image queries sit;
    ``cols``: the prompt's key columns; ``joint``: the image keys are in the same call (at ``q0``), else
    the last self-attention call (as many queries as keys) is the block's."""

    def __init__(self, is_text, q0: int, n_img: int | None, cols, joint: bool):
        self.is_text, self.q0, self.n_img, self.cols, self.joint = is_text, q0, n_img, cols, joint
        self.maps: list[torch.Tensor] = []
        self.last_self = None

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        skip = kwargs.get("skip_reshape", False)
        options = kwargs.get("transformer_options", {})
        qh, kh = heads_view(q, heads, skip), heads_view(k, heads, skip)
        if qh.shape[2] == kh.shape[2] and not self.joint:
            self.last_self = (qh, kh)
        elif self.is_text(qh, kh) and 0 in options.get("cond_or_uncond", []):
            mask = kwargs.get("mask")
            mask = None if mask is None else mask.double()
            n = self.n_img or qh.shape[2]
            q0 = self.q0
            logits = qh.double() @ kh.double().transpose(-1, -2) / qh.shape[-1] ** 0.5
            if mask is not None:
                logits = logits + mask
            m = torch.softmax(logits, dim=-1)[:, :, q0:q0 + n][..., self.cols].mean(1)  # [B, n, cols]
            rows = qh.shape[0] // len(options["cond_or_uncond"])
            i = options["cond_or_uncond"].index(0)
            sl = slice(i * rows, (i + 1) * rows)
            if self.joint:
                img_mask = None if mask is None else mask[..., q0:q0 + n, q0:q0 + n]
                img_mask = None if img_mask is None else (img_mask[sl] if img_mask.shape[0] > 1 else img_mask)
                out = refined(m[sl], qh[sl, :, q0:q0 + n], kh[sl, :, q0:q0 + n], img_mask)
            else:
                sq, sk = self.last_self
                out = refined(m[sl], sq[sl], sk[sl], None)
            self.maps.append((n, out))
        return func(q, k, v, heads, *args, **kwargs)

    def mean(self, grid: tuple[int, int]) -> torch.Tensor:
        """The mean over calls on the run's grid (UNet levels brought to it as the latent halves)."""
        up = []
        for n, m in self.maps:
            h, w = grid
            while h * w > n:
                h, w = (h + 1) // 2, (w + 1) // 2
            g = m.transpose(1, 2).reshape(m.shape[0], m.shape[2], h, w)
            if (h, w) != tuple(grid):
                g = torch.nn.functional.interpolate(g, size=grid, mode="bilinear", align_corners=False)
            up.append(g)
        return torch.stack(up).mean(0)


def sampled_with_reference(comfy, model, reference, sample):
    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = reference
    patched, probe = patch(comfy, m, refine="self-attention")
    out = sample(patched)
    return probe, out


@pytest.mark.parametrize("name", list(CASES))
def test_refined_maps_equal_float64_reference_dit_families(comfy, tiny_dir, name):
    f = fam(comfy, tiny_dir, name)
    L = f.stock_pos[0][0].shape[1]
    place = text_place(f, L)

    def is_text(q, k):
        return k.shape[2] == place.k_len and (place.q_len is None or q.shape[2] == place.q_len)

    joint = name != "wan"
    ref = RefinedReference(is_text, place.q0, place.n_img, place.cols, joint)
    probe, _ = sampled_with_reference(comfy, f.model, ref, lambda m: fam_ksample(comfy, f, m, f.stock_pos,
                                                                                  f.stock_neg))
    res = probe.result
    assert res.refined and len(ref.maps) == len(res.active_steps) * len(res.blocks) > 0
    expected = torch.stack([m for _, m in ref.maps]).mean(0)  # [rows, image tokens, L]
    got = res.refined_maps[("positive", 0)].flatten(2).transpose(1, 2)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sd3", "sd35", "flux", "sd15", "sdxl"])
def test_refined_maps_equal_float64_reference(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    L = pos[0][0].shape[1]
    unet = name in ("sd15", "sdxl")
    n_img = None if unet else GRID[0] * GRID[1]

    def is_text(q, k):
        if unet:
            return k.shape[2] == L and q.shape[2] != L
        return k.shape[2] == q.shape[2] >= L + n_img

    ref = RefinedReference(is_text, 0 if unet else L, n_img, list(range(L)), joint=not unet)
    probe, _ = sampled_with_reference(comfy, model, ref, lambda m: ksample(comfy, m, pos, neg, latent_node, cfg))
    res = probe.result
    assert res.refined and len(ref.maps) == len(res.active_steps) * len(res.blocks) > 0
    got = res.refined_maps[("positive", 0)]  # [rows, L, H, W]
    torch.testing.assert_close(got.double(), ref.mean(tuple(got.shape[-2:])), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["sd3", "flux", "sd15"])
def test_refine_is_neutral_and_maps_are_read_as_kind_refined(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    stock = ksample(comfy, model, pos, neg, latent_node, cfg)["samples"]
    patched, probe = patch(comfy, model, refine="self-attention", keep_steps=True)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg)
    assert torch.equal(out["samples"], stock), "refine changed the sampled latent"
    cross = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    sharp = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", kind="refined")[0]
    assert sharp.words == cross.words and sharp.maps.shape == cross.maps.shape
    assert sharp.meta["kind"] == "refined" and not torch.allclose(sharp.maps, cross.maps)
    step = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", kind="refined", step=1)[0]
    assert step.meta["steps"] == [1] and len(sharp.steps) == 2
    torch.testing.assert_close(sharp.steps[1].maps, step.maps)


def test_refined_asked_of_a_run_without_refine_says_how_to_get_it(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    patched, probe = patch(comfy, model)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg, steps=1)
    with pytest.raises(ValueError, match=r"^Enfoque Attention Maps: kind refined needs the refined maps, and this run "
                                         r"had refine off on Enfoque Patch Model; set refine to self-attention"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", kind="refined")
    with pytest.raises(ValueError, match=r"Enfoque Patch Model: refine 'sharp' is not an option; options: off, "
                                         r"self-attention"):
        patch(comfy, model, refine="sharp")
