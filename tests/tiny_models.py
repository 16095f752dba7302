"""Tiny REAL models for host tests: ComfyUI's own classes, loaders and
tokenizers, with small configs and seeded random weights (no downloads).

Import this only after the ``comfy`` fixture (or ``host.bootstrap()``) has put
ComfyUI on ``sys.path`` and parsed its command line.

Diffusion models (each returns ``TinyModel(model=ModelPatcher, path=Path)``,
the file is a bare-key safetensors as in ``models/diffusion_models``):

==========  =====================================  ================================
function    architecture                           how it is loaded
==========  =====================================  ================================
sd3         MMDiT depth 2 (hidden 64*depth,         ``comfy.sd.load_diffusion_model``
            heads = depth), context 4096, adm 2048  (ComfyUI's detection: SD3)
flux        Flux, hidden 64, 2 heads, 1 double +    detected by ComfyUI, then wrapped
            1 single block, context 4096, vec 768   (``_wrap``): detection hard-codes
                                                    24 heads / axes [16, 56, 56], so a
                                                    small model needs those two keys
                                                    overridden
sd15_unet   UNetModel, 32 ch, mult [1, 2], depth 1  detected by ComfyUI, wrapped with
            context 768                             ``supported_models.SD15``: its
                                                    ``matches`` requires 320 channels
sdxl_unet   UNetModel, 64 ch, mult [1, 2], depth 1  detected, wrapped with
            linear, context 2048, adm 2816          ``supported_models.SDXL`` (matching
                                                    requires 320 ch, depth [0,0,2,2,10,10])
==========  =====================================  ================================

``_wrap`` repeats the tail of ``comfy.sd.load_diffusion_model_state_dict``
(pick dtype, ``model_config.get_model``, ``load_model_weights``,
``ModelPatcher``) with ComfyUI's own functions.

Text encoders (``comfy.sd.CLIP`` built from ComfyUI's clip targets; small
sizes go through the official per-encoder override
``model_options["<model_name>_model_config"]`` that ``SDClipModel`` reads):
CLIP-L 3 layers (width 768), CLIP-G 3 layers (width 1280), T5 1 layer with
d_model 4096 (needed: SD3 concatenates T5 with CLIP padded to 4096), 2 heads of
32, d_ff 64. Tokenizers are ComfyUI's bundled files. Conditioning shapes from
``CLIPTextEncode`` of a short prompt:

==========  =========================  ===========  =============================
function    cond                       pooled       encoders
==========  =========================  ===========  =============================
clip_sd3    [1, 77 + 77, 4096]         [1, 2048]    L 768 | G 1280 | pad, ++ T5
clip_flux   [1, 256, 4096]             [1, 768]     T5 (min 256 tokens), pooled L
clip_sd15   [1, 77, 768]               [1, 768]     L
clip_sdxl   [1, 77, 2048]              [1, 1280]    L 768 | G 1280, pooled G
==========  =========================  ===========  =============================

The CLIP objects are cached per argument set (building T5's 32128 x 4096
embedding costs about a second): clone them (``clip.clone()``) before
patching, as the pack does; ``cache=False`` gives a private copy.

``clip_l_full_file`` writes a full-size CLIP-L (12 layers): ComfyUI's stock
``CLIPLoader`` builds the text encoder from a fixed config, so only a full
CLIP-L file loads through it (``type="sd3"`` gives SD3 conditioning with zeros
for G and no T5). Small CLIP-G / T5 files cannot go through the stock loaders
(detection needs layer 30 of CLIP-G and block 23 of T5-XXL).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch

SEED = 0

# Small text-encoder configs, passed as model_options["<model_name>_model_config"].
CLIP_L_SMALL = {"num_hidden_layers": 3, "intermediate_size": 256}
CLIP_G_SMALL = {"num_hidden_layers": 3, "intermediate_size": 256}
T5_SMALL = {"num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 64}


class TinyModel(NamedTuple):
    model: Any  # comfy.model_patcher.ModelPatcher
    path: Path  # the safetensors file the model was loaded from


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = SEED, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """Fill every floating tensor of ``module``'s state dict (parameters and
    persistent buffers: ComfyUI allocates both with ``torch.empty``) in place,
    deterministically.

    Matrices/embeddings: uniform with std 1/sqrt(fan_in) (variance preserving,
    so random deep nets stay finite); 1-D ``weight``/``scale`` (norms): ones;
    other 1-D (biases): uniform std 0.02; 0-d: left alone. Vocabulary tables
    (more than 1024 rows) are filled by ``_table_``. Tensors whose name contains one of ``skip``
    are left as ComfyUI allocated them (parts a test never runs, e.g. a text encoder's vision tower).
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in module.state_dict(keep_vars=True).items():
        if not p.is_floating_point() or p.ndim == 0 or (skip and any(s in name for s in skip)):
            continue
        if p.ndim == 1:
            if name.endswith(("weight", "scale")):
                p.fill_(1.0)
            else:
                _uniform_(p, 0.02, g)
        elif p.ndim == 2 and p.shape[0] > 4 * _TABLE:
            _table_(p, g)
        else:
            fan_in = math.prod(p.shape[1:])
            _uniform_(p, 1.0 / math.sqrt(fan_in), g)
    return module


_TABLE = 256


def _table_(p: torch.Tensor, g: torch.Generator) -> None:
    """Large embedding tables (vocabularies of 32k-49k rows): row i is
    (a[i % 256] + b[i // 256]) / sqrt(2) with a, b uniform of std 1/sqrt(dim),
    distinct for every row and several times cheaper than filling every entry."""
    rows, dim = p.shape
    std = 1.0 / math.sqrt(dim)
    a = torch.empty(_TABLE, dim, dtype=p.dtype)
    b = torch.empty(-(-rows // _TABLE), dim, dtype=p.dtype)
    _uniform_(a, std / math.sqrt(2.0), g)
    _uniform_(b, std / math.sqrt(2.0), g)
    a, b = a.to(p.device), b.to(p.device)
    for i in range(b.shape[0]):
        block = p[i * _TABLE : (i + 1) * _TABLE]
        torch.add(a[: block.shape[0]], b[i], out=block)


def _uniform_(p: torch.Tensor, std: float, g: torch.Generator) -> None:
    bound = std * math.sqrt(3.0)
    if p.device.type == "cpu":
        p.uniform_(-bound, bound, generator=g)
    else:  # generator lives on the CPU
        p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=g))


def _save(net: torch.nn.Module, path: Path) -> Path:
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    safetensors.torch.save_file(sd, str(path))
    return path


def _build_net(model_config, seed: int) -> torch.nn.Module:
    """The diffusion network exactly as ComfyUI builds it for this config, randomised."""
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({}, "", device=torch.device("cpu"))
    return randomize_(base.diffusion_model, seed)


def _wrap(model_config, sd: dict):
    """Tail of comfy.sd.load_diffusion_model_state_dict, for a config ComfyUI's
    matching would not pick for a small model."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    unet_dtype = mm.unet_dtype(
        model_params=comfy.utils.calculate_parameters(sd),
        supported_dtypes=list(model_config.supported_inference_dtypes),
        weight_dtype=comfy.utils.weight_dtype(sd),
    )
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = model_config.get_model(sd, "")
    model = model.to(offload_device)
    model.load_model_weights(sd, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _detect(sd: dict) -> dict:
    import comfy.model_detection

    cfg = comfy.model_detection.detect_unet_config(sd, "")
    if cfg is None:
        raise RuntimeError("ComfyUI's detection did not recognise the tiny model")
    return cfg


def _load_file(path: Path) -> dict:
    import comfy.utils

    return comfy.utils.load_torch_file(str(path), safe_load=True)


# --------------------------------------------------------------------------- diffusion models


def sd3_config(depth: int = 2, x_block_self_attn_layers=()) -> dict:
    """MMDiT kwargs in the form ComfyUI's detection produces for SD3/SD3.5."""
    hidden = 64 * depth
    return {
        "in_channels": 16,
        "patch_size": 2,
        "out_channels": 16,
        "depth": depth,
        "input_size": None,
        "adm_in_channels": 2048,
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": 4096, "out_features": hidden},
        },
        "num_patches": 1024,
        "pos_embed_max_size": 32,
        "qk_norm": "rms",
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": list(x_block_self_attn_layers),
    }


def _sd3_net(cfg: dict, seed: int) -> torch.nn.Module:
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.supported_models

    net = _build_net(comfy.supported_models.SD3(cfg), seed)
    # the fixed 2-D sin-cos table real SD3 checkpoints carry in the `pos_embed` buffer
    side = cfg["pos_embed_max_size"]
    table = mmdit.get_2d_sincos_pos_embed(net.pos_embed.shape[-1], side)
    with torch.no_grad():
        net.pos_embed.copy_(torch.from_numpy(table).reshape(net.pos_embed.shape))
    return net


def sd3(
    tmp_dir, depth: int = 2, x_block_self_attn_layers=(), seed: int = SEED, name: str = "tiny_sd3"
) -> TinyModel:
    """Tiny SD3 (or SD3.5 with ``x_block_self_attn_layers``, e.g. ``(0,)``),
    saved and loaded by ``comfy.sd.load_diffusion_model``. Hidden 64*depth,
    ``depth`` heads of 64; text context 4096 -> hidden; latent 16 channels."""
    import comfy.sd

    net = _sd3_net(sd3_config(depth, x_block_self_attn_layers), seed)
    path = _save(net, Path(tmp_dir) / f"{name}.safetensors")
    model = comfy.sd.load_diffusion_model(str(path))
    return TinyModel(model, path)


def flux_config(
    guidance_embed: bool = True,
    hidden_size: int = 64,
    num_heads: int = 2,
    depth: int = 1,
    depth_single_blocks: int = 1,
) -> dict:
    head = hidden_size // num_heads
    # rope dims over (index, h, w) as the full model's [16, 56, 56] for heads of 128; all even
    t = max(2, head // 8 // 2 * 2)
    r = (head - t) // 2 // 2 * 2
    axes = [t, r, head - t - r]
    return {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "vec_in_dim": 768,
        "context_in_dim": 4096,
        "hidden_size": hidden_size,
        "mlp_ratio": 4.0,
        "num_heads": num_heads,
        "depth": depth,
        "depth_single_blocks": depth_single_blocks,
        "axes_dim": axes,
        "theta": 10000,
        "qkv_bias": True,
        "guidance_embed": guidance_embed,
        "txt_ids_dims": [],
        "yak_mlp": False,
        "txt_norm": False,
    }


def flux(
    tmp_dir,
    guidance_embed: bool = True,
    hidden_size: int = 64,
    num_heads: int = 2,
    depth: int = 1,
    depth_single_blocks: int = 1,
    seed: int = SEED,
    name: str = "tiny_flux",
) -> TinyModel:
    """Tiny Flux: dev-like (``guidance_embed=True``, ``supported_models.Flux``) or
    schnell-like (False, ``FluxSchnell``). Detected by ComfyUI from the file,
    with ``num_heads``/``axes_dim`` overridden (detection hard-codes the full
    model's 24 heads), matched by ComfyUI and wrapped by ``_wrap``."""
    import comfy.model_detection
    import comfy.supported_models

    cfg = flux_config(guidance_embed, hidden_size, num_heads, depth, depth_single_blocks)
    cls = comfy.supported_models.Flux if guidance_embed else comfy.supported_models.FluxSchnell
    net = _build_net(cls(cfg), seed)
    path = _save(net, Path(tmp_dir) / f"{name}.safetensors")
    sd = _load_file(path)
    detected = _detect(sd)
    detected.update(num_heads=cfg["num_heads"], axes_dim=cfg["axes_dim"])
    model_config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if model_config is None:
        raise RuntimeError(f"ComfyUI matched no model for the tiny Flux config {detected}")
    return TinyModel(_wrap(model_config, sd), path)


def _unet_config(model_channels: int, context_dim: int, adm_in_channels, use_linear: bool) -> dict:
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential" if adm_in_channels else None,
        "adm_in_channels": adm_in_channels,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": model_channels,
        "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1],
        "channel_mult": [1, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": use_linear,
        "context_dim": context_dim,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


def _unet(cls, cfg: dict, tmp_dir, name: str, seed: int) -> TinyModel:
    net = _build_net(cls(cfg), seed)
    path = _save(net, Path(tmp_dir) / f"{name}.safetensors")
    sd = _load_file(path)
    detected = _detect(sd)
    return TinyModel(_wrap(cls(detected), sd), path)


def sd15_unet(tmp_dir, model_channels: int = 32, seed: int = SEED, name: str = "tiny_sd15") -> TinyModel:
    """Tiny SD1.5 UNet (eps, 4-channel latent, context 768, 8 heads as SD1.5):
    detected by ComfyUI from the file, wrapped with ``supported_models.SD15``."""
    import comfy.supported_models

    cfg = _unet_config(model_channels, 768, None, False)
    return _unet(comfy.supported_models.SD15, cfg, tmp_dir, name, seed)


def sdxl_unet(tmp_dir, model_channels: int = 64, seed: int = SEED, name: str = "tiny_sdxl") -> TinyModel:
    """Tiny SDXL UNet (context 2048, adm 2816 = pooled 1280 + size embeddings,
    heads of 64 as SDXL): detected, wrapped with ``supported_models.SDXL``."""
    import comfy.supported_models

    cfg = _unet_config(model_channels, 2048, 2816, True)
    return _unet(comfy.supported_models.SDXL, cfg, tmp_dir, name, seed)


# --------------------------------------------------------------------------- text encoders

_CLIP_CACHE: dict = {}

SMALL_TE_OPTIONS = {
    "clip_l_model_config": CLIP_L_SMALL,
    "clip_g_model_config": CLIP_G_SMALL,
    "t5xxl_model_config": T5_SMALL,
}


def clear_cache() -> None:
    """Drop the cached CLIP objects."""
    _CLIP_CACHE.clear()


def _clip(key, tokenizer, te_class, seed: int, cache: bool, model_options=None, tokenizer_data=None,
          skip: tuple[str, ...] = ()):
    import comfy.sd
    import comfy.supported_models_base

    key = (key, seed)
    if cache and key in _CLIP_CACHE:
        return _CLIP_CACHE[key]
    target = comfy.supported_models_base.ClipTarget(tokenizer, te_class)
    options = dict(SMALL_TE_OPTIONS)
    options.update(model_options or {})
    clip = comfy.sd.CLIP(target=target, model_options=options, tokenizer_data=tokenizer_data or {})
    randomize_(clip.cond_stage_model, seed, skip)
    if cache:
        _CLIP_CACHE[key] = clip
    return clip


def clip_sd3(
    clip_l: bool = True,
    clip_g: bool = True,
    t5: bool = True,
    seed: int = SEED,
    t5_attention_mask: bool = False,
    cache: bool = True,
):
    """SD3 text encoder (``sd3_clip.SD3ClipModel`` + ``SD3Tokenizer``): cond
    [1, 77 + T5 tokens (>= 77), 4096], pooled [1, 2048] (L 768 ++ G 1280)."""
    import comfy.text_encoders.sd3_clip as sd3_clip

    te = sd3_clip.sd3_clip(clip_l=clip_l, clip_g=clip_g, t5=t5, t5_attention_mask=t5_attention_mask)
    return _clip(("sd3", clip_l, clip_g, t5, t5_attention_mask), sd3_clip.SD3Tokenizer, te, seed, cache)


def clip_flux(seed: int = SEED, cache: bool = True):
    """Flux text encoder (``flux.FluxClipModel`` + ``FluxTokenizer``): cond
    [1, 256, 4096] (T5, padded to at least 256 tokens), pooled [1, 768] (CLIP-L)."""
    import comfy.text_encoders.flux as flux_te

    return _clip(("flux",), flux_te.FluxTokenizer, flux_te.flux_clip(), seed, cache)


def clip_sd15(seed: int = SEED, cache: bool = True):
    """SD1.5 text encoder (``sd1_clip.SD1ClipModel`` + ``SD1Tokenizer``): cond
    [1, 77, 768], pooled [1, 768]."""
    import comfy.sd1_clip

    return _clip(("sd15",), comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel, seed, cache)


def clip_sdxl(seed: int = SEED, cache: bool = True):
    """SDXL text encoder (``sdxl_clip.SDXLClipModel`` + ``SDXLTokenizer``): cond
    [1, 77, 2048] (L 768 ++ G 1280), pooled [1, 1280] (G)."""
    import comfy.sdxl_clip

    return _clip(("sdxl",), comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel, seed, cache)


def clip_l_full_file(path, seed: int = SEED, dtype=torch.float16) -> Path:
    """Write a full-size CLIP-L (ComfyUI's ``sd1_clip_config.json``, random
    weights) with the keys stock ``CLIPLoader`` reads (``text_model.*``)."""
    import comfy.ops
    import comfy.sd1_clip

    te = comfy.sd1_clip.SDClipModel(dtype=dtype, model_options={"custom_operations": comfy.ops.manual_cast})
    randomize_(te.transformer, seed)
    return _save(te.transformer, Path(path))


def write_models(models_dir, seed: int = SEED) -> dict:
    """Populate a ComfyUI ``models/`` folder for a live server:
    ``diffusion_models/tiny_sd3.safetensors`` (UNETLoader) and
    ``text_encoders/tiny_clip_l.safetensors`` (CLIPLoader, type sd3 or
    stable_diffusion). Returns {name: path}."""
    models_dir = Path(models_dir)
    net = _sd3_net(sd3_config(), seed)
    out = {
        "tiny_sd3.safetensors": _save(net, models_dir / "diffusion_models" / "tiny_sd3.safetensors"),
        "tiny_clip_l.safetensors": clip_l_full_file(
            models_dir / "text_encoders" / "tiny_clip_l.safetensors", seed
        ),
    }
    return out


# --------------------------------------------------------------------------- real-size model (GPU check)
# For tools/gpu_check.sh and benchmarks/sampling_bench.py --models sd35m; independent of the tiny
# models above (it shares only sd3_config).


@torch.no_grad()
def sd35_medium_like(depth: int = 24, device="cuda", dtype=torch.bfloat16, seed: int = SEED):
    """An SD3.5-medium-shaped MMDiT with random weights, as a ComfyUI ModelPatcher: hidden 64*depth
    (1536 at the real depth 24), ``depth`` heads of 64, self-attention in the x blocks 0..12,
    pos_embed_max_size 384, RMS qk-norm, context 4096, adm 2048. Built on ``device`` in ``dtype``
    (filled there, quickly, with ``randomize_``'s distributions), then handed to ComfyUI's loader
    ``comfy.sd.load_diffusion_model_state_dict`` as a state dict (no file: 4.5 GB in bf16 at depth
    24). Smaller depths keep the layout for quick runs."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops
    import comfy.sd

    side = 384
    cfg = sd3_config(depth, x_block_self_attn_layers=list(range(min(13, depth))))
    cfg.update(pos_embed_max_size=side, num_patches=side * side)
    net = mmdit.MMDiT(**cfg, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    g = torch.Generator(device=device).manual_seed(seed)
    for name, p in net.state_dict(keep_vars=True).items():
        if not p.is_floating_point() or p.ndim == 0 or name == "pos_embed":
            continue
        if p.ndim == 1 and name.endswith(("weight", "scale")):
            p.fill_(1.0)
            continue
        std = 0.02 if p.ndim == 1 else 1.0 / math.sqrt(math.prod(p.shape[1:]))
        p.uniform_(-std * math.sqrt(3.0), std * math.sqrt(3.0), generator=g)
    table = mmdit.get_2d_sincos_pos_embed(net.pos_embed.shape[-1], side)
    net.pos_embed.copy_(torch.from_numpy(table).reshape(net.pos_embed.shape))
    sd = net.state_dict()
    del net
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})
    if model is None:
        raise RuntimeError("ComfyUI's detection did not recognise the SD3.5-medium-like state dict")
    return model


# --------------------------------------------------------------------------- DiT families of Step 13
# Flux 2, Qwen-Image, Z-Image / Lumina 2 (NextDiT), Chroma, Wan 2.1/2.2 and their text encoders. The
# networks are ComfyUI's own classes built from the config ComfyUI's detection reads back from the
# saved file, with the sizes detection hard-codes for the full models (heads, rope axes, ...) set
# small, then matched to their ``supported_models`` class and wrapped by ``_wrap``.


def _detected(net: torch.nn.Module, tmp_dir, name: str, **small) -> tuple[dict, dict, Path]:
    """Save ``net``, read the file back and detect it as ComfyUI does; ``small`` overrides the sizes
    detection hard-codes for the full-size model."""
    path = _save(net, Path(tmp_dir) / f"{name}.safetensors")
    sd = _load_file(path)
    detected = _detect(sd)
    detected.update(small)
    return detected, sd, path


def _known(cfg: dict, params) -> dict:
    """``cfg`` less the keys an older ComfyUI's model class (``params``: a dataclass or a function) does not
    take (0.3.64's ChromaParams has no ``txt_ids_dims``, its NextDiT no ``rope_theta``, ...)."""
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(params):
        known = {f.name for f in dataclasses.fields(params)}
    else:
        sig = inspect.signature(params)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return dict(cfg)
        known = set(sig.parameters)
    return {k: v for k, v in cfg.items() if k in known or k == "image_model"}


def flux2_config(hidden_size: int = 64, num_heads: int = 2, depth: int = 1, depth_single_blocks: int = 1,
                 context_in_dim: int = 192) -> dict:
    """Flux 2 kwargs as ComfyUI's detection gives them (``image_model`` flux2: global modulation, SiLU
    MLP, no biases, 4 rope axes, patch 1 on the 128-channel latent), small."""
    head = hidden_size // num_heads
    return {
        "image_model": "flux2", "in_channels": 128, "out_channels": 128, "patch_size": 1,
        "vec_in_dim": None, "context_in_dim": context_in_dim, "hidden_size": hidden_size, "mlp_ratio": 3.0,
        "num_heads": num_heads, "depth": depth, "depth_single_blocks": depth_single_blocks,
        "axes_dim": [head // 4] * 4, "theta": 2000, "qkv_bias": False, "guidance_embed": True,
        "txt_ids_dims": [3], "global_modulation": True, "mlp_silu_act": True, "ops_bias": False,
        "default_ref_method": "index", "ref_index_scale": 10.0, "yak_mlp": False, "txt_norm": False,
    }


def flux2(tmp_dir, seed: int = SEED, name: str = "tiny_flux2", **kw) -> TinyModel:
    """Tiny Flux 2 (``supported_models.Flux2``, ``model_base.Flux2``): hidden 64, 2 heads, 1 double +
    1 single block, text context 192 = 3 x the tiny Mistral's 64 (ComfyUI stacks 3 of its layers)."""
    import comfy.model_detection
    import comfy.supported_models

    cfg = flux2_config(**kw)
    net = _build_net(comfy.supported_models.Flux2(cfg), seed)
    detected, sd, path = _detected(net, tmp_dir, name, num_heads=cfg["num_heads"], axes_dim=cfg["axes_dim"])
    model_config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if not isinstance(model_config, comfy.supported_models.Flux2):
        raise RuntimeError(f"ComfyUI did not match the tiny Flux 2 config {detected} to Flux2")
    return TinyModel(_wrap(model_config, sd), path)


def chroma_config(hidden_size: int = 64, num_heads: int = 2, depth: int = 1, depth_single_blocks: int = 1) -> dict:
    head = hidden_size // num_heads
    t = max(2, head // 8 // 2 * 2)
    r = (head - t) // 2 // 2 * 2
    return {
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": 4096,
        "hidden_size": hidden_size, "mlp_ratio": 4.0, "num_heads": num_heads, "depth": depth,
        "depth_single_blocks": depth_single_blocks, "axes_dim": [t, r, head - t - r], "theta": 10000,
        "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": hidden_size, "hidden_dim": 32,
        "n_layers": 1, "txt_ids_dims": [], "vec_in_dim": None,
    }


def chroma(tmp_dir, seed: int = SEED, name: str = "tiny_chroma") -> TinyModel:
    """Tiny Chroma (Flux-like, no vector input: modulations from its distilled-guidance approximator),
    T5 context 4096; ``supported_models.Chroma``."""
    import comfy.ldm.chroma.model as chroma_model
    import comfy.model_detection
    import comfy.supported_models

    cfg = _known(chroma_config(), chroma_model.ChromaParams)
    net = _build_net(comfy.supported_models.Chroma(cfg), seed)
    small = {k: cfg[k] for k in ("num_heads", "axes_dim", "out_dim", "hidden_dim", "n_layers", "hidden_size")}
    detected, sd, path = _detected(net, tmp_dir, name, **small)
    model_config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if not isinstance(model_config, comfy.supported_models.Chroma):
        raise RuntimeError(f"ComfyUI did not match the tiny Chroma config {detected} to Chroma")
    return TinyModel(_wrap(model_config, sd), path)


def qwen_image_config(num_layers: int = 2, heads: int = 2, head_dim: int = 32, joint_attention_dim: int = 64) -> dict:
    return {
        "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
        "num_layers": num_layers, "attention_head_dim": head_dim, "num_attention_heads": heads,
        "joint_attention_dim": joint_attention_dim, "axes_dims_rope": (head_dim // 4, 3 * head_dim // 8,
                                                                     3 * head_dim // 8),
    }


def qwen_image(tmp_dir, seed: int = SEED, name: str = "tiny_qwen_image", **kw) -> TinyModel:
    """Tiny Qwen-Image (``supported_models.QwenImage``): 2 joint blocks of 2 heads x 32, text context 64
    (the tiny Qwen2.5-VL's hidden size); detected by ComfyUI, whose detection keeps the full model's
    heads, head size and context width, so those are set small on the detected config."""
    import comfy.model_detection
    import comfy.supported_models

    cfg = qwen_image_config(**kw)
    net = _build_net(comfy.supported_models.QwenImage(cfg), seed)
    small = {k: cfg[k] for k in ("attention_head_dim", "num_attention_heads", "joint_attention_dim",
                                 "axes_dims_rope")}
    detected, sd, path = _detected(net, tmp_dir, name, **small)
    model_config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if not isinstance(model_config, comfy.supported_models.QwenImage):
        raise RuntimeError(f"ComfyUI did not match the tiny Qwen-Image config {detected} to QwenImage")
    return TinyModel(_wrap(model_config, sd), path)


def nextdit_config(z_image: bool = True, dim: int = 64, n_heads: int = 2, n_layers: int = 2,
                   cap_feat_dim: int = 64) -> dict:
    head = dim // n_heads
    t = head // 4 // 2 * 2
    r = (head - t) // 2 // 2 * 2
    cfg = {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": dim, "cap_feat_dim": cap_feat_dim,
        "n_layers": n_layers, "qk_norm": True, "n_heads": n_heads, "n_kv_heads": n_heads,
        "axes_dims": [t, r, head - t - r], "axes_lens": [1536, 512, 512], "n_refiner_layers": 1,
    }
    if z_image:
        cfg.update(rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0,
                   pad_tokens_multiple=32)
    else:
        cfg.update(rope_theta=10000.0, ffn_dim_multiplier=4.0)
    return cfg


def z_image(tmp_dir, seed: int = SEED, name: str = "tiny_z_image", lumina2: bool = False) -> TinyModel:
    """Tiny Z-Image (NextDiT with Z-Image's modulation and pad tokens to a multiple of 32;
    ``supported_models.ZImage``; dim 256, 4 heads), or with ``lumina2=True`` a tiny Lumina 2
    (``supported_models.Lumina2``; dim 64, 2 heads): 2 layers, 1 context and 1 noise refiner layer, text
    context 64. Detection sizes
    the full models by their width (2304 / 3840), so the small config is set on the detected one and
    wrapped with the family's class."""
    import comfy.ldm.lumina.model as lumina_model
    import comfy.supported_models

    # Z-Image's modulation takes the timestep embedding at width 256 (min(dim, 256)): dim 256 is its smallest
    cfg = nextdit_config(z_image=True, dim=256, n_heads=4) if not lumina2 else nextdit_config(z_image=False)
    cfg = _known(cfg, lumina_model.NextDiT.__init__)
    cls = comfy.supported_models.Lumina2 if lumina2 else comfy.supported_models.ZImage
    net = _build_net(cls(cfg), seed)
    small = {k: v for k, v in cfg.items() if k not in ("image_model",)}
    detected, sd, path = _detected(net, tmp_dir, name, **small)
    return TinyModel(_wrap(cls(detected), sd), path)


def wan_config(dim: int = 64, num_layers: int = 2, text_dim: int = 4096, out_dim: int = 16, in_dim: int = 16) -> dict:
    return {
        "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 512, "in_dim": in_dim,
        "dim": dim, "ffn_dim": 2 * dim, "freq_dim": 256, "text_dim": text_dim, "out_dim": out_dim, "num_heads": 2,
        "num_layers": num_layers, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
    }


def wan(tmp_dir, seed: int = SEED, name: str = "tiny_wan", wan22_5b: bool = False, text_dim: int = 64) -> TinyModel:
    """Tiny Wan 2.1 text-to-video (``supported_models.WAN21_T2V``; 16-channel latent) or, with
    ``wan22_5b``, a Wan 2.2 TI2V-5B-like one (``WAN22_T2V``: 48-channel latent): dim 64, 2 heads (detection
    counts heads as dim / 128, and WanModel's default text width is umT5-XXL's 4096), 2 blocks, umT5
    context ``text_dim`` (the tiny umT5's 64)."""
    import comfy.model_detection
    import comfy.supported_models

    ch = 48 if wan22_5b else 16
    cfg = wan_config(out_dim=ch, in_dim=ch, text_dim=text_dim)
    cls = comfy.supported_models.WAN22_T2V if wan22_5b else comfy.supported_models.WAN21_T2V
    net = _build_net(cls(cfg), seed)
    detected, sd, path = _detected(net, tmp_dir, name, num_heads=cfg["num_heads"], text_dim=text_dim)
    model_config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if type(model_config) is not cls:
        raise RuntimeError(f"ComfyUI matched {type(model_config).__name__} for the tiny Wan config {detected}")
    return TinyModel(_wrap(model_config, sd), path)


# LLM and umT5 text encoders of those families: ComfyUI's tokenizers and encoder classes, small configs
# through the official per-encoder override ``model_options["<name>_model_config"]``.
QWEN25_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1}
QWEN3_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
               "num_key_value_heads": 1}
# ComfyUI's Flux 2 encoder stacks the hidden states before layers 10 and 20 and after layer 30: 30 layers
MISTRAL_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 30, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "final_norm": False}
UMT5_SMALL = {"num_layers": 1, "num_heads": 2, "d_kv": 32, "d_ff": 64, "d_model": 64}
GEMMA2_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2,
                "num_key_value_heads": 1}


def _comfy_dir() -> Path:
    import comfy.sd

    return Path(comfy.sd.__file__).resolve().parent


def spiece_model_bytes() -> bytes:
    """A real sentencepiece model bundled with ComfyUI (Pile-T5's, 32k pieces) for the families whose
    sentencepiece model comes inside their text-encoder file (Wan's umT5, Lumina 2's Gemma 2): ComfyUI's
    own ``SPieceTokenizer`` reads it from ``tokenizer_data["spiece_model"]`` as it reads theirs."""
    return (_comfy_dir() / "text_encoders" / "t5_pile_tokenizer" / "tokenizer.model").read_bytes()


# Mistral's tekken special tokens (ids 0-19 of Mistral Small 3.x; ComfyUI pads with id 11)
_TEKKEN_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[TOOL_CONTENT]"]
_TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                   r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
                   r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the pieces of byte-level BPE vocabularies), as
    transformers has it (never the pack's own copy: the test's vocabulary must not come from the code under
    test)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def tekken_json(n_merged: int = 6000) -> bytes:
    """A tekken.json (Mistral's byte-level BPE file, what ComfyUI reads from a Flux 2 text encoder's
    ``tekken_model``): 1000 special tokens as Mistral's, the 256 bytes, then ``n_merged`` multi-byte
    pieces taken in merge order from ComfyUI's bundled Qwen 2.5 BPE (so prompts split into several
    pieces per word as with the real vocabulary)."""
    import base64
    import json

    folder = _comfy_dir() / "text_encoders" / "qwen25_tokenizer"
    decode = {c: b for b, c in _gpt2_bytes_to_unicode().items()}
    ranks: list[bytes] = [bytes([i]) for i in range(256)]
    seen = set(ranks)
    for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]:
        if len(ranks) >= 256 + n_merged:
            break
        a, b = line.split(" ")
        tok = bytes(decode[c] for c in a + b)
        if tok not in seen:  # a and b are earlier merges (or bytes): already in the list
            seen.add(tok)
            ranks.append(tok)
    specials = [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(_TEKKEN_SPECIALS)]
    doc = {
        "config": {"pattern": _TEKKEN_PATTERN, "num_vocab_tokens": len(ranks) + 1000,
                   "default_vocab_size": len(ranks) + 1000, "default_num_special_tokens": 1000,
                   "version": "v7"},
        "vocab": [{"rank": r, "token_bytes": base64.b64encode(t).decode(), "token_str": None}
                  for r, t in enumerate(ranks)],
        "special_tokens": specials,
    }
    return json.dumps(doc).encode()


def mistral3_test_tokenizer_class():
    """ComfyUI's ``Mistral3Tokenizer`` with its tokenizer built through transformers 5's converter.

    ComfyUI 0.8.0 converts the tekken file with ``MistralConverter(vocab=..., additional_special_tokens=...)``,
    the transformers 4 signature; transformers 5 (this environment) takes a file path, so ComfyUI cannot
    build Flux 2's tokenizer here. This subclass passes the same file through the new signature and
    keeps every other argument of ComfyUI's class (start token, no end token, left padding with id 11)."""
    import tempfile

    import comfy.sd1_clip
    import comfy.text_encoders.flux as flux_te
    from transformers.integrations.mistral import MistralConverter

    class Mistral3TestTokenizer(flux_te.Mistral3Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            tokenizer_data = tokenizer_data or {}
            self.tekken_data = tokenizer_data.get("tekken_model", None)
            data = self.tekken_data
            if torch.is_tensor(data):
                data = data.numpy().tobytes()
            with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
                f.write(data)
            converted = MistralConverter(vocab_file=f.name).converted()
            Path(f.name).unlink()
            comfy.sd1_clip.SDTokenizer.__init__(
                self, "", pad_with_end=False, embedding_size=5120, embedding_key="mistral3_24b",
                tokenizer_class=flux_te.MistralTokenizerClass, has_end_token=False, pad_to_max_length=False,
                pad_token=11, max_length=99999999, min_length=1, pad_left=True,
                tokenizer_args={"tokenizer_object": converted, "legacy": False, "add_bos_token": True,
                                "bos_token": "<s>"},  # transformers 4's LlamaTokenizerFast defaults
                tokenizer_data=tokenizer_data)

    return Mistral3TestTokenizer


def clip_flux2(seed: int = SEED, cache: bool = True):
    """Flux 2 text encoder (``flux.Flux2TEModel``: a 30-layer tiny Mistral 3, hidden 64, whose layers
    10, 20 and 30 ComfyUI stacks into a [1, L, 192] context) with ``Flux2Tokenizer`` (its system prompt
    template) on a tekken vocabulary (``tekken_json``, ``mistral3_test_tokenizer_class``)."""
    import comfy.text_encoders.flux as flux_te

    data = {"tekken_model": tekken_json(), "mistral3_24b_tokenizer_class": mistral3_test_tokenizer_class()}
    return _clip(("flux2",), flux_te.Flux2Tokenizer, flux_te.flux2_te(), seed, cache,
                 {"mistral3_24b_model_config": MISTRAL_SMALL}, tokenizer_data=data)


def clip_qwen_image(seed: int = SEED, cache: bool = True):
    """Qwen-Image text encoder (``qwen_image.QwenImageTEModel``: a tiny Qwen2.5-VL, hidden 64, 2 layers;
    its vision tower is built by ComfyUI at full size but never filled or run for text) with
    ``QwenImageTokenizer`` (ComfyUI's bundled Qwen 2.5 BPE, the system-prompt template whose prefix the
    encoder drops)."""
    import comfy.text_encoders.qwen_image as qi

    return _clip(("qwen_image",), qi.QwenImageTokenizer, qi.te(), seed, cache,
                 {"qwen25_7b_model_config": QWEN25_SMALL}, skip=("visual.",))


def clip_z_image(seed: int = SEED, cache: bool = True):
    """Z-Image text encoder (``z_image.ZImageTEModel``: a tiny Qwen3, hidden 64, 3 layers, the
    second-to-last layer's states) with ``ZImageTokenizer`` (bundled Qwen BPE, chat template kept)."""
    import comfy.text_encoders.z_image as zi

    return _clip(("z_image",), zi.ZImageTokenizer, zi.te(), seed, cache, {"qwen3_4b_model_config": QWEN3_SMALL})


def clip_chroma(seed: int = SEED, cache: bool = True):
    """Chroma text encoder (``pixart_t5.PixArtT5XXL``, T5 at width 4096, 1 layer, unpadded) with
    ``PixArtTokenizer``."""
    import comfy.text_encoders.pixart_t5 as pixart

    return _clip(("chroma",), pixart.PixArtTokenizer, pixart.pixart_te(), seed, cache)


def clip_wan(seed: int = SEED, cache: bool = True):
    """Wan text encoder (``wan.WanT5Model``: umT5, 1 layer, width 64) with ``WanT5Tokenizer`` (padded to 512
    tokens) on a real sentencepiece model (``spiece_model_bytes``)."""
    import comfy.text_encoders.wan as wan_te

    return _clip(("wan",), wan_te.WanT5Tokenizer, wan_te.te(), seed, cache, {"umt5xxl_model_config": UMT5_SMALL},
                 tokenizer_data={"spiece_model": spiece_model_bytes()})


def clip_lumina2(seed: int = SEED, cache: bool = True):
    """Lumina 2 text encoder (``lumina2.LuminaModel``: a tiny Gemma 2, hidden 64, 3 layers) with
    ``LuminaTokenizer`` on a real sentencepiece model (``spiece_model_bytes``)."""
    import comfy.text_encoders.lumina2 as lumina

    return _clip(("lumina2",), lumina.LuminaTokenizer, lumina.te(), seed, cache,
                 {"gemma2_2b_model_config": GEMMA2_SMALL}, tokenizer_data={"spiece_model": spiece_model_bytes()})


def lumina2(tmp_dir, seed: int = SEED, name: str = "tiny_lumina2") -> TinyModel:
    """Tiny Lumina 2 (``z_image(lumina2=True)``)."""
    return z_image(tmp_dir, seed, name, lumina2=True)
