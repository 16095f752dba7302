"""The frontend: the ``/enfoque/tokenize`` route, the js/ extension's imports,
and the word chips in a real browser.

- Route tests go through the live server (``comfy_server``): good input, bad
  JSON, a non-object body, a missing or non-string ``text`` (400), an oversize
  body (413), each with a clear JSON message; and, in-process, the route's words
  agree with the token layout EnfoquePatchCLIP writes for the same prompts.
- The browser test drives Debian's ``/usr/bin/chromium`` with the npm package
  ``playwright-core`` (tests/browser/enfoque_ui.mjs) against the live server and
  the real ComfyUI frontend: it loads example_workflows/api/tiny_sd3_maps.json,
  queues it, hovers and pins word chips on EnfoqueHeatmaps and EnfoqueAttentionMaps
  (which keeps no blank picture area), reloads the workflow from its serialised
  JSON and then the whole page (the chips come back from the node's last output),
  runs a graph that fails (the stale chips are cleared), drags a CLIP probe onto a
  model-probe input (the canvas refuses it), loads a workflow saved before the
  probe types split (its links get the new types; a wrong one gets a notice),
  runs with reweight=off and a weighted word (a notice on the node), and weighs
  words on an EnfoqueTokenWeights node. It is skipped, with the reason, when
  chromium, node or playwright-core is missing (``apt-get install chromium``;
  ``cd tests/browser && npm ci``). Screenshots go to ``out/artifacts/frontend/``.
  The templates' browser test is in tests/test_templates.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from host import REPO_ROOT

JS_DIR = REPO_ROOT / "js"
BROWSER_DIR = REPO_ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "enfoque_ui.mjs"
WORKFLOW = REPO_ROOT / "example_workflows" / "api" / "tiny_sd3_maps.json"
LEGACY = BROWSER_DIR / "fixtures" / "sd35_attention_maps_v0.1.json"  # a template as saved before Step 11
ARTIFACTS = REPO_ROOT / "out" / "artifacts" / "frontend"
CHROMIUM = os.environ.get("ENFOQUE_CHROMIUM", "/usr/bin/chromium")
BROWSER_TIMEOUT = 180  # the run itself takes about 10 s; generous for slow CI machines


def post(server, path: str, data, headers: dict | None = None) -> tuple[int, dict]:
    """POST raw bytes; (status, JSON body) for 2xx and 4xx/5xx alike."""
    req = urllib.request.Request(
        server.url + path, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


# --------------------------------------------------------------------------- the route


@pytest.mark.server
def test_tokenize_route_returns_the_prompt_words(comfy_server):
    status, body = post(comfy_server, "/enfoque/tokenize", json.dumps({"text": "a red cat on a blue chair"}).encode())
    assert status == 200, body
    assert body["words"] == ["a", "red", "cat", "on", "a", "blue", "chair"]
    assert body["tokenizer"] == "clip_l" and body["chunks"] == 1
    # ComfyUI's prompt syntax is parsed as in an encode; the frontend calls the /api/ form
    status, body = post(comfy_server, "/api/enfoque/tokenize", json.dumps({"text": "A (Red Cat:1.3), [sofa]"}).encode())
    assert status == 200, body
    assert body["words"] == ["a", "red", "cat", "sofa"]
    status, body = post(comfy_server, "/enfoque/tokenize", json.dumps({"text": ""}).encode())
    assert (status, body["words"]) == (200, [])


@pytest.mark.server
@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b'{"text": "a red cat"', 400, "not valid JSON"),
        (b"\xff\xfe not utf-8", 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b'["a red cat"]', 400, "must be a JSON object, got list"),
        (b'"a red cat"', 400, "must be a JSON object, got str"),
        (b'{"prompt": "a red cat"}', 400, "has no 'text'"),
        (b'{"text": 12}', 400, "'text' must be a string, got int"),
        (b'{"text": null}', 400, "'text' must be a string, got NoneType"),
        (b'{"text": ["a", "cat"]}', 400, "'text' must be a string, got list"),
    ],
    ids=["truncated", "binary", "empty", "list", "string", "no-text", "int", "null", "text-list"],
)
def test_tokenize_route_rejects_bad_input(comfy_server, data, status, message):
    got, body = post(comfy_server, "/enfoque/tokenize", data)
    assert got == status, body
    assert message in body["error"]
    assert '{"text": ' in body["error"], "the message should say what to send instead"


@pytest.mark.server
def test_tokenize_route_limits_the_body_size(comfy_server):
    routes_limit = 16 * 1024
    big = json.dumps({"text": "cat " * (routes_limit // 4)}).encode()
    assert len(big) > routes_limit
    status, body = post(comfy_server, "/enfoque/tokenize", big)
    assert status == 413, body
    assert "larger than 16 kB" in body["error"] and "shorter prompt" in body["error"]
    # just under the limit is fine
    ok = json.dumps({"text": "cat " * ((routes_limit - 100) // 4)}).encode()
    assert len(ok) <= routes_limit
    status, body = post(comfy_server, "/enfoque/tokenize", ok)
    assert status == 200 and set(body["words"]) == {"cat"} and body["chunks"] > 1
    # without a Content-Length (chunked upload, arriving in pieces) the body is read whole and the limit holds
    for data, want in ((ok, 200), (big, 413)):
        status, body = post(
            comfy_server, "/enfoque/tokenize", _slowly(data), headers={"Transfer-Encoding": "chunked"}
        )
        assert status == want, body


def _slowly(data: bytes, piece: int = 3000):
    """The body in pieces with pauses, so the server sees them arrive one by one."""
    for i in range(0, len(data), piece):
        if i:
            time.sleep(0.02)
        yield data[i : i + piece]


PROMPTS = [
    "a red cat on a blue chair",
    "photograph of an astronaut riding a horse, 4k, highly detailed",
    r"a ((big:1.2) \(red\) cat:1.5) sitting on the [old] mat",
    "Portrait of a Woman with RED hair; oil-painting style!",
    "the cat's hat in 2024 BREAK a dog",
    ", ".join(["a small red cat sitting on a blue wooden chair in the sunny garden"] * 9),  # 2 chunks
]


@pytest.mark.host
def test_tokenize_words_agree_with_the_layout_of_an_encode(comfy):
    """What the chips offer is what EnfoqueTokenWeights can name: the layout's words."""
    import tiny_models

    routes = comfy.submodule("nodes.routes")
    clip, _ = comfy.run("EnfoquePatchCLIP", clip=tiny_models.clip_sd3(), weight_mode="attention", capture=False)
    for text in PROMPTS:
        cond = comfy.run("CLIPTextEncode", clip=clip, text=text)[0]
        layout = cond[0][1]["enfoque_layout"]
        assert routes.prompt_words(text)["words"] == list(layout.words), text


# --------------------------------------------------------------------------- the extension file


def test_extension_imports_only_the_public_frontend_modules():
    files = sorted(JS_DIR.glob("*.js"))
    assert files, "js/ has no extension file"
    for f in files:
        src = f.read_text()
        imports = re.findall(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", src, flags=re.M)
        imports += re.findall(r"""\bimport\(\s*["']([^"']+)["']""", src)
        assert set(imports) <= {"../../scripts/app.js", "../../scripts/api.js"}, (f.name, imports)
        assert "app.registerExtension(" in src or f.name != "enfoque.js"


def test_extension_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (needed to syntax-check js/)")
    for f in sorted(JS_DIR.glob("*.js")):
        # --check parses an ES module without running it (imports are not resolved)
        proc = subprocess.run(
            [node, "--input-type=module", "--check"], input=f.read_text(), capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{f.name}: {proc.stderr}"


# --------------------------------------------------------------------------- the browser


def browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return (
            f"browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
            "or set ENFOQUE_CHROMIUM)"
        )
    node = shutil.which("node")
    if node is None:
        return "browser test needs node >= 18 (Debian: apt-get install nodejs npm)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    m = re.match(r"v(\d+)\.", version)
    if not m or int(m.group(1)) < 18:
        return f"browser test needs node >= 18 for playwright-core, found {version or 'no version'}"
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        return "browser test needs playwright-core: cd tests/browser && npm ci"
    return None


def run_browser_script(server, script: Path, args: list[str], timeout: int = BROWSER_TIMEOUT) -> tuple[dict, str]:
    """Run one of tests/browser/*.mjs against the live server; its RESULT, checked ok, and its output."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cmd = [shutil.which("node") or "node", str(script), "--url", server.url, "--out", str(ARTIFACTS),
           "--chromium", CHROMIUM, *args]
    try:
        proc = subprocess.run(
            cmd, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script.name} ran over {timeout}s; output:\n{e.stdout}\n{e.stderr}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result from {script.name} (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1][len("RESULT ") :])
    for shot in result.get("screenshots", []):
        print(f"screenshot: {shot}")
    assert result["ok"], (
        f"{script.name} failed at step {result.get('step')!r}: {result.get('error')}\n"
        f"screenshots: {result.get('screenshots')}\nprogress:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\n"
        f"server log tail:\n{server.log()[-3000:]}"
    )
    return result, proc.stdout


@pytest.fixture(scope="session")
def browser_models(comfy, comfy_server):
    """A random TAESD3 (ComfyUI's own class) as the live server's "taesd3" VAE, so graphs that decode run."""
    import safetensors.torch
    import tiny_models
    from comfy.taesd.taesd import TAESD

    folder = comfy_server.models_dir / "vae_approx"
    folder.mkdir(parents=True, exist_ok=True)
    taesd = tiny_models.randomize_(TAESD(latent_channels=16))  # ComfyUI allocates its weights with torch.empty
    for name, part in (("taesd3_encoder", taesd.taesd_encoder), ("taesd3_decoder", taesd.taesd_decoder)):
        sd = {k: v.contiguous() for k, v in part.state_dict().items()}
        safetensors.torch.save_file(sd, str(folder / f"{name}.safetensors"))
    return folder


@pytest.mark.server
def test_word_chips_in_the_browser(comfy_server, browser_models):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    for old in ARTIFACTS.glob("enfoque_*.png"):
        old.unlink()
    result, _ = run_browser_script(comfy_server, SCRIPT, ["--workflow", str(WORKFLOW), "--legacy", str(LEGACY)])
    assert result["chip_words"] == ["red cat", "blue chair"]
    assert result["pin_after_reload"] == "blue chair"
    assert result["weights"]["afterDrag"] == "cat:1.1, chair:0.8, red:1.5"
    missing = [s for s in result["screenshots"] if not Path(s).is_file()]
    assert not missing, f"screenshots not written: {missing}"
    # a reload keeps the chips (the workflow reloaded, and the page reloaded), a failed run clears them
    assert result["chips_after_page_reload"]["chips"] == ["red cat", "blue chair"]
    assert result["chips_after_page_reload"]["pinned"] == ["blue chair"]
    assert result["after_failed_run"]["heat"] == result["after_failed_run"]["attn"] == 0
    # Enfoque Attention Maps: its widgets and the chips, no picture area
    assert result["attention_maps_height"]["h"] <= result["attention_maps_height"]["min"] + 1
    # the canvas refuses a CLIP probe in a model-probe input; an old workflow's probe links get the new types
    assert result["wrong_probe"]["api"] is None and result["wrong_probe"]["types"] == [
        "ENFOQUE_CLIP_PROBE", "ENFOQUE_MODEL_PROBE"]
    assert result["wrong_probe"]["drag"][2] == "ENFOQUE_MODEL_PROBE"
    assert set(result["legacy"]["migrated"]) == {"ENFOQUE_MODEL_PROBE"}
    assert "needs the probe of Enfoque Patch Model" in result["legacy"]["notice"]
    assert "reweight is off" in result["notice"]
    print(f"EnfoqueAttentionMaps: {result.get('attention_maps')}, {result.get('attention_maps_height')}")
    print(f"browser check took {result['seconds']:.1f}s")


# --------------------------------------------------------------------------- per-word pictures


@pytest.mark.host
def test_heatmaps_send_one_preview_per_word(comfy):
    """EnfoqueHeatmaps' ui lists a small temp PNG per word, in word order, for the chips' hover view."""
    import numpy as np
    import torch
    from PIL import Image

    maps_mod = comfy.submodule("attention.maps")
    g = torch.Generator().manual_seed(0)
    words = ["a", "red", "cat"]
    maps = maps_mod.AttentionMaps(
        maps=torch.rand((1, 3, 6, 8), generator=g) * 0.05, words=words, meta={"image_size": [48, 64]}
    )
    image = torch.rand((1, 768, 1024, 3), generator=g)
    out = comfy.run(
        "EnfoqueHeatmaps", maps=maps, image=image, colormap="viridis", opacity=0.5, normalisation="minmax", columns=0
    )
    entries = out.ui["enfoque_word_images"]
    assert len(entries) == len(words) == len(out.ui["enfoque_words"])
    pictures = []
    for e in entries:
        assert e["type"] == "temp" and e["subfolder"] == "enfoque" and "/" not in e["filename"]
        path = comfy.temp_dir / e["subfolder"] / e["filename"]
        with Image.open(path) as im:
            assert im.size == (512, 384), "long side capped at 512, the image's aspect kept"
            pictures.append(np.asarray(im.convert("RGB")))
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[1], pictures[2])
    # without an image: the token grid upscaled to a readable size
    out = comfy.run("EnfoqueHeatmaps", maps=maps, colormap="turbo", opacity=0.6, normalisation="text", columns=0)
    (first, *_) = out.ui["enfoque_word_images"]
    with Image.open(comfy.temp_dir / first["subfolder"] / first["filename"]) as im:
        assert im.size == (341, 256)
