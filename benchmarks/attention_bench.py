"""Engine benchmark: stock SDPA vs capture vs reweight vs a naive full-matrix capture,
and the chunked-route users (output from another backend).

One command, one run, ratios side by side:

    .venv/bin/python benchmarks/attention_bench.py            # CPU fp32 (+ CUDA bf16 if present)
    .venv/bin/python benchmarks/attention_bench.py --image-tokens 1024 --repeats 5
    .venv/bin/python benchmarks/attention_bench.py --device cuda --cuda-dtypes bf16 fp16

Shapes are SD3-like: 24 heads, head dim 64, 154 text tokens, batch 2 (two
prompts, one row each). Time is the median of interleaved repeats. Peak memory
is measured per case: on CUDA with the allocator's peak, on CPU as peak RSS of a
fresh child process minus its RSS once the inputs exist.

Cases: ``stock`` is F.scaled_dot_product_attention; ``capture_all``/``capture_8``
capture all 154 / 8 text columns for the image queries (the fused route: the
kernel SDPA picks gives output and log-sum-exp in one call); ``bias``/``scale``
reweight; ``naive_full`` is what peers do (softmax of the whole matrix).
``foreign_all`` is capture-all where the output comes from another backend (a
stand-in that costs what stock costs: ComfyUI's sub-quadratic CPU default, Sage
or xformers behave alike for the engine), with the normaliser from one fused
call over the captured rows; ``chunked_all`` is the same with the exact chunked
normaliser (q.k over all keys in chunks) the engine falls back to where no fused
kernel gives a log-sum-exp.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attention import sdpa  # noqa: E402
from attention.engine import Capture, Reweight, attend  # noqa: E402

HEADS, DIM, TEXT, BATCH = 24, 64, 154, 2
CASES = ["stock", "capture_all", "capture_8", "bias", "scale", "naive_full", "foreign_all", "chunked_all"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(image: int, device: str, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    n = TEXT + image
    q, k, v = (torch.randn(BATCH, HEADS, n, DIM, generator=g).to(device, dtype) for _ in range(3))
    w = torch.ones(BATCH, n)
    w[0, 5:9] = 1.5
    w[1, 20:24] = 0.5
    return q, k, v, w.to(device)


def case_fn(name: str, q, k, v, w, image: int) -> Callable[[], object]:
    qr = (TEXT, TEXT + image)
    all_cols = torch.arange(TEXT, device=q.device)
    eight = torch.arange(1, 9, device=q.device)
    rw_bias, rw_scale = Reweight.build(w, "bias"), Reweight.build(w, "scale")
    kw = dict(skip_reshape=True, skip_output_reshape=True)

    def cap(cols):
        return [Capture(slice(0, 1), cols), Capture(slice(1, 2), cols)]

    if name == "stock":
        return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
    if name == "capture_all":
        return lambda: attend(q, k, v, HEADS, captures=cap(all_cols), query_range=qr, **kw)
    if name == "capture_8":
        return lambda: attend(q, k, v, HEADS, captures=cap(eight), query_range=qr, **kw)
    if name == "bias":
        return lambda: attend(q, k, v, HEADS, reweight=rw_bias, **kw)
    if name == "scale":
        return lambda: attend(q, k, v, HEADS, reweight=rw_scale, **kw)
    if name == "naive_full":
        def naive():
            p = torch.softmax((q @ k.transpose(-1, -2)) * DIM**-0.5, dim=-1)
            maps = p[:, :, TEXT:, :TEXT].sum(1)
            return p @ v, maps
        return naive

    def foreign(q_, k_, v_, m_):  # another backend's output (a stand-in costing what stock costs)
        return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)

    if name == "foreign_all":
        return lambda: attend(q, k, v, HEADS, captures=cap(all_cols), query_range=qr, compute_out=foreign, **kw)
    if name == "chunked_all":
        def chunked():
            real, sdpa.lse_only = sdpa.lse_only, lambda *a: None
            try:
                return attend(q, k, v, HEADS, captures=cap(all_cols), query_range=qr, compute_out=foreign, **kw)
            finally:
                sdpa.lse_only = real
        return chunked
    raise KeyError(name)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_cases(image: int, device: str, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    q, k, v, w = make_inputs(image, device, dtype)
    fns = {c: case_fn(c, q, k, v, w, image) for c in CASES}
    for f in fns.values():
        f()
    sync(device)
    times: dict[str, list[float]] = {c: [] for c in CASES}
    for _ in range(repeats):
        for c, f in fns.items():
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            times[c].append(time.perf_counter() - t)
    return {c: statistics.median(t) for c, t in times.items()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """VmHWM: this process's own high-water mark (ru_maxrss would inherit the parent's)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child_peak(image: int, case: str, dtype: torch.dtype) -> int:
    """Runs in a fresh process: extra peak RSS of one case over its inputs."""
    case_fn(case, *make_inputs(64, "cpu", dtype), 64)()  # load kernels and thread pools first
    q, k, v, w = make_inputs(image, "cpu", dtype)
    f = case_fn(case, q, k, v, w, image)
    reset_peak_rss()
    base = rss_bytes()
    f()
    return peak_rss_bytes() - base


def peak_memory(image: int, device: str, dtype: torch.dtype, measure: bool = True) -> dict[str, int]:
    out = {}
    if not measure:
        return {c: 0 for c in CASES}
    if device == "cuda":
        q, k, v, w = make_inputs(image, device, dtype)
        for c in CASES:
            f = case_fn(c, q, k, v, w, image)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            f()
            torch.cuda.synchronize()
            out[c] = torch.cuda.max_memory_allocated() - base
        return out
    for c in CASES:
        res = subprocess.run(
            [sys.executable, __file__, "--child", c, "--image-tokens", str(image), "--child-dtype",
             next(n for n, d in DTYPES.items() if d == dtype)],
            capture_output=True, text=True, check=True,
        )
        out[c] = int(res.stdout.strip().splitlines()[-1])
    return out


def report(image: int, device: str, dtype: torch.dtype, repeats: int, measure_peak: bool = True) -> dict:
    times = time_cases(image, device, dtype, repeats)
    mem = peak_memory(image, device, dtype, measure_peak)
    slice_bytes = BATCH * HEADS * image * TEXT * 4
    print(f"\n== {device} {str(dtype).removeprefix('torch.')}: {image} image + {TEXT} text tokens, "
          f"{HEADS} heads x {DIM}, batch {BATCH} ==")
    print(f"{'case':<12} {'time ms':>9} {'x stock':>8} {'extra peak MB':>14} {'over stock MB':>14} {'/ slice':>8}")
    for c in CASES:
        extra = (mem[c] - mem["stock"]) / 2**20
        print(f"{c:<12} {times[c] * 1e3:9.1f} {times[c] / times['stock']:8.2f} {mem[c] / 2**20:14.1f} "
              f"{extra:14.1f} {max(extra, 0) * 2**20 / slice_bytes:8.2f}")
    print(f"one [batch, heads, image, text] fp32 slice = {slice_bytes / 2**20:.1f} MB; "
          f"naive_full / capture_all time = {times['naive_full'] / times['capture_all']:.2f}x; "
          f"chunked_all / foreign_all time = {times['chunked_all'] / times['foreign_all']:.2f}x")
    if not measure_peak:
        print("(peak memory not measured in this run)")
    return {"device": device, "dtype": str(dtype), "image": image, "times": times, "peak": mem,
            "slice_bytes": slice_bytes, "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-tokens", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: the CPU in fp32, then CUDA (if present) in --cuda-dtypes")
    ap.add_argument("--cuda-dtypes", nargs="*", default=["bf16"], choices=list(DTYPES))
    ap.add_argument("--cpu-dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--no-peak", action="store_true", help="skip the CPU peak-memory children (quick runs)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.child:
        print(child_peak(args.image_tokens[0], args.child, DTYPES[args.child_dtype]))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results = []
    if args.device in ("auto", "cpu"):
        for image in args.image_tokens:
            reps = args.repeats if image <= 1024 else max(1, args.repeats // 2)
            results.append(report(image, "cpu", DTYPES[args.cpu_dtype], reps, not args.no_peak))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}")
        for name in args.cuda_dtypes:
            for image in args.image_tokens:
                results.append(report(image, "cuda", DTYPES[name], max(args.repeats, 20)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
