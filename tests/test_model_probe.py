"""EnfoquePatchModel / EnfoqueAttentionMaps on tiny real models, sampled by ComfyUI's KSampler."""

from __future__ import annotations

import logging

import pytest
import tiny_models
import torch
from helpers import patch, released
from weight_checks import check_weight_on_column, with_layout

pytestmark = pytest.mark.host

FAMILIES = {
    # name: (model factory, clip factory, latent node, cfg, text length seen by the model)
    "sd3": (tiny_models.sd3, tiny_models.clip_sd3, "EmptySD3LatentImage", 3.0),
    "sd35": (lambda d: tiny_models.sd3(d, x_block_self_attn_layers=(0,), name="probe_sd35"),
             tiny_models.clip_sd3, "EmptySD3LatentImage", 3.0),
    "flux": (lambda d: tiny_models.flux(d, name="probe_flux"), tiny_models.clip_flux, "EmptySD3LatentImage", 2.0),
    "sd15": (lambda d: tiny_models.sd15_unet(d, name="probe_sd15"), tiny_models.clip_sd15, "EmptyLatentImage", 3.0),
    "sdxl": (lambda d: tiny_models.sdxl_unet(d, name="probe_sdxl"), tiny_models.clip_sdxl, "EmptyLatentImage", 3.0),
}
_models: dict = {}

_release_models = released(_models)


def family(comfy, tiny_dir, name):
    if name not in _models:
        make_model, make_clip, latent_node, cfg = FAMILIES[name]
        clip = make_clip()
        pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat on a blue chair")[0]
        neg = comfy.run("CLIPTextEncode", clip=clip, text="blurry")[0]
        _models[name] = (make_model(tiny_dir).model, pos, neg, latent_node, cfg)
    return _models[name]


def ksample(comfy, model, pos, neg, latent_node, cfg, steps=2, width=128, height=96, batch=1, seed=3):
    latent = comfy.run(latent_node, width=width, height=height, batch_size=batch)[0]
    return comfy.run("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_capture_is_neutral_and_original_untouched(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    before = dict(model.model_options["transformer_options"])
    stock = ksample(comfy, model, pos, neg, latent_node, cfg)["samples"]
    patched, probe = patch(comfy, model, capture_negative=True)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg)["samples"]
    assert torch.equal(out, stock), "capture changed the sampled latent"
    assert model.model_options["transformer_options"] == before
    again = ksample(comfy, model, pos, neg, latent_node, cfg)["samples"]
    assert torch.equal(again, stock)
    res = probe.result
    assert set(res.maps) == {("positive", 0), ("negative", 0)}
    m = res.maps[("positive", 0)]
    assert m.shape[0] == 1 and torch.isfinite(m).all() and m.sum() > 0
    assert res.grid == ((6, 8) if name in ("sd3", "sd35", "flux") else (12, 16))
    assert probe.run is None, "the running sums outlive the sampling run"


class NaiveReference:
    """A test-only override set before ours: records softmax(q k^T / sqrt(d)) for image
    queries x text keys of the cond rows, written plainly, and calls the stock backend."""

    def __init__(self, text_len: int, grid: tuple[int, int], joint: bool):
        self.text_len, self.n_img, self.joint = text_len, grid[0] * grid[1], joint
        self.maps: list[torch.Tensor] = []
        self.calls = 0

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        self.calls += 1
        skip = kwargs.get("skip_reshape", False)
        to = kwargs.get("transformer_options", {})
        qh, kh = (t if skip else t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
        is_joint = self.joint and kh.shape[2] == qh.shape[2] >= self.text_len + self.n_img
        is_cross = not self.joint and kh.shape[2] == self.text_len and qh.shape[2] == self.n_img
        if is_joint or is_cross:
            p = torch.softmax(qh.double() @ kh.double().transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)
            q0 = self.text_len if self.joint else 0
            p = p[:, :, q0:q0 + self.n_img, :self.text_len]
            rows = p.shape[0] // len(to["cond_or_uncond"])
            i = to["cond_or_uncond"].index(0)
            self.maps.append(p[i * rows:(i + 1) * rows].mean(1))  # [rows, img, text]
        return func(q, k, v, heads, *args, **kwargs)


@pytest.mark.parametrize("name", ["sd3", "sd35", "flux"])
def test_maps_equal_naive_reference_dit(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    text_len = pos[0][0].shape[1]
    ref = NaiveReference(text_len, (6, 8), joint=True)
    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = ref
    patched, probe = patch(comfy, m)
    ksample(comfy, patched, pos, neg, latent_node, cfg)
    expected = torch.stack(ref.maps).mean(0)  # mean over blocks and steps of the head mean
    got = probe.result.maps[("positive", 0)]  # [rows, tokens, H, W]
    got = got.flatten(2).transpose(1, 2)
    assert len(ref.maps) == len(probe.result.active_steps) * len(probe.result.blocks)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


class PerLevel(NaiveReference):
    """The UNet's cross-attention (77 text keys) at every level, in float64, for the cond rows."""

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        if k.shape[1] == 77 and q.shape[1] != k.shape[1]:
            n = q.shape[1]
            qh, kh = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
            p = torch.softmax(qh.double() @ kh.double().transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)
            to = kwargs["transformer_options"]
            rows = p.shape[0] // len(to["cond_or_uncond"])
            i = to["cond_or_uncond"].index(0)
            self.maps.append((n, p[i * rows:(i + 1) * rows].mean(1)))
        return func(q, k, v, heads, *args, **kwargs)

    def expected(self, grid=(12, 16)) -> torch.Tensor:
        """Each level's map brought to the latent grid (bilinear, as the latent halves: ceil), then the mean
        over calls: ``[rows, 77, H, W]``."""
        up = []
        for n, p in self.maps:
            h, w = grid
            while h * w > n:
                h, w = (h + 1) // 2, (w + 1) // 2
            g = p.transpose(1, 2).reshape(p.shape[0], 77, h, w)
            if (h, w) != tuple(grid):
                g = torch.nn.functional.interpolate(g, size=grid, mode="bilinear", align_corners=False)
            up.append(g)
        assert len({n for n, _ in self.maps}) >= 2, "the tiny UNet should have cross-attention at two resolutions"
        return torch.stack(up).mean(0)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_maps_equal_naive_reference_unet(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    m = model.clone()
    ref = PerLevel(77, (12, 16), joint=False)
    m.model_options["transformer_options"]["optimized_attention_override"] = ref
    patched, probe = patch(comfy, m)
    ksample(comfy, patched, pos, neg, latent_node, cfg)
    assert len(ref.maps) == len(probe.result.active_steps) * len(probe.result.blocks)
    torch.testing.assert_close(probe.result.maps[("positive", 0)].double(), ref.expected(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["bias", "scale"])
@pytest.mark.parametrize("name", ["sd3", "flux", "sd15"])
def test_weights_steer_only_their_prompt(comfy, tiny_dir, name, mode):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    j = 3  # a context position inside the prompt's words

    def run(weights):
        # first block, one step: the maps there see the same hidden states in every run
        patched, probe = patch(comfy, model, reweight=mode, capture_negative=True, blocks="0")
        cond = with_layout(comfy, pos, weights) if weights is not None else pos
        ksample(comfy, patched, cond, neg, latent_node, cfg, steps=1)
        return probe.result

    check_weight_on_column(run(None), run({j: 2.0}), run({j: 0.0}), j, mode, [i for i in range(8) if i != j])


def test_reweight_off_ignores_weights(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    stock = ksample(comfy, model, pos, neg, latent_node, cfg)["samples"]
    patched, _ = patch(comfy, model, reweight="off")
    out = ksample(comfy, patched, with_layout(comfy, pos, {3: 5.0}), neg, latent_node, cfg)["samples"]
    assert torch.equal(out, stock)
    patched, _ = patch(comfy, model, reweight="bias", capture=False)
    out = ksample(comfy, patched, with_layout(comfy, pos, {3: 5.0}), neg, latent_node, cfg)["samples"]
    assert (out - stock).abs().max().item() > 1e-4


def test_blocks_and_step_window(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "flux")
    patched, probe = patch(comfy, model, blocks="1")
    ksample(comfy, patched, pos, neg, latent_node, cfg, steps=4)
    assert probe.result.blocks == [1]
    patched, probe = patch(comfy, model, start_percent=0.5, end_percent=1.0)
    ksample(comfy, patched, pos, neg, latent_node, cfg, steps=4)
    assert 0 < len(probe.result.active_steps) < 4
    assert max(probe.result.active_steps) == 3


def test_batch_rows_keep_their_own_maps(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    patched, probe = patch(comfy, model)
    ksample(comfy, patched, pos, neg, latent_node, cfg, batch=2)
    m = probe.result.maps[("positive", 0)]
    assert m.shape[0] == 2
    assert (m[0] - m[1]).abs().max() > 1e-4
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent={"samples": torch.zeros(2, 16, 12, 16)}, words="#1, #2")[0]
    assert maps.maps.shape == (2, 2, 6, 8) and maps.words == ["#1", "#2"]
    torch.testing.assert_close(maps.maps[:, 0], m[:, 1])


def test_earlier_override_still_runs(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    calls = []

    def other(func, *args, **kwargs):
        calls.append(1)
        return func(*args, **kwargs)

    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = other
    plain = ksample(comfy, m, pos, neg, latent_node, cfg)["samples"]
    n_plain = len(calls)
    calls.clear()
    patched, probe = patch(comfy, m)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg)["samples"]
    assert len(calls) == n_plain > 0
    assert torch.equal(out, plain)
    assert probe.result is not None


def test_unsupported_and_bad_inputs(comfy, tiny_dir):
    model, *_ = family(comfy, tiny_dir, "sd3")
    with pytest.raises(ValueError, match="blocks '7': block 7 is out of range"):
        patch(comfy, model, blocks="7")
    with pytest.raises(ValueError, match="start_percent 0.8 is after end_percent 0.2"):
        patch(comfy, model, start_percent=0.8, end_percent=0.2)
    with pytest.raises(ValueError, match="cannot read 'x'"):
        patch(comfy, model, blocks="0,x")
    _, probe = patch(comfy, model)
    with pytest.raises(ValueError, match="no finished sampling run"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent={"samples": torch.zeros(1, 16, 8, 8)}, words="")


def test_budget_refused_before_sampling(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    patched, probe = patch(comfy, model, budget_mb=1.0)
    with pytest.raises(ValueError, match=r"needs 2 MB, over the budget of 1 MB; raise budget_mb"):
        ksample(comfy, patched, pos, neg, latent_node, cfg, width=1024, height=1024)
    assert probe.run is None and probe.result is None


def test_several_conds_route_by_uuid(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    clip = tiny_models.clip_sd3()
    other = comfy.run("CLIPTextEncode", clip=clip, text="a green dog")[0]
    both = comfy.run("ConditioningCombine", conditioning_1=pos, conditioning_2=other)[0]
    patched, probe = patch(comfy, model, blocks="0")
    out = ksample(comfy, patched, both, neg, latent_node, cfg, steps=1)
    assert set(probe.result.maps) == {("positive", 0), ("positive", 1)}
    a, b = probe.result.maps[("positive", 0)], probe.result.maps[("positive", 1)]
    assert (a - b).abs().max() > 1e-4, "two prompts, one map"
    # each prompt alone at block 0, step 1 sees the same input: its maps must equal the combined run's
    for cond, expect in ((pos, a), (other, b)):
        p2, probe2 = patch(comfy, model, blocks="0")
        ksample(comfy, p2, cond, neg, latent_node, cfg, steps=1)
        torch.testing.assert_close(probe2.result.maps[("positive", 0)], expect, atol=1e-6, rtol=0)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="#3", cond_index=1)[0]
    torch.testing.assert_close(maps.maps[:, 0], b[:, 3])
    with pytest.raises(ValueError, match="no maps of the positive prompt number 2"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", cond_index=2)


def test_per_step_maps(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    patched, probe = patch(comfy, model, keep_steps=True, start_percent=0.0, end_percent=1.0)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg, steps=3)
    res = probe.result
    per = res.step_maps[("positive", 0)]
    assert sorted(per) == [0, 1, 2]
    # every step has the same number of calls, so the overall mean is the mean of the step means
    torch.testing.assert_close(torch.stack([per[s] for s in range(3)]).mean(0), res.maps[("positive", 0)])
    assert (per[0] - per[2]).abs().max() > 1e-5
    m1 = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="#2", step=1)[0]
    torch.testing.assert_close(m1.maps[:, 0], per[1][:, 2])
    assert m1.meta["steps"] == [1]
    p1, probe1 = patch(comfy, model)
    ksample(comfy, p1, pos, neg, latent_node, cfg, steps=3)
    with pytest.raises(ValueError, match="step 5 was not captured; captured steps: 0, 1, 2"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", step=5)
    with pytest.raises(ValueError, match="turn on keep_steps"):
        comfy.run("EnfoqueAttentionMaps", probe=probe1, latent=out, words="", step=0)


@pytest.mark.parametrize("name", ["sd3", "flux", "sd15"])
def test_sdpa_backend_fused_path(comfy, tiny_dir, name, monkeypatch):
    """On GPUs ComfyUI picks its SDPA backend; there the capture computes the output with the
    fused kernel SDPA itself uses (plus the LSE). This CPU host defaults to sub-quadratic
    attention, so the models' module-level backend is switched here as ComfyUI would on a GPU."""
    _stock_sdpa(monkeypatch)
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    stock = ksample(comfy, model, pos, neg, latent_node, cfg)["samples"]
    if name == "sd15":
        ref = PerLevel(77, (12, 16), joint=False)
    else:
        ref = NaiveReference(pos[0][0].shape[1], (6, 8), joint=True)
    patched, probe = patch(comfy, model)
    seen = _spy_routes(comfy, monkeypatch)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg)["samples"]
    assert seen and all(seen), "the capture did not take the fused route"
    assert torch.equal(out, stock), "the fused route changed the output"
    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = ref
    p2, probe2 = patch(comfy, m)
    ksample(comfy, p2, pos, neg, latent_node, cfg)
    # with an override in front the maps come from the chunked route: both routes must agree
    torch.testing.assert_close(probe.result.maps[("positive", 0)], probe2.result.maps[("positive", 0)],
                               atol=1e-5, rtol=0)
    if name == "sd15":
        torch.testing.assert_close(probe.result.maps[("positive", 0)].double(), ref.expected(), atol=1e-5, rtol=0)
        return
    expected = torch.stack(ref.maps).mean(0)
    got = probe.result.maps[("positive", 0)].flatten(2).transpose(1, 2)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def _stock_sdpa(monkeypatch):
    """ComfyUI's SDPA backend, as on a GPU (this CPU host defaults to sub-quadratic attention)."""
    import comfy.ldm.flux.math as flux_math
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit

    for mod in (attention, mmdit, flux_math):
        monkeypatch.setattr(mod, "optimized_attention", attention.attention_pytorch)
    return attention


def _spy_routes(comfy, monkeypatch) -> list[bool]:
    """Whether each `attend` call took the fused route (no compute_out)."""
    hooks = comfy.submodule("nodes.model_patch.override")
    seen: list[bool] = []
    real_attend = hooks.attend

    def spy(*args, **kwargs):
        seen.append(kwargs.get("compute_out") is None)
        return real_attend(*args, **kwargs)

    monkeypatch.setattr(hooks, "attend", spy)
    return seen


def _with_attn2_replace(comfy, model, replace):
    """A clone with another pack's attn2 replace on every UNet cross-attention."""
    families = comfy.submodule("nodes.model_patch.families")
    m = model.clone()
    for name, number, t in families.unet_attn2_sites(m.get_model_object("diffusion_model")):
        m.set_model_attn2_replace(replace, name, number, t)
    return m


def test_attention_call_read_by_name_keeps_the_fused_route(comfy, tiny_dir, monkeypatch):
    """Another pack's attn2 replace calls ComfyUI's attention with every argument by position
    (mask, attn_precision, skip_reshape, skip_output_reshape): still the fused route, the stock output,
    and the maps of the plain graph."""
    attention = _stock_sdpa(monkeypatch)
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd15")

    def positional(q, k, v, extra):
        return attention.optimized_attention(q, k, v, extra["n_heads"], None, extra["attn_precision"], False, False,
                                             transformer_options=extra)

    m = _with_attn2_replace(comfy, model, positional)
    stock = ksample(comfy, m, pos, neg, latent_node, cfg)["samples"]
    plain, plain_probe = patch(comfy, model)
    ksample(comfy, plain, pos, neg, latent_node, cfg)
    patched, probe = patch(comfy, m)
    seen = _spy_routes(comfy, monkeypatch)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg)["samples"]
    assert seen and all(seen), "an argument passed by position turned the fused route off"
    assert torch.equal(out, stock)
    torch.testing.assert_close(probe.result.maps[("positive", 0)], plain_probe.result.maps[("positive", 0)],
                               atol=1e-6, rtol=0)


class Boxed(torch.Tensor):
    """A tensor subclass, as a newer ComfyUI or another pack may hand q/k/v."""


def test_qkv_containers_pass_through_and_are_logged_once_per_run(comfy, tiny_dir, caplog):
    import comfy.ldm.modules.attention as attention

    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd15")

    def boxed(q, k, v, extra):
        return attention.optimized_attention(q.as_subclass(Boxed), k, v, extra["n_heads"],
                                             transformer_options=extra)

    m = _with_attn2_replace(comfy, model, boxed)
    stock = ksample(comfy, m, pos, neg, latent_node, cfg)["samples"]
    patched, probe = patch(comfy, m)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            out = ksample(comfy, patched, pos, neg, latent_node, cfg)["samples"]
            assert torch.equal(out.as_subclass(torch.Tensor), stock.as_subclass(torch.Tensor))
    said = [r.getMessage() for r in caplog.records if "not plain tensors" in r.getMessage()]
    assert len(said) == 2, said  # once in each run
    assert "q/k/v come as Boxed, Tensor, not plain tensors" in said[0]
    assert probe.result.maps == {}


def test_per_block_maps(comfy, tiny_dir):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "flux")
    patched, probe = patch(comfy, model, keep_blocks=True)
    out = ksample(comfy, patched, pos, neg, latent_node, cfg, steps=2)
    res = probe.result
    per = res.block_maps[("positive", 0)]
    assert sorted(per) == res.blocks == [0, 1]
    torch.testing.assert_close(torch.stack([per[b] for b in res.blocks]).mean(0), res.maps[("positive", 0)])
    only = patch(comfy, model, blocks="1")
    ksample(comfy, only[0], pos, neg, latent_node, cfg, steps=2)
    torch.testing.assert_close(per[1], only[1].result.maps[("positive", 0)], atol=1e-6, rtol=0)
    m = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="#4", block=1)[0]
    torch.testing.assert_close(m.maps[:, 0], per[1][:, 4])
    assert m.meta["blocks"] == [1]
    with pytest.raises(ValueError, match="choose a step or a block"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", block=1, step=0)
    with pytest.raises(ValueError, match="block 7 was not captured; captured blocks: 0, 1"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", block=7)
