"""`make demo`: attention maps from the trained "shapes" model (tools/shapes.py) through a
live, headless ComfyUI with the pack, driven over its HTTP API like any client would.

No download: `tools/shapes.py install` puts the committed MMDiT and VAE and the
CLIP-L generated from its seed into the server's models folder; the workflow is
`example_workflows/api/shapes_maps.json` (stock loaders, KSampler euler/simple 20
steps cfg 4). Outputs (the picture, heatmaps over it, a mask, an export) land in
`out/demo/` and their paths are printed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import host  # noqa: E402  (the test harness: ComfyUI bootstrap and the live-server client)


def main() -> int:
    comfy_path = host.find_comfyui()
    if comfy_path is None:
        print(f"demo: {host.NO_HOST_REASON}", file=sys.stderr)
        return 2
    host.bootstrap(comfy_path)
    sys.path.insert(0, str(ROOT / "tools"))
    import shapes

    base = ROOT / "out" / "demo"
    if base.exists():
        shutil.rmtree(base)
    server = host.ComfyServer(comfy_path, base / "comfyui")
    print(f"demo: ComfyUI {comfy_path}")
    server.start()
    try:
        shapes.install(server.models_dir)
        server.wait_ready()
        prompt = json.loads((ROOT / "example_workflows" / "api" / "shapes_maps.json").read_text())
        t = time.perf_counter()
        entry = server.run(prompt, timeout=300)
        print(f"demo: workflow ran in {time.perf_counter() - t:.1f} s")
    except Exception:
        print(server.log()[-4000:], file=sys.stderr)
        raise
    finally:
        server.stop()
    files = sorted(p for p in server.output_dir.rglob("*") if p.is_file())
    result = base / "outputs"
    result.mkdir(parents=True, exist_ok=True)
    for p in files:
        dest = result / p.relative_to(server.output_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
    print("demo: outputs (heatmaps, mask, exported maps):")
    for p in sorted(result.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}")
    words = [w for node in entry.get("outputs", {}).values() for w in node.get("enfoque_words", [])]
    if words:
        print(f"demo: words mapped: {', '.join(dict.fromkeys(words))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
