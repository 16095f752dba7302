"""The GPU check behind ``tools/gpu_check.sh``: one command, one report file under out/gpu/.

    tools/gpu_check.sh             # on a machine with an NVIDIA GPU: at most 8 minutes on one H100
    tools/gpu_check.sh --dry-run   # the same plan on the CPU at tiny sizes (CI runs it)

The plan, each step in its own process with a time limit inside one overall budget:

1. ``probe``: torch, the card, cuDNN, SDPA's priority order; for SD3-like bf16/fp16 shapes
   (with and without a weight mask) which kernel SDPA picks, and the route the engine settles on
   (``fused``: one call gives the stock output and the log-sum-exp; ``sdpa+lse``: two calls;
   ``chunked``: no usable log-sum-exp), with the output checked against stock SDPA.
2. ``cuda-tests``: ``tests/test_cuda.py``: fp16/bf16/fp32 x every backend torch offers
   (default, flash, efficient, cudnn, math): output ``torch.equal`` to stock SDPA, maps against
   float64 within the fp32 error bound; masks, odd lengths, weights; SD3.5 Large and Flux dev
   blocks at 1024x1024 with 333 and 512 text tokens.
3. ``engine-bench``: ``benchmarks/attention_bench.py`` on CUDA in bf16 and fp16, 1024 and 4096
   image tokens: stock vs capture vs reweight vs naive, and the foreign-output route.
4. ``sampling-bench``: ``benchmarks/sampling_bench.py`` in one process: a depth-8 SD3-architecture
   model in bf16 at 1024x1024 through ComfyUI's KSampler, unpatched vs capture vs reweight, for
   ComfyUI's SDPA backend, every call through sub-quadratic attention, and a foreign override.
5. ``real-size``: the same with an SD3.5-medium-shaped model (depth 24, random weights, bf16) at
   1024x1024 for a few steps.

Steps 4 and 5 need a ComfyUI checkout (``COMFYUI_PATH``, or ``.comfyui/`` in this repo, or what
``tests/host.py`` finds) and ComfyUI's Python requirements; without them they are reported as
skipped with the reason (not a failure: the dry run in CI may have no host). The exit status is
0 when every step that ran passed.

On a bare GPU machine that has only torch: copy the ComfyUI checkout to ``.comfyui/`` (keep it out
of git, ~17 MB) and install what ComfyUI imports that is missing. In-process here ComfyUI 0.8.0
imported, besides torch/torchvision/numpy/transformers/safetensors/aiohttp/scipy: torchsde (with
trampoline), av, pydantic (pydantic-core, annotated-types, typing-inspection), pydantic-settings,
python-dotenv, comfy-kitchen, kornia and spandrel; then run this script unchanged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60  # the whole check on one H100
TAIL = 6000  # characters of each step's output kept in the report


def plan(dry: bool, py: str) -> list[dict]:
    """Each step: name, command, time limit (s), extra environment, whether it needs ComfyUI."""
    dev = "cpu" if dry else "cuda"
    tiny = dry
    steps = [
        {"name": "probe", "cmd": [py, str(Path(__file__)), "--probe", "--device", dev], "limit": 120},
        {"name": "cuda-tests", "limit": 300,
         "cmd": [py, "-m", "pytest", "-q", "-rs", "--durations=8", "-p", "no:cacheprovider", "tests/test_cuda.py"],
         "env": {"ENFOQUE_GPU_CHECK_DEVICE": dev}},
        {"name": "engine-bench", "limit": 150,
         "cmd": [py, "benchmarks/attention_bench.py", "--device", dev, "--no-peak"] + (
             ["--cpu-dtype", "bf16", "--image-tokens", "64", "--repeats", "1"] if tiny else
             ["--cuda-dtypes", "bf16", "fp16", "--image-tokens", "1024", "4096", "--repeats", "20"])},
        {"name": "sampling-bench", "limit": 180, "comfy": True,
         "cmd": [py, "benchmarks/sampling_bench.py", "--device", dev, "--in-process", "--models", "tiny",
                 "--variants", "sdpa", "subquad", "foreign", "--backend", "pytorch"] + (
             ["--depth", "2", "--size", "64", "--steps", "1", "--rounds", "1"] if tiny else
             ["--depth", "8", "--size", "1024", "--steps", "8", "--rounds", "2"])},
        {"name": "real-size", "limit": 240, "comfy": True,
         "cmd": [py, "benchmarks/sampling_bench.py", "--device", dev, "--in-process", "--models", "sd35m",
                 "--backend", "pytorch", "--configs", "unpatched", "capture_all", "capture_8_words", "reweight_bias"] + (
             ["--depth", "2", "--size", "64", "--steps", "1", "--rounds", "1"] if tiny else
             ["--size", "1024", "--steps", "4", "--rounds", "2"])},
    ]
    return steps


def find_comfy() -> tuple[str | None, str]:
    """A ComfyUI checkout for the sampling steps, and how it was found (or why none was)."""
    env = dict(os.environ)
    local = ROOT / ".comfyui"
    if not env.get("COMFYUI_PATH") and (local / "comfy" / "model_management.py").is_file():
        return str(local), "the repo's .comfyui/"
    sys.path.insert(0, str(ROOT / "tests"))
    import host  # locating only: no ComfyUI import

    found = host.find_comfyui()
    if found is None:
        return None, host.NO_HOST_REASON
    return str(found), "COMFYUI_PATH" if env.get("COMFYUI_PATH") else "tests/host.py"


def run_step(step: dict, deadline: float, env: dict) -> dict:
    left = deadline - time.monotonic()
    limit = min(step["limit"], max(1, int(left)))
    if left < 5:
        return {"status": "skipped", "reason": "the check's time budget is spent", "seconds": 0.0, "output": ""}
    t = time.monotonic()
    try:
        res = subprocess.run(step["cmd"], cwd=ROOT, env={**env, **step.get("env", {})}, capture_output=True,
                             text=True, timeout=limit)
        stdout, stderr, ok = res.stdout, res.stderr, res.returncode == 0
        status = "ok" if ok else f"failed (exit {res.returncode})"
    except subprocess.TimeoutExpired as e:
        stdout, stderr, ok = _text(e.stdout), _text(e.stderr), False
        status = f"timed out after {limit} s"
    out = stdout[-TAIL:].rstrip()
    ours = [line for line in stderr.splitlines() if "Enfoque" in line]  # the engine's fallback notes
    if ours:
        out += "\n\n[the engine's notes on stderr]\n" + "\n".join(dict.fromkeys(ours))
    if not ok and stderr.strip():
        out += "\n\n[stderr, last lines]\n" + stderr[-2500:].rstrip()
    return {"status": status, "seconds": time.monotonic() - t, "output": out}


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same plan on the CPU at tiny sizes")
    ap.add_argument("--out", default=str(ROOT / "out" / "gpu"), help="folder for the report")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(args.device)
    py = sys.executable
    start = time.monotonic()
    deadline = start + BUDGET_S
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    comfy, how = find_comfy()
    if comfy:
        env["COMFYUI_PATH"] = comfy
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / f"gpu-check-{stamp}{'-dry-run' if args.dry_run else ''}.md"
    results = []
    for step in plan(args.dry_run, py):
        if step.get("comfy") and not comfy:
            res = {"status": "skipped", "reason": how, "seconds": 0.0, "output": ""}
        else:
            res = run_step(step, deadline, env)
        results.append((step, res))
        print(f"gpu_check: {step['name']}: {res['status']} ({res['seconds']:.0f} s)", flush=True)
    total = time.monotonic() - start
    lines = [
        f"# Enfoque GPU check{' (dry run: the plan on the CPU at tiny sizes)' if args.dry_run else ''}",
        "",
        f"- date (UTC): {stamp}",
        f"- machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        f"- python: {py}",
        f"- ComfyUI: {comfy or 'none'} ({how})",
        f"- total: {total:.0f} s (budget {BUDGET_S} s)",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {s['name']} | {r['status']}{': ' + r['reason'] if r.get('reason') else ''} | {r['seconds']:.0f} |"
              for s, r in results]
    for s, r in results:
        lines += ["", f"## {s['name']}", "", f"`{shlex.join(s['cmd'])}`"
                  + (f" with {s['env']}" if s.get("env") else ""), "", "```", r["output"], "```"]
    report.write_text("\n".join(lines) + "\n")
    print(f"gpu_check: report {report}")
    bad = [s["name"] for s, r in results if r["status"] != "ok" and not (r["status"] == "skipped" and s.get("comfy"))]
    return 1 if bad else 0


def probe(device: str) -> int:
    """Step 1: what torch and the card offer, which kernel SDPA picks, which route the engine takes."""
    import torch

    sys.path.insert(0, str(ROOT))
    from attention import sdpa
    from attention.engine import Capture, Reweight, attend

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), device {device}")
    if device == "cuda":
        if not torch.cuda.is_available():
            print("torch sees no CUDA device")
            return 1
        p = torch.cuda.get_device_properties(0)
        print(f"card: {p.name}, sm {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
              f"cuDNN {torch.backends.cudnn.version()}")
    order = torch._C._get_sdp_priority_order() if hasattr(torch._C, "_get_sdp_priority_order") else "?"
    print(f"SDPA priority order (before the first call): {order}")
    heads, d, text = 24, 64, 154
    image = 4096 if device == "cuda" else 64
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for weighted in (False, True):
            g = torch.Generator().manual_seed(0)
            n = text + image
            q, k, v = (torch.randn(2, n, heads * d, generator=g).to(device, dtype) for _ in range(3))
            rw = None
            if weighted:
                w = torch.ones(2, n)
                w[0, 3] = 1.5
                rw = Reweight.build(w.to(device), "bias")
            cols = torch.arange(text, device=device)
            sdpa.reset_routes()
            out, maps = attend(q, k, v, heads, reweight=rw, captures=[Capture(slice(0, 1), cols)],
                               query_range=(text, n))
            qh, kh, vh = (t.view(2, n, heads, d).transpose(1, 2) for t in (q, k, v))
            from attention.engine import sdpa_mask

            m = sdpa_mask(None, rw, q)
            stock = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=m)
            same = torch.equal(out, stock.transpose(1, 2).reshape(2, n, heads * d))
            rows.append((str(dtype).removeprefix("torch."), "bias" if weighted else "none",
                         sdpa.kernel_name(sdpa.sdp_choice(qh, kh, vh, m)), sdpa.route_of(qh, kh, vh, m), same,
                         bool(torch.isfinite(maps[0]).all())))
    print(f"\nSD3-like call: batch 2, {heads} heads x {d}, {text} text + {image} image tokens")
    print(f"{'dtype':<9} {'mask':<6} {'SDPA picks':<11} {'route':<9} {'output == stock':<16} maps finite")
    for r in rows:
        print(f"{r[0]:<9} {r[1]:<6} {r[2]:<11} {str(r[3]):<9} {str(r[4]):<16} {r[5]}")
    print(f"SDPA priority order (now): {torch._C._get_sdp_priority_order() if hasattr(torch._C, '_get_sdp_priority_order') else '?'}")
    ok = all(r[4] for r in rows)
    print(json.dumps({"all_outputs_stock": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
