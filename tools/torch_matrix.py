"""Helpers of ``tools/torch_matrix.sh`` (``make compat``): one torch per venv, one row per torch.

    python tools/torch_matrix.py probe --out probe.json           # in a matrix venv: the kernel routes
    python tools/torch_matrix.py host-check --comfy DIR --out f   # in a matrix venv: ComfyUI + the pack load?
    python3 tools/torch_matrix.py table --results DIR --pin 2.14.1 --out docs/compat.md VERSION...   # any Python

``probe`` and ``host-check`` run inside a matrix venv (they import torch, the pack's engine and
ComfyUI); ``table`` needs only the standard library: it reads what each version's run left in
``--results/<torch version>/`` (install notes, pytest's JUnit XML, the JSON of the two checks) and
writes the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The cases the probe runs through attention.sdpa on the CPU: SD3-like joint attention, small.
PROBE_SHAPE = (2, 4, 77 + 64, 64)  # batch, heads, text + image tokens, head dim
HOST_PACKAGES = ("comfy-kitchen", "triton", "transformers", "torchvision")  # named where ComfyUI fails
PROBE_CASES = {"fp32": ("float32", False), "fp32+weights": ("float32", True), "bf16": ("bfloat16", False),
               "fp16": ("float16", False)}


# -- in a matrix venv -------------------------------------------------------------------------------


class _Notes(logging.Handler):
    """Keeps the warnings logged while it is attached (the engine's fallback notes, ComfyUI's)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def probe() -> dict:
    """torch, torchvision, and for each probe case the kernel SDPA picks here, the route the engine
    settles on and whether its output is ``torch.equal`` to stock SDPA."""
    import torch

    sys.path.insert(0, str(ROOT))
    from attention import sdpa

    res: dict = {"torch": torch.__version__, "python": platform.python_version(), "cases": {}}
    try:
        import torchvision

        res["torchvision"] = torchvision.__version__
        wants = [r for r in importlib.metadata.requires("torchvision") or [] if r.split()[0].startswith("torch")]
        res["torchvision_requires"] = "; ".join(_requirement(w) for w in wants if not w.startswith("torchvision"))
    except Exception as e:  # a torchvision that does not load beside this torch: ComfyUI would not start
        res["torchvision"] = f"does not import: {type(e).__name__}: {e}"
    notes = _Notes()
    logging.getLogger("attention").addHandler(notes)
    g = torch.Generator().manual_seed(0)
    b, h, n, d = PROBE_SHAPE
    for name, (dtype_name, weighted) in PROBE_CASES.items():
        dtype = getattr(torch, dtype_name)
        q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))
        mask = None
        if weighted:
            w = torch.ones(b, n)
            w[:, 3], w[:, 5] = 2.0, 0.5
            mask = torch.log(w).to(dtype)[:, None, None, :]
        sdpa.reset_routes()
        sdpa.reset_fallback_log()
        try:
            fused = sdpa.attention_with_lse(q, k, v, mask)
            stock = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            res["cases"][name] = {"kernel": fused.kernel, "route": fused.route, "lse": fused.lse is not None,
                                  "equal_to_stock": bool(torch.equal(fused.out, stock))}
        except Exception as e:
            res["cases"][name] = {"error": f"{type(e).__name__}: {e}"}
    logging.getLogger("attention").removeHandler(notes)
    res["notes"] = list(dict.fromkeys(notes.lines))
    return res


def _requirement(text: str) -> str:
    """``torch (==2.5.1)`` (older metadata) or ``torch==2.5.1`` as ``torch==2.5.1``."""
    return "".join(c for c in text if c not in " ()")


def host_check(comfy: Path) -> dict:
    """Whether the pinned ComfyUI starts in-process with this torch and loads the pack (as the host
    tests do), with ComfyUI's warnings that mention torch."""
    sys.path.insert(0, str(ROOT / "tests"))
    import host

    notes = _Notes()
    logging.getLogger().addHandler(notes)
    res: dict = {"comfyui": str(comfy), "comfyui_version": _comfy_version(comfy), "versions": {}}
    for dist in HOST_PACKAGES:
        try:
            res["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    with tempfile.TemporaryDirectory() as tmp:
        try:
            h = host.load_host(comfy, Path(tmp))
            res.update(status="ok" if h.loaded else "pack not loaded", pack_nodes=len(h.node_ids))
        except BaseException as e:  # noqa: BLE001  (SystemExit from ComfyUI's start-up counts too)
            res.update(status="refused", error=f"{type(e).__name__}: {e}", packages=_packages_in(e),
                       traceback=traceback.format_exc()[-3000:])
    logging.getLogger().removeHandler(notes)
    res.update(torch_warnings=[], skipped_modules=[])
    for line in dict.fromkeys(notes.lines):
        msg = line.split(": ", 1)[-1]
        if "torchaudio" in msg or msg.startswith("Traceback"):  # not installed on purpose (docs/HOST)
            continue
        if msg.startswith("Cannot import "):  # a ComfyUI node module that does not load with this torch
            res["skipped_modules"].append(msg.replace(str(comfy) + "/", ""))
        elif re.search(r"\b(py)?torch\b", msg, re.IGNORECASE):
            res["torch_warnings"].append(msg)
    return res


def _packages_in(e: BaseException) -> list[str]:
    """The installed packages the traceback of ``e`` passes through, outermost first (e.g.
    ``["comfy_kitchen", "triton"]``): which of ComfyUI's requirements failed with this torch."""
    out: list[str] = []
    for frame in traceback.extract_tb(e.__traceback__):
        parts = Path(frame.filename).parts
        if "site-packages" in parts[:-1]:
            pkg = parts[parts.index("site-packages") + 1].removesuffix(".py")
            if pkg not in out:
                out.append(pkg)
    return out


def _comfy_version(comfy: Path) -> str:
    f = comfy / "comfyui_version.py"
    for line in f.read_text().splitlines() if f.is_file() else []:
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


# -- the table (standard library only) --------------------------------------------------------------


def junit_counts(path: Path) -> dict | None:
    """passed/failed/skipped (errors count as failed) and the ids of what failed, from pytest's JUnit XML."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = skipped = 0
    failures: list[str] = []
    skip_reasons: list[str] = []
    for s in suites:
        for case in s.iter("testcase"):
            total += 1
            cid = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                failures.append(cid)
            elif (sk := case.find("skipped")) is not None:
                skipped += 1
                skip_reasons.append(sk.get("message", ""))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped, "failures": failures,
            "skip_reasons": list(dict.fromkeys(skip_reasons))}


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _counts(c: dict | None) -> str:
    return "not run" if c is None else f"{c['passed']} / {c['failed']} / {c['skipped']}"


def _route(p: dict | None) -> str:
    """e.g. ``flash: fused (fp32, fp32+weights, bf16, fp16)``, grouped by kernel and route."""
    if p is None:
        return "not run"
    groups: dict[str, list[str]] = {}
    for case, r in p["cases"].items():
        if "error" in r:
            key = f"error ({r['error'][:80]})"
        else:
            key = f"{r['kernel']}: {r['route']}" + ("" if r["equal_to_stock"] else ", output NOT equal to stock")
        groups.setdefault(key, []).append(case)
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in groups.items())


def _short(text: str, n: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def row(version: str, d: Path, skipped_everywhere: set[str] = frozenset()) -> dict:
    """One version's results as table cells and notes (ComfyUI modules skipped on the pin too are not
    this torch's doing and are left out)."""
    meta = _json(d / "meta.json") or {}
    pure_install, host_install = _read(d / "pure-install.txt"), _read(d / "host-install.txt")
    pure, host = junit_counts(d / "pure.xml"), junit_counts(d / "host.xml")
    probe_res, check = _json(d / "probe.json"), _json(d / "host-check.json")
    notes: list[str] = []
    if pure_install is None:
        comfy = "not measured"
    elif pure_install != "ok":
        notes.append(f"torch {version} could not be installed: {_short(pure_install)}")
        comfy = "not run"
    elif host_install != "ok":
        comfy = "requirements refused"
        notes.append(f"ComfyUI's requirements do not install beside torch {version}: {_short(host_install or 'not tried')}")
    elif check is None:
        comfy = "not run"
    elif check["status"] == "ok":
        comfy = f"starts ({check['comfyui_version']})"
    else:
        versions = check.get("versions", {})
        where = " → ".join(f"{p} {versions.get(p.replace('_', '-'), '')}".strip() for p in check.get("packages", []))
        comfy = f"does not start ({check['comfyui_version']}{', in ' + where if where else ''})"
        hint = (" (triton looks for a GPU driver when comfy-kitchen imports it; this machine has none)"
                if "active drivers" in check.get("error", "") else "")
        notes.append(f"the pinned ComfyUI does not start with torch {version}"
                     f"{' (the error is raised in ' + where + ')' if where else ''}: {_short(check.get('error', ''))}{hint}")
        without = _json(d / "host-check-without.json")
        if without is not None:
            dropped = without.get("without", "")
            if without["status"] == "ok":
                comfy += f"; starts without {dropped}"
                notes.append(f"ComfyUI treats {dropped} as optional (fp8/fp4 support off without it): with it "
                             "uninstalled ComfyUI starts, and the sampling tests ran that way")
            else:
                comfy += f"; nor without {dropped}"
                notes.append(f"without {dropped}: {_short(without.get('error', ''))}")
    if check:
        notes += [f"ComfyUI warns: {_short(w, 200)}" for w in check.get("torch_warnings", [])]
        notes += [f"ComfyUI skips a module: {_short(w, 200)}" for w in check.get("skipped_modules", [])
                  if w not in skipped_everywhere]
    for name, c in (("pure", pure), ("host", host)):
        if c and c["failures"]:
            notes.append(f"{name} tests failed: {_short(', '.join(c['failures']), 300)}")
        if c and name == "host" and c["skipped"]:
            notes += [f"host tests skipped: {_short(r, 160)}" for r in c["skip_reasons"]]
    if probe_res:
        tv = probe_res.get("torchvision", "")
        if tv.startswith("does not import"):
            notes.append(f"torchvision {tv}")
        notes += [f"engine notice: {_short(n, 300)}" for n in probe_res.get("notes", [])]
    return {
        "torch": meta.get("torch_installed") or version,
        "torchvision": (meta.get("torchvision_installed") or meta.get("torchvision", "?"))
        + (f" (wants {probe_res['torchvision_requires']})"
           if probe_res and probe_res.get("torchvision_requires") else ""),
        "comfy": comfy,
        "pure": _counts(pure),
        "host": _counts(host),
        "route": _route(probe_res),
        "date": meta.get("date", "?"),
        "machine": meta.get("machine", "?"),
        "minutes": f"{int(meta['seconds']) / 60:.1f}" if "seconds" in meta else "?",
        "notes": notes,
    }


TABLE_HEAD = """# Torch versions: measured compatibility

Written by `make compat` (`tools/torch_matrix.sh`); do not edit by hand. Each row is one torch,
installed from PyPI in its own venv (Python {python}) with the torchvision that pairs with it (a
CUDA build, run on the CPU), the pack's pinned numpy/safetensors/Pillow, and the pinned ComfyUI's
requirements (torchaudio left out, as in `tools/setup.sh`).

- **pure tests** (passed / failed / skipped): `tests/test_engine.py`, `tests/test_maps.py`,
  `tests/test_torch_compat.py` (the pack's arguments bound against each CUDA op's schema as this
  torch registers it; the first-call guard) and the CPU parts of `tests/test_cuda.py`
  (`ENFOQUE_GPU_CHECK_DEVICE=cpu`). Torches without `torch.AcceleratorError` run two tests fewer.
- **ComfyUI**: the pinned checkout (ComfyUI {comfy_version}, `{comfy_commit}`) started in-process
  with `--cpu` and the pack loaded by its own loader.
- **sampling tests** (passed / failed / skipped): `tests/test_model_probe.py`, tiny SD3 and Flux
  through ComfyUI's KSampler, sampling with capture `torch.equal` to stock, with ComfyUI's attention
  backend and with its SDPA backend (the fused route).
- **kernel route**: what `attention.sdpa` settles on here for SD3-like joint attention
  ({shape}), per dtype: the kernel SDPA picks and the route (`fused`: one kernel call gives the stock
  output and the log-sum-exp).
- **minutes**: that torch's install and tests (the venv's removal not counted).

"""


def table(results: Path, versions: list[str], out: Path, pin: str) -> None:
    pin_check = _json(results / pin / "host-check.json") or {}
    on_pin = set(pin_check.get("skipped_modules", []))  # not a torch matter (e.g. the in-process harness)
    rows = []
    for v in versions:
        d = results / v
        if d.is_dir():
            rows.append(row(v, d, on_pin))
        else:
            rows.append({"torch": v, "torchvision": "", "comfy": "not measured", "pure": "not run",
                         "host": "not run", "route": "", "date": "", "machine": "", "minutes": "", "notes": []})
    comfy_meta = next((_json(results / v / "meta.json") for v in versions if (results / v / "meta.json").is_file()), {})
    head = TABLE_HEAD.format(python=comfy_meta.get("python", "?"), comfy_version=comfy_meta.get("comfyui_version", "?"),
                             comfy_commit=comfy_meta.get("comfyui_commit", "?")[:12],
                             shape="batch {}, {} heads, {} tokens, head dim {}".format(*PROBE_SHAPE))
    lines = [head.rstrip() + "\n",
             "| torch | torchvision | ComfyUI | pure tests | sampling tests | kernel route (CPU) | date | machine | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['torch']} | {r['torchvision']} | {r['comfy']} | {r['pure']} | {r['host']} | "
                     f"{r['route']} | {r['date']} | {r['machine']} | {r['minutes']} |")
    notes = [f"torch {r['torch']}: {n}" for r in rows for n in r["notes"]]
    notes += [f"the pin too, so not a torch matter (listed once, here): ComfyUI skips a module: {_short(m, 200)}"
              for m in sorted(on_pin)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out.write_text("\n".join(lines) + "\n")


def machine() -> str:
    """CPU model, cores and OS, e.g. ``AMD EPYC 7B13, 2 cores, Linux 6.1 x86_64``."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release().split('-')[0]} {platform.machine()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="the kernel routes on this torch (JSON)")
    p.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("host-check", help="whether the pinned ComfyUI starts with this torch (JSON)")
    c.add_argument("--comfy", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--without", default="", help="the optional package uninstalled for this check (noted)")
    m = sub.add_parser("meta", help="date, machine and versions of one run (JSON)")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("pairs", nargs="*", help="KEY=VALUE")
    t = sub.add_parser("table", help="write the Markdown table")
    t.add_argument("--results", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--pin", required=True, help="the project's torch: its row is the reference")
    t.add_argument("versions", nargs="+")
    args = ap.parse_args()
    if args.cmd == "probe":
        args.out.write_text(json.dumps(probe(), indent=1))
    elif args.cmd == "host-check":
        res = host_check(args.comfy)
        if args.without:
            res["without"] = args.without
        args.out.write_text(json.dumps(res, indent=1))
        return 0 if res["status"] == "ok" else 1
    elif args.cmd == "meta":
        meta = _json(args.out) or {"date": dt.date.today().isoformat(), "machine": machine(),
                                   "python": platform.python_version()}
        for kv in args.pairs:
            k, _, v = kv.partition("=")
            meta[k] = int(v) if k == "seconds" else v
        args.out.write_text(json.dumps(meta, indent=1))
    else:
        table(args.results, args.versions, args.out, args.pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
