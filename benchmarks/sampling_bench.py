"""Sampling benchmark: an SD3-architecture model through ComfyUI's KSampler,
unpatched vs EnfoquePatchModel capturing all tokens, 8 words, reweighting,
capturing all tokens plus 4 concepts (EnfoqueConcepts: concept maps), and capturing
all tokens with refined maps (refine self-attention), and two regions (Enfoque Region, capture off)
beside the patched model without them.

    .venv/bin/python benchmarks/sampling_bench.py                 # depth 8, 512 px (1024 image tokens), 20 steps
    .venv/bin/python benchmarks/sampling_bench.py --steps 4 --depth 4 --rounds 1   # quick look
    .venv/bin/python benchmarks/sampling_bench.py --backend subquad   # ComfyUI's CPU default: chunked-route users
    .venv/bin/python benchmarks/sampling_bench.py --variants foreign  # another pack's override (Sage stand-in)
    .venv/bin/python benchmarks/sampling_bench.py --device cuda --models sd35m --size 1024 --steps 4 --in-process

Each configuration runs in its own process (fresh peak memory), in rounds that
alternate the configurations (rotated, so none always runs first); the time is
the best round. ``--in-process`` runs the same rounds in one process (one start-up,
the model built once; peak memory reset before each configuration).

Attention backends (``--backend``):
- ``pytorch`` (default): ComfyUI with ``--use-pytorch-cross-attention``. SDPA is
  ComfyUI's default backend on GPUs, and the capture calls the kernel SDPA picks
  through its log-sum-exp-returning op (the fused route).
- ``subquad``: ``--use-quad-cross-attention``, ComfyUI's sub-quadratic attention,
  its default on the CPU; ``default`` leaves ComfyUI's own choice (on this CPU
  machine: sub-quadratic). The output comes from that backend, so the maps take
  the route of foreign outputs: the normaliser from one fused kernel call over the
  captured rows (or, where no fused kernel gives one, the exact chunked route).

Variants (``--variants``, any of them, each with its own unpatched baseline):
- ``sdpa``: no other override.
- ``foreign``: another pack's ``optimized_attention_override`` installed first (a
  stand-in for Sage or xformers that calls through to the backend): Enfoque calls
  through it, as it must, and takes the route of foreign outputs.
- ``subquad``: an override that computes every call with ComfyUI's sub-quadratic
  attention: ComfyUI's CPU default, in the same process as the others.

Models (``--models``): ``tiny`` is ``tests/tiny_models.sd3`` at ``--depth`` (hidden
64*depth, depth heads; fp32, loaded from a file by ComfyUI's loader); ``sd35m`` is
``tiny_models.sd35_medium_like`` (SD3.5-medium-shaped, depth 24 unless --depth is
given, bf16 on CUDA), loaded from its state dict. On CUDA the diffusion model runs
in bf16 (``--bf16-unet``). Peak memory: VmHWM on the CPU, the CUDA allocator's peak
on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["unpatched", "capture_all", "capture_8_words", "reweight_bias", "reweight_scale", "concepts_4",
           "capture_all_refined", "capture_8_words_refined", "regions_2", "patched_no_region"]
BACKEND_FLAGS = {
    "pytorch": ["--use-pytorch-cross-attention"],
    "default": [],
    "subquad": ["--use-quad-cross-attention"],
}


VARIANTS = ["sdpa", "subquad", "foreign"]


class ForeignOverride:
    """Another pack's ``optimized_attention_override`` installed before Enfoque's (Sage, xformers...):
    it computes every attention call with ``kernel`` (None: the backend ComfyUI chose, as a pack
    that only wraps it would). Enfoque calls through it, so its output comes from here."""

    def __init__(self, kernel=None) -> None:
        self.kernel = kernel

    def __call__(self, func, *args, **kwargs):
        return (self.kernel or func)(*args, **kwargs)


_HOST: list = []


def load_comfy(device: str, backend: str, work: Path):
    if _HOST:
        return _HOST[0]
    sys.path.insert(0, str(ROOT / "tests"))
    import host

    device_flags = ["--cpu"] if device == "cpu" else ["--bf16-unet"]
    _HOST.append(host.in_process(work, (*device_flags, *BACKEND_FLAGS[backend]), "sampling_bench"))
    return _HOST[0]


class Session:
    """One process: ComfyUI, the model, the encoded prompts; runs configurations on it."""

    def __init__(self, args, model: str) -> None:
        self.args, self.model_name = args, model
        work = Path(tempfile.mkdtemp(prefix="enfoque-bench-"))
        self.h = h = load_comfy(args.device, args.backend, work)
        import tiny_models
        import torch

        self.torch = torch
        self.tokens = h.submodule("attention.layout")
        if model == "sd35m":
            dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
            self.model = tiny_models.sd35_medium_like(depth=args.depth or 24, device=args.device, dtype=dtype)
        else:
            self.model = tiny_models.sd3(work, depth=args.depth or 8, name="bench_sd3").model
        clip = tiny_models.clip_sd3()
        self.pos = h.run("CLIPTextEncode", clip=clip, text="a red cat sitting on a blue chair in a sunny garden")[0]
        self.neg = h.run("CLIPTextEncode", clip=clip, text="")[0]
        self.latent = h.run("EmptySD3LatentImage", width=args.size, height=args.size, batch_size=1)[0]
        self.concepts = h.run("EnfoqueConcepts", clip=clip, concepts="cat, chair, garden, background")[0]

    def model_for(self, variant: str):
        if variant == "sdpa":
            return self.model
        import comfy.ldm.modules.attention as comfy_attention

        kernel = comfy_attention.attention_sub_quad if variant == "subquad" else None
        m = self.model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = ForeignOverride(kernel)
        return m

    def run(self, config: str, variant: str) -> dict:
        h, torch, tokens, args = self.h, self.torch, self.tokens, self.args
        model = self.model_for(variant)
        n = self.pos[0][0].shape[1]
        layout = tokens.TokenLayout(words=tuple(f"w{i}" for i in range(n)), spans=tuple((i,) for i in range(n)),
                                    context_length=n)
        if config.startswith("reweight"):
            layout = layout.with_weights({1: 1.5, 2: 1.5, 5: 0.5})
        pos = [[t, {**d, tokens.LAYOUT_KEY: layout}] for t, d in self.pos]
        if config == "regions_2":  # two regions (Enfoque Region): w1..w3 on the left half, w4..w6 on the right
            left = torch.zeros(1, args.size, args.size)
            left[..., : args.size // 2] = 1.0
            for words, mask in (("w1, w2, w3", left), ("w4, w5, w6", 1.0 - left)):
                pos = h.run("EnfoqueRegion", conditioning=pos, mask=mask, words=words, strength=1.0,
                            start_percent=0.0, end_percent=1.0)[0]
        if config != "unpatched":
            words = ",".join(f"w{i}" for i in range(1, 9)) if config.startswith("capture_8_words") else ""
            mode = {"reweight_bias": "bias", "reweight_scale": "scale"}.get(config, "bias")
            extra = {"concepts": self.concepts} if config == "concepts_4" else {}
            if config.endswith("_refined"):  # refined maps as well (Step 16)
                extra["refine"] = "self-attention"
            capture = not config.startswith(("reweight", "regions", "patched"))
            model = h.run("EnfoquePatchModel", model=model, capture=capture, reweight=mode,
                          blocks="all", start_percent=0.0, end_percent=1.0, capture_words=words, **extra)[0]

        def sample(k: int):
            return h.run("KSampler", model=model, seed=1, steps=k, cfg=4.0, sampler_name="euler", scheduler="simple",
                         positive=pos, negative=self.neg, latent_image=self.latent, denoise=1.0)[0]

        sample(1)  # warm-up: kernels, thread pools, model load, the engine's first-call checks
        cuda = args.device == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here on
                f.write("5")
        t = time.perf_counter()
        with torch.inference_mode():
            out = sample(args.steps)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        if cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            with open("/proc/self/status") as f:
                peak = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))
        return {"model": self.model_name, "config": config, "variant": variant, "seconds": seconds, "peak": peak,
                "finite": bool(torch.isfinite(out["samples"]).all()),
                "backend": h.submodule("nodes.common.sdpa").comfy_attention.optimized_attention.__name__,
                "device_name": torch.cuda.get_device_name() if cuda else "cpu"}


def table(args, model: str, variant: str, configs: list[str], best: dict) -> list[str]:
    base = best[(model, variant, "unpatched")]
    tokens = (args.size // 16) ** 2
    depth = args.depth or (24 if model == "sd35m" else 8)
    memory = "CUDA allocator peak" if args.device == "cuda" else "peak RSS"
    how = {"sdpa": "", "subquad": " with every call through sub-quadratic attention (a foreign override)",
           "foreign": " + a foreign override calling through"}[variant]
    lines = [
        f"{'SD3.5-medium-like' if model == 'sd35m' else 'SD3-architecture'} depth {depth}, {tokens} image + "
        f"154 text tokens, {args.steps} steps, cfg batch 2, {args.device} ({base['device_name']}), attention "
        f"backend {base['backend']}{how}, {'one process, ' if args.in_process else ''}best of {args.rounds}",
        f"{'config':<20} {'seconds':>8} {'x unpatched':>12} {memory + ' MB':>24} {'+MB':>7}",
    ]
    for c in configs:
        r = best[(model, variant, c)]
        lines.append(f"{c:<20} {r['seconds']:8.2f} {r['seconds'] / base['seconds']:12.3f} {r['peak'] / 2**20:24.0f} "
                     f"{(r['peak'] - base['peak']) / 2**20:7.0f}{'' if r['finite'] else '  (non-finite output)'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", choices=["tiny", "sd35m"], default=["tiny"])
    ap.add_argument("--depth", type=int, default=0, help="tiny: 8 unless given; sd35m: 24 unless given")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (512 -> 1024 image tokens)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backend", choices=list(BACKEND_FLAGS), default="pytorch")
    ap.add_argument("--variants", nargs="*", choices=VARIANTS, default=["sdpa"],
                    help="sdpa: no other override; subquad: every call through ComfyUI's sub-quadratic attention "
                    "(its CPU default) by an override; foreign: an override calling through (Sage stand-in)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    ap.add_argument("--in-process", action="store_true",
                    help="all configurations in one process (one start-up; peaks reset per configuration)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for one configuration's process")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="sdpa", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(Session(args, args.model).run(args.child, args.variant)))
        return
    configs = args.configs if "unpatched" in args.configs else ["unpatched", *args.configs]
    best: dict[tuple[str, str, str], dict] = {}
    if args.in_process:
        for model in args.models:
            session = Session(args, model)
            for r in range(args.rounds):
                for variant in args.variants:
                    for c in configs[r % len(configs):] + configs[:r % len(configs)]:  # rotated: none always first
                        out = session.run(c, variant)
                        key = (model, variant, c)
                        if key not in best or out["seconds"] < best[key]["seconds"]:
                            best[key] = out
            del session
    else:
        passthrough = ["--depth", str(args.depth), "--steps", str(args.steps), "--size", str(args.size),
                       "--backend", args.backend, "--device", args.device]
        for r in range(args.rounds):
            for model in args.models:
                for variant in args.variants:
                    for c in configs[r % len(configs):] + configs[:r % len(configs)]:  # rotated: none always first
                        res = subprocess.run(
                            [sys.executable, __file__, "--child", c, "--variant", variant, "--model", model,
                             *passthrough], capture_output=True, text=True, env=dict(os.environ), timeout=args.timeout)
                        if res.returncode:
                            sys.exit(f"{model} {variant} {c} failed:\n{res.stderr[-3000:]}")
                        out = json.loads(res.stdout.strip().splitlines()[-1])
                        key = (model, variant, c)
                        if key not in best or out["seconds"] < best[key]["seconds"]:
                            best[key] = out
    for model in args.models:
        for variant in args.variants:
            print("\n".join(table(args, model, variant, configs, best)) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": [best[key] for key in best]}, indent=1))


if __name__ == "__main__":
    main()
