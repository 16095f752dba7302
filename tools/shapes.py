"""The "shapes" model: a tiny SD3-architecture model that knows a handful of words.

    python tools/shapes.py install DIR [--input INPUT]   # the three model files into a ComfyUI models/ folder
    python tools/shapes.py train         # reproduce the committed weights from the seed (~1 h, 2 CPU cores)

``install`` writes ``DIR/diffusion_models/enfoque_shapes_sd3.safetensors`` and
``DIR/vae/enfoque_shapes_vae.safetensors`` (copies of the committed files in
``models/``) and ``DIR/text_encoders/enfoque_shapes_clip_l.safetensors``
(generated from its seed, see ``tools/shapes_clip.py``); files already in place
with the right checksum are left alone, so a second run takes about a second.
``--input`` also writes ``enfoque_shapes_example.png`` (a held-out two-object
picture) into ComfyUI's input folder, for the "Shapes - explain an image" template.
Load them with the stock nodes: UNETLoader, CLIPLoader (type ``sd3``) and
VAELoader; sample with KSampler euler/simple, 20 steps, cfg 4, 128x128
(EmptySD3LatentImage). The vocabulary and caption grammar are in
``tools/shapes_data.py`` and the README.

``train`` needs ComfyUI (found as the tests find it: COMFYUI_PATH, then the
cache that ``make setup`` fills) because the model files are ComfyUI's own
classes (TAESD, MMDiT) and the captions are encoded by ComfyUI's stock CLIP
loader. It runs in three stages, each cached under ``out/shapes/``: the VAE,
the encoded dataset, the diffusion model; then writes ``models/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import shapes_clip  # noqa: E402
import shapes_data  # noqa: E402

log = logging.getLogger("shapes")

MODELS = ROOT / "models"
DIT_FILE = "enfoque_shapes_sd3.safetensors"
VAE_FILE = "enfoque_shapes_vae.safetensors"
CLIP_FILE = "enfoque_shapes_clip_l.safetensors"
CLIP_SHA256 = "f70d64a44cc61d8e9dcaf1d5f87a10379415186be8693e30f899de6cfed27616"
WORK = ROOT / "out" / "shapes"

SEED = 8
DEPTH = 3  # SD3 convention: hidden 64 * depth, depth heads of 64
LATENT_CHANNELS = 16
# held-out seeds for evaluation start here; training scenes use SEED-derived streams
EVAL_SEED = 10_000


# --------------------------------------------------------------------------- install


def _same(path: Path, want: str) -> bool:
    return path.is_file() and shapes_clip.sha256(path) == want


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def install(models_dir: Path) -> dict[str, Path]:
    """Write the three files into a ComfyUI ``models/`` folder; idempotent."""
    models_dir = Path(models_dir)
    out = {}
    for sub, name in (("diffusion_models", DIT_FILE), ("vae", VAE_FILE)):
        src = MODELS / name
        if not src.is_file():
            raise SystemExit(f"shapes: {src} is missing; run `python tools/shapes.py train` to make it")
        dest = models_dir / sub / name
        if not _same(dest, shapes_clip.sha256(src)):
            _copy_atomic(src, dest)
            log.info("wrote %s", dest)
        out[name] = dest
    out[CLIP_FILE] = install_clip(models_dir)
    return out


EXAMPLE_PICTURE = "enfoque_shapes_example.png"


def write_example(input_dir: Path) -> Path:
    """A held-out caption's picture, for EnfoqueImageMaps (its caption: the template's prompt)."""
    from PIL import Image

    scene = shapes_data.scene_for([("red", "circle"), ("blue", "square")],
                                  np.random.Generator(np.random.PCG64(EVAL_SEED)))
    img, _ = shapes_data.render(scene)
    dest = Path(input_dir) / EXAMPLE_PICTURE
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.png")
    Image.fromarray(img).save(tmp)
    tmp.replace(dest)
    return dest


def install_clip(models_dir: Path) -> Path:
    """Generate the CLIP-L into ``models_dir/text_encoders`` unless it is already there."""
    dest = Path(models_dir) / "text_encoders" / CLIP_FILE
    if not _same(dest, CLIP_SHA256):
        shapes_clip.write(dest)
        got = shapes_clip.sha256(dest)
        if got != CLIP_SHA256:
            dest.unlink()
            raise SystemExit(f"shapes: generated CLIP-L has checksum {got}, expected {CLIP_SHA256}")
        log.info("wrote %s", dest)
    return dest


# --------------------------------------------------------------------------- ComfyUI in-process


def bootstrap():
    """ComfyUI on sys.path with ``--cpu`` (the tests' harness does the same)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import host

    path = host.find_comfyui()
    if path is None:
        raise SystemExit(f"shapes: {host.NO_HOST_REASON}")
    host.bootstrap(path)
    return path


def _torch():
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch


def images_tensor(scenes, torch):
    """[B, 3, H, W] float in [0, 1] and the object-pixel masks [B, 1, H, W]."""
    imgs, objs = [], []
    for s in scenes:
        img, masks = shapes_data.render(s)
        imgs.append(img)
        objs.append(np.any(masks, axis=0))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.from_numpy(np.stack(objs))[:, None].float()
    return x, m


# --------------------------------------------------------------------------- VAE


def _init_taesd(vae, torch):
    """ComfyUI's disable_weight_init convs skip reset_parameters(): initialise explicitly.
    Kaiming-normal convs, zero biases, the last conv of each residual block x0.2."""
    import comfy.taesd.taesd as taesd

    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
        for m in vae.modules():
            if isinstance(m, taesd.Block):
                m.conv[-1].weight.mul_(0.2)


def train_vae(steps_crop: int = 700, steps_full: int = 420, n_images: int = 3000) -> Path:
    """TAESD with 16 latent channels on the shapes pictures (the SHAPES-NOTES recipe)."""
    torch = _torch()
    import comfy.taesd.taesd as taesd

    out = WORK / "vae_raw.safetensors"
    if out.is_file():
        return out
    vae = taesd.TAESD(latent_channels=LATENT_CHANNELS)
    _init_taesd(vae, torch)
    scenes = shapes_data.dataset(SEED + 1, n_images, shapes_data.training_captions() + shapes_data.held_out_captions())
    x_all, m_all = images_tensor(scenes, torch)
    params = list(vae.taesd_encoder.parameters()) + list(vae.taesd_decoder.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    total = steps_crop + steps_full
    gen = torch.Generator().manual_seed(SEED + 2)
    t0 = time.time()
    for step in range(total):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
        for group in opt.param_groups:
            group["lr"] = lr
        crop = step < steps_crop
        bs = 16 if crop else 8
        idx = torch.randint(0, len(x_all), (bs,), generator=gen)
        x, m = x_all[idx], m_all[idx]
        if crop:
            oy, ox = (int(v) for v in torch.randint(0, 64 // 8 + 1, (2,), generator=gen) * 8)
            x, m = x[:, :, oy : oy + 64, ox : ox + 64], m[:, :, oy : oy + 64, ox : ox + 64]
        rec = vae.taesd_decoder(vae.taesd_encoder(x))
        loss = ((rec - x) ** 2 * (1 + 4 * m)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == total - 1:
            log.info("vae step %d/%d loss %.5f lr %.2e (%.0f s)", step, total, loss.item(), lr, time.time() - t0)
    _save_vae(vae, out, 1.0, 0.0, torch)
    return out


def _save_vae(vae, path: Path, scale: float, shift: float, torch) -> None:
    import safetensors.torch

    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in vae.state_dict().items()
          if k.startswith(("taesd_encoder.", "taesd_decoder."))}
    sd["vae_scale"] = torch.tensor(scale, dtype=torch.float32)
    sd["vae_shift"] = torch.tensor(shift, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path))


def load_vae(path: Path):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def vae_report(vae, n: int = 64) -> dict:
    """PSNR and per-object colour error of reconstructions of fresh pictures, and the judge's verdict."""
    torch = _torch()
    scenes = shapes_data.dataset(EVAL_SEED + 7, n, shapes_data.training_captions() + shapes_data.held_out_captions())
    x, _ = images_tensor(scenes, torch)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x.permute(0, 2, 3, 1))).clamp(0, 1)
    img = (rec.numpy() * 255).round().astype(np.uint8)
    mse = float(((rec - x.permute(0, 2, 3, 1)) ** 2).mean())
    ok, worst = 0, 0.0
    for s, im in zip(scenes, img, strict=True):
        good, _ = shapes_data.judge(im, s.caption)
        ok += good
        _, masks = shapes_data.render(s)
        for o, mk in zip(s.objects, masks, strict=True):
            err = np.abs(im[mk].astype(float).mean(0) - np.array(shapes_data.COLOURS[o.colour])).max()
            worst = max(worst, float(err))
    return {"psnr_db": 10 * math.log10(1 / max(mse, 1e-12)), "judged_ok": ok / n, "worst_colour_err": worst}


# --------------------------------------------------------------------------- data for the diffusion model


def encode_captions(clip_path: Path, captions: list[str]):
    """Each distinct caption once through the stock CLIP loader (type sd3): {caption: [77, 768]}."""
    import comfy.sd

    torch = _torch()
    clip = comfy.sd.load_clip(ckpt_paths=[str(clip_path)], clip_type=comfy.sd.CLIPType.SD3)
    out = {}
    for c in captions:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(c), return_pooled=True)
        if float(pooled.abs().max()) != 0.0 or cond.shape[1:] != (77, 4096) or float(cond[0, :, 768:].abs().max()) != 0:
            raise RuntimeError("shapes: the CLIP-L encode is not the expected [77, 768 | zeros] with a zero pooled vector")
        out[c] = cond[0, :, :768].to(torch.float32).clone()
    return out


def encode_pictures(vae, scenes, chunk: int, then=lambda z: z):
    """VAE latents of the scenes' pictures, ``chunk`` at a time, float32."""
    torch = _torch()
    out = []
    for s in range(0, len(scenes), chunk):
        x, _ = images_tensor(scenes[s : s + chunk], torch)
        with torch.no_grad():
            out.append(then(vae.encode(x.permute(0, 2, 3, 1))).to(torch.float32))
        log.info("encoded %d/%d pictures", min(len(scenes), s + chunk), len(scenes))
    return torch.cat(out)


def build_dataset(vae_path: Path, clip_path: Path, n: int = 10000) -> Path:
    """Encode ``n`` training pictures with the VAE (model-space latents) and the captions."""
    torch = _torch()
    import comfy.latent_formats
    import safetensors.torch

    out = WORK / "dataset.safetensors"
    if out.is_file():
        return out
    fmt = comfy.latent_formats.SD3()
    scenes = shapes_data.dataset(SEED + 3, n)
    lat = encode_pictures(load_vae(vae_path), scenes, 256, fmt.process_in)
    captions = shapes_data.training_captions() + [""]
    enc = encode_captions(clip_path, captions)
    index = {c: i for i, c in enumerate(captions)}
    safetensors.torch.save_file({
        "latents": lat.contiguous(),
        "caption_index": torch.tensor([index[s.caption] for s in scenes], dtype=torch.int64),
        "captions": torch.stack([enc[c] for c in captions]).contiguous(),
    }, str(out), metadata={"captions": json.dumps(captions)})
    return out


def calibrate_vae(raw: Path, n: int = 2000) -> Path:
    """Store the latent scale/shift in the VAE file so SD3's latent format sees unit-std latents."""
    torch = _torch()
    import comfy.latent_formats
    import safetensors.torch

    out = WORK / "vae.safetensors"
    if out.is_file():
        return out
    z = encode_pictures(load_vae(raw), shapes_data.dataset(SEED + 4, n), 250)
    fmt = comfy.latent_formats.SD3()
    mu, sd = float(z.mean()), float(z.std())
    # encode = raw / scale + shift; process_in = (encode - shift_factor) * scale_factor = (raw - mu) / sd
    scale = fmt.scale_factor * sd
    shift = fmt.shift_factor - mu / scale
    state = safetensors.torch.load_file(str(raw))
    state["vae_scale"] = torch.tensor(scale, dtype=torch.float32)
    state["vae_shift"] = torch.tensor(shift, dtype=torch.float32)
    safetensors.torch.save_file(state, str(out))
    log.info("vae latent mean %.4f std %.4f -> vae_scale %.4f vae_shift %.4f", mu, sd, scale, shift)
    return out


# --------------------------------------------------------------------------- diffusion model


def dit_config() -> dict:
    hidden = 64 * DEPTH
    return {
        "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "patch_size": 2, "depth": DEPTH,
        "input_size": None, "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": hidden}},
        "num_patches": 1024, "pos_embed_max_size": 32, "qk_norm": "rms", "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": [],
    }


def build_dit(torch):
    """ComfyUI's SD3 MMDiT for ``dit_config()``, initialised DiT-style (adaLN-zero, sin-cos positions)."""
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.supported_models

    cfg = comfy.supported_models.SD3(dit_config())
    cfg.set_inference_dtype(torch.float32, None)
    net = cfg.get_model({}, "", device=torch.device("cpu")).diffusion_model
    g = torch.Generator().manual_seed(SEED + 5)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                fan_out, fan_in = p.shape[0], p[0].numel()
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, p in net.named_parameters():
            if name.startswith("t_embedder.") and p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            if "adaLN_modulation" in name or name.startswith("final_layer.linear"):
                p.zero_()
        side = dit_config()["pos_embed_max_size"]
        table = mmdit.get_2d_sincos_pos_embed(net.pos_embed.shape[-1], side)
        net.pos_embed.copy_(torch.from_numpy(table).reshape(net.pos_embed.shape))
    net.use_checkpoint = False
    return net


GRID = 8  # the MMDiT's patch grid at 128 px (latent 16, patch 2)


def cell_masks(scenes) -> np.ndarray:
    """Each object's share of each patch-grid cell, ``[scenes, 2, GRID, GRID]`` (the second object of a
    one-object scene is empty)."""
    out = np.zeros((len(scenes), 2, GRID, GRID), dtype=np.float32)
    cell = shapes_data.SIZE // GRID
    for i, scene in enumerate(scenes):
        for o, obj in enumerate(scene.objects):
            out[i, o] = shapes_data.object_mask(obj).reshape(GRID, cell, GRID, cell).mean((1, 3))
    return out


def word_positions(captions: list[str]) -> np.ndarray:
    """CLIP-L context positions of each caption's (colour, shape) words per object, ``[captions, 2, 2]``,
    -1 where there is no such object. Checked against ComfyUI's CLIP tokenizer: one token per word."""
    import comfy.sd1_clip

    tok = comfy.sd1_clip.SDTokenizer()
    out = np.full((len(captions), 2, 2), -1, dtype=np.int64)
    for c, caption in enumerate(captions):
        if not caption:
            continue
        ids = [t for t, _ in tok.tokenize_with_weights(caption)[0]]
        words = caption.split()
        if ids[len(words) + 1] != tok.end_token:
            raise RuntimeError(f"shapes: {caption!r} is not one CLIP token per word")
        for o, (ci, si) in enumerate(shapes_data.object_words(caption)):
            out[c, o] = (ci + 1, si + 1)  # +1: the start token
    return out


class AttentionTap:
    """Training-only attention override: SDPA for the output, and (when ``keep``) the probabilities of
    the image queries over all keys, mean over heads, for the text columns: ``[B, image, text]``."""

    def __init__(self, text: int) -> None:
        self.text, self.keep, self.probs = text, False, []

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        import comfy.ldm.modules.attention as attention

        out = attention.attention_pytorch(q, k, v, heads, *args, **kwargs)
        if self.keep and q.shape[1] > self.text:
            b, n, _ = q.shape
            qh = q.view(b, n, heads, -1).transpose(1, 2)[:, :, self.text :]
            kh = k.view(b, n, heads, -1).transpose(1, 2)
            p = (qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5).softmax(-1)
            self.probs.append(p[..., : self.text].mean(1))
        return out


def localisation_loss(probs: list, cells, words, sigma):
    """Cross-entropy of each object word's map (its attention over the image, normalised over the image)
    against the object's place (its cell shares, normalised), weighted by 1 - sigma: the model learns to
    look at an object's words from the object's own pixels."""
    torch = _torch()
    total, count = 0.0, 0
    b = torch.arange(cells.shape[0])
    for p in probs:  # [B, image, text]
        for o in range(2):
            target = cells[:, o].flatten(1)  # [B, image]
            mass = target.sum(1)
            for w in range(2):
                pos = words[:, o, w]
                ok = (pos >= 0) & (mass > 0)
                if not bool(ok.any()):
                    continue
                m = p[b, :, pos.clamp(min=0)]  # [B, image]
                m = m / m.sum(1, keepdim=True).clamp(min=1e-12)
                ce = -(target / mass.clamp(min=1e-12)[:, None] * (m + 1e-8).log()).sum(1)
                total = total + ((1 - sigma) * ce * ok).sum()
                count += int(ok.sum())
    return total / max(count, 1)


def train_dit(data_path: Path, steps: int = 8000, batch: int = 32, lr: float = 8e-4,
              ckpt_every: int = 1000, attn_weight: float = 0.0) -> Path:
    """Rectified flow (predict noise - x0), logit-normal sigmas, AdamW, EMA 0.999, 10 % caption dropout;
    with ``attn_weight`` > 0, plus that times `localisation_loss`."""
    torch = _torch()
    import safetensors.torch

    out = WORK / "dit_ema.safetensors"
    if out.is_file():
        return out
    data = safetensors.torch.load_file(str(data_path))
    lat, cap_idx, caps = data["latents"], data["caption_index"], data["captions"]
    with safetensors.safe_open(str(data_path), "pt") as f:
        captions = json.loads(f.metadata()["captions"])
    if attn_weight > 0:  # where each object and its words are, for the localisation loss
        cells = torch.from_numpy(cell_masks(shapes_data.dataset(SEED + 3, lat.shape[0])))
        words = torch.from_numpy(word_positions(captions))
    empty = caps.shape[0] - 1  # the last caption is ""
    ctx_all = torch.nn.functional.pad(caps, (0, 4096 - caps.shape[-1]))
    net = build_dit(torch)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(SEED + 6)
    tap = AttentionTap(caps.shape[1])
    to = {"optimized_attention_override": tap}
    y = torch.zeros(batch, 2048)
    warm = 300
    t0 = time.time()
    running = None
    for step in range(steps):
        cur = lr * min(1.0, (step + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = cur
        idx = torch.randint(0, lat.shape[0], (batch,), generator=gen)
        x0 = lat[idx]
        ci = cap_idx[idx].clone()
        ci[torch.rand(batch, generator=gen) < 0.1] = empty
        ctx = ctx_all[ci]
        sigma = torch.sigmoid(torch.randn(batch, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * noise
        tap.keep, tap.probs = attn_weight > 0, []
        pred = net(xt, sigma * 1000, context=ctx, y=y, transformer_options=to)
        loss = ((pred - (noise - x0)) ** 2).mean()
        if attn_weight > 0:
            loss = loss + attn_weight * localisation_loss(tap.probs, cells[idx], words[ci], sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("dit step %d/%d loss %.4f (avg %.4f) lr %.2e (%.0f s)", step, steps, loss.item(), running, cur,
                     time.time() - t0)
        if (step + 1) % ckpt_every == 0 and step + 1 < steps:
            _save_dit(ema, WORK / f"dit_ema_{step + 1:05d}.safetensors", torch)
    _save_dit(ema, out, torch)
    return out


def _save_dit(state: dict, path: Path, torch) -> None:
    import safetensors.torch

    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(sd, str(tmp), metadata={"enfoque": "shapes SD3 MMDiT"})
    tmp.replace(path)


def train(stage: str = "all", dit_steps: int = 8000, attn_weight: float = 0.0) -> None:
    bootstrap()
    torch = _torch()
    torch.set_num_threads(1)  # one thread: the same reductions on any machine, and room for other work
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    clip_path = WORK / CLIP_FILE
    if not _same(clip_path, CLIP_SHA256):
        shapes_clip.write(clip_path)
    raw = train_vae()
    vae_path = calibrate_vae(raw)
    log.info("vae: %s (%.0f s so far)", vae_report(load_vae(vae_path)), time.time() - t0)
    if stage == "vae":
        return
    data = build_dataset(vae_path, clip_path)
    log.info("dataset ready (%.0f s so far)", time.time() - t0)
    dit = train_dit(data, steps=dit_steps, attn_weight=attn_weight)
    MODELS.mkdir(exist_ok=True)
    _copy_atomic(dit, MODELS / DIT_FILE)
    _copy_atomic(vae_path, MODELS / VAE_FILE)
    log.info("train: done in %.0f s; wrote %s and %s", time.time() - t0, MODELS / DIT_FILE, MODELS / VAE_FILE)
    for name in (DIT_FILE, VAE_FILE):
        log.info("  %s sha256 %s", name, shapes_clip.sha256(MODELS / name))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_inst = sub.add_parser("install", help="write the model files into a ComfyUI models/ folder")
    p_inst.add_argument("dir", type=Path, help="ComfyUI's models/ folder")
    p_inst.add_argument("--input", type=Path, default=None, help="ComfyUI's input/ folder: also write an example "
                        "picture there")
    p_train = sub.add_parser("train", help="reproduce models/ from the seed")
    p_train.add_argument("--stage", choices=["vae", "all"], default="all")
    p_train.add_argument("--dit-steps", type=int, default=8000)
    p_train.add_argument("--attn-weight", type=float, default=0.0,
                         help="weight of a loss that teaches each object's words to attend to the object "
                         "(0, no such loss, made the committed model; its maps are the model's own)")
    args = ap.parse_args(argv)
    if args.cmd == "install":
        t = time.time()
        for name, path in install(args.dir).items():
            print(f"{name}: {path}")
        if args.input is not None:
            print(f"{EXAMPLE_PICTURE}: {write_example(args.input)}")
        print(f"shapes: installed in {time.time() - t:.1f} s")
        return 0
    train(args.stage, args.dit_steps, args.attn_weight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
