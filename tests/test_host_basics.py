"""The host itself: ComfyUI loads the pack, serves its nodes, and samples the
tiny models with stock nodes (in-process and through a live server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import tiny_models
import torch
from helpers import ksampler, tiny_sd3_prompt

pytestmark = pytest.mark.host


# --------------------------------------------------------------------------- loading


def test_loader_imports_pack(comfy):
    assert comfy.loaded, "nodes.load_custom_node returned False for the pack (see the captured log)"
    pack = comfy.pack
    assert pack is not None and callable(pack.comfy_entrypoint)
    assert pack.WEB_DIRECTORY == "./js"
    # ComfyUI's own `nodes` stays the top-level `nodes`; the pack's nodes/ lives under the pack module
    assert Path(sys.modules["nodes"].__file__).resolve() == comfy.path / "nodes.py"
    for node_id in comfy.node_ids:
        cls = comfy.node(node_id)
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.enfoque"
        assert cls.__module__.startswith(comfy.pack_module_name + ".")


@pytest.mark.server
def test_server_lists_pack_nodes(comfy, comfy_server):
    info = comfy_server.object_info()
    assert "KSampler" in info and "UNETLoader" in info
    assert comfy_server.pack_import_problems() == []
    missing = comfy.node_ids - set(info)
    assert not missing, f"registered in-process but not served: {sorted(missing)}"
    for node_id in comfy.node_ids:
        assert info[node_id]["python_module"] == "custom_nodes.enfoque"


# --------------------------------------------------------------------------- in-process sampling

CASES = {
    # family: (model factory, clip factory, latent node + inputs, cfg, latent shape)
    "sd3": (tiny_models.sd3, tiny_models.clip_sd3, "EmptySD3LatentImage", 2.0, (1, 16, 16, 16)),
    "sd35": (
        lambda d: tiny_models.sd3(d, x_block_self_attn_layers=(0,), name="tiny_sd35"),
        tiny_models.clip_sd3,
        "EmptySD3LatentImage",
        2.0,
        (1, 16, 16, 16),
    ),
    "flux": (tiny_models.flux, tiny_models.clip_flux, "EmptySD3LatentImage", 1.0, (1, 16, 16, 16)),
    "flux_schnell": (
        lambda d: tiny_models.flux(d, guidance_embed=False, name="tiny_schnell"),
        tiny_models.clip_flux,
        "EmptySD3LatentImage",
        1.0,
        (1, 16, 16, 16),
    ),
    "sd15": (tiny_models.sd15_unet, tiny_models.clip_sd15, "EmptyLatentImage", 2.0, (1, 4, 16, 16)),
    "sdxl": (tiny_models.sdxl_unet, tiny_models.clip_sdxl, "EmptyLatentImage", 2.0, (1, 4, 16, 16)),
}


def sample(comfy, model, clip, latent_node, cfg, seed=7, text="a red cat on a blue chair"):
    pos = comfy.run("CLIPTextEncode", clip=clip, text=text)[0]
    neg = comfy.run("CLIPTextEncode", clip=clip, text="")[0]
    latent = comfy.run(latent_node, width=128, height=128, batch_size=1)[0]
    out = comfy.run(
        "KSampler",
        model=model,
        seed=seed,
        steps=2,
        cfg=cfg,
        sampler_name="euler",
        scheduler="simple",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )[0]
    return pos, out["samples"]


@pytest.mark.parametrize("family", list(CASES))
def test_tiny_model_samples(comfy, tiny_dir, family):
    make_model, make_clip, latent_node, cfg, shape = CASES[family]
    model = make_model(tiny_dir).model
    clip = make_clip()
    pos, a = sample(comfy, model, clip, latent_node, cfg)
    _, b = sample(comfy, model, clip, latent_node, cfg)
    _, c = sample(comfy, model, clip, latent_node, cfg, seed=8)
    assert tuple(a.shape) == shape
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed, different latent"
    assert not torch.equal(a, c), "the seed changed nothing"
    assert a.std() > 0


def test_tiny_models_are_what_comfy_would_load(comfy, tiny_dir):
    import comfy.supported_models as sm
    import safetensors.torch

    cases = [
        (tiny_models.sd3(tiny_dir, x_block_self_attn_layers=(1,), name="check_sd35"), sm.SD3),
        (tiny_models.flux(tiny_dir, name="check_flux"), sm.Flux),
        (tiny_models.flux(tiny_dir, guidance_embed=False, name="check_schnell"), sm.FluxSchnell),
        (tiny_models.sd15_unet(tiny_dir, name="check_sd15"), sm.SD15),
        (tiny_models.sdxl_unet(tiny_dir, name="check_sdxl"), sm.SDXL),
    ]
    for tiny, config_class in cases:
        base = tiny.model.model
        assert type(base.model_config) is config_class
        on_disk = safetensors.torch.load_file(str(tiny.path))
        loaded = base.diffusion_model.state_dict()
        assert set(on_disk) == set(loaded), tiny.path.name
        for k, v in on_disk.items():
            assert torch.equal(loaded[k].to(v.dtype), v), k
    blocks = cases[0][0].model.model.diffusion_model.joint_blocks
    assert [b.x_block.x_block_self_attn for b in blocks] == [False, True]


def test_tiny_models_are_deterministic(comfy, tiny_dir):
    for make in (tiny_models.sd3, tiny_models.flux, tiny_models.sd15_unet, tiny_models.sdxl_unet):
        a = make(tiny_dir / "det_a").path
        b = make(tiny_dir / "det_b").path
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize(
    "factory, cond, pooled",
    [
        (tiny_models.clip_sd3, (1, 154, 4096), (1, 2048)),
        (tiny_models.clip_flux, (1, 256, 4096), (1, 768)),
        (tiny_models.clip_sd15, (1, 77, 768), (1, 768)),
        (tiny_models.clip_sdxl, (1, 77, 2048), (1, 1280)),
    ],
    ids=["sd3", "flux", "sd15", "sdxl"],
)
def test_tiny_clip_conditioning_shapes(comfy, factory, cond, pooled):
    c = comfy.run("CLIPTextEncode", clip=factory(), text="a photo of a cat")[0]
    assert tuple(c[0][0].shape) == cond
    assert tuple(c[0][1]["pooled_output"].shape) == pooled
    assert torch.isfinite(c[0][0]).all()


def test_tiny_clip_is_seeded(comfy):
    a = tiny_models.clip_sd15(seed=3, cache=False)
    b = tiny_models.clip_sd15(seed=3, cache=False)
    ca = comfy.run("CLIPTextEncode", clip=a, text="a cat")[0][0][0]
    cb = comfy.run("CLIPTextEncode", clip=b, text="a cat")[0][0][0]
    assert torch.equal(ca, cb)


# --------------------------------------------------------------------------- live server


def stock_graph(seed=5, prefix="enfoque_test/tiny_sd3"):
    return {
        **tiny_sd3_prompt(),
        "6": ksampler(["1", 0], ["3", 0], ["4", 0], ["5", 0], seed=seed),
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
    }


@pytest.mark.server
def test_server_runs_stock_graph(comfy, comfy_server):
    import comfy.sd as comfy_sd  # (not `import comfy.sd`: that would rebind the fixture name)
    import safetensors.torch

    entry = comfy_server.run(stock_graph(), timeout=120)
    files = entry["outputs"]["7"]["latents"]
    assert len(files) == 1
    f = files[0]
    path = comfy_server.output_dir / f["subfolder"] / f["filename"]
    assert path.is_file()
    latent = safetensors.torch.load_file(str(path))["latent_tensor"]
    assert tuple(latent.shape) == (1, 16, 16, 16)
    assert torch.isfinite(latent).all()

    # the same graph in-process, from the same files, gives the same latent
    models = comfy_server.models_dir
    model = comfy_sd.load_diffusion_model(str(models / "diffusion_models" / "tiny_sd3.safetensors"))
    clip = comfy_sd.load_clip(
        [str(models / "text_encoders" / "tiny_clip_l.safetensors")], clip_type=comfy_sd.CLIPType.SD3
    )
    _, here = sample(comfy, model, clip, "EmptySD3LatentImage", 2.0, seed=5, text="a red cat")
    # SaveLatent stores what KSampler returned (latent space of the model)
    torch.testing.assert_close(latent.float(), here.float(), rtol=1e-4, atol=1e-4)
