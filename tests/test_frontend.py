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
- tests/browser/everyday.mjs checks, item by item, what a new user met with everyday prompts (a prompt
  that repeats words): a chip per position, Attention Maps' capped chip box, chips kept over a reload,
  a cached run and a failed run, pointing at the picture (checked here against the saved maps), the
  frame scrubber over steps, stale notices, Maps To Mask's notice, invalid weights shown before Run,
  Token Weights' chips per position, the probe sockets' colours, the extension's word rule (checked
  here against attention/selection.py) and the display names it reads from GET /enfoque/info.
- In-process: what the chips are given (``enfoque_grid``, ``enfoque_panels``, ``enfoque_frames``,
  ``enfoque_negative``) and Maps To Mask's notice.
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
from test_word_rule import NOT_WORDS, SPELLINGS
from test_word_rule import WORDS as RULE_WORDS

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


# --------------------------------------------------------------------------- everyday prompts (Step 18, Step 15)

EVERYDAY = BROWSER_DIR / "everyday.mjs"
RULE_CASES = [  # test_word_rule's words and spellings, and a few more
    *[(RULE_WORDS, q) for q in [
        *SPELLINGS, *NOT_WORDS, "", " , ,", "red#0", "#3", "a  red", "RED   CAT#1", "dog, purple", "on the",
        "the red", "a#1, a#2, a",
    ]],
    *[(["red", "cat", "red cat", "dog"], q) for q in ["Red,", "RED CAT", "cat, Dog!", "dog#1", "red cat#1", "cat red"]],
    *[(["#0", "#1", "#2", "#10"], q) for q in ["#1", "#1, #2", "#10", "1", "#3"]],
    *[(["a", ",", "cat", "a", "cat"], q) for q in ["a cat", "a cat#2", ",", "cat"]],
    *[(["straße", "Σίσυφος", "café", "東京", "naïve", "don't", "3.5kg"], q) for q in
      ["STRASSE", "ΣΊΣΥΦΟΣ", "Café!", "東京", "NAÏVE", "don't", "3.5KG", "\"cafe\"", "kg"]],
]


def python_rule(labels: list[str], query: str) -> dict:
    """attention/selection.py's answer, loaded on its own (it is pure Python)."""
    import importlib.util
    import sys

    selection = sys.modules.get("enfoque_selection")
    if selection is None:
        spec = importlib.util.spec_from_file_location("enfoque_selection", REPO_ROOT / "attention" / "selection.py")
        selection = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = selection  # its dataclasses look their module up
        spec.loader.exec_module(selection)
    try:
        return {"picks": [list(p.indices) for p in selection.select(labels, query)]}
    except selection.NotAWord as exc:
        return {"error": exc.item}


@pytest.mark.server
def test_everyday_prompts_in_the_browser(comfy_server, browser_models, tmp_path):
    """Issue Step 18 (and Step 15's frontend): each item a user met, checked in the real frontend.

    tests/browser/everyday.mjs runs them on tiny_sd3_maps.json with a prompt that repeats words and reports
    each item on its own; here each must pass, the readout of a pointed pixel must equal the saved maps there,
    and the extension's word rule must select what attention/selection.py selects."""
    import safetensors.torch

    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    for old in ARTIFACTS.glob("everyday_*.png"):
        old.unlink()
    cases = tmp_path / "rule_cases.json"
    cases.write_text(json.dumps([{"labels": labels, "query": q} for labels, q in RULE_CASES]))
    result, _ = run_browser_script(comfy_server, EVERYDAY, ["--workflow", str(WORKFLOW), "--legacy", str(LEGACY),
                                                            "--cases", str(cases)], timeout=420)
    items = result["items"]
    expected = ["reload", "attention_maps_box", "repeated_words", "pointing", "cached", "failed_run", "frames",
                "stale_notice", "mask_notice", "bad_weights", "weights_per_position", "socket_colours", "word_rule",
                "server_names"]
    assert list(items) == expected
    failed = {name: item.get("error") for name, item in items.items() if not item["ok"]}
    assert not failed, "\n\n".join(f"{name}: {error}" for name, error in failed.items())
    # the JS rule and the Python rule select the same words
    for (labels, query), got in zip(RULE_CASES, items["word_rule"]["results"], strict=True):
        assert got == python_rule(labels, query), (labels, query)
    # pointing reads the run's own maps: the saved maps at the pointed cell
    saved = result["saved_maps"]
    path = comfy_server.output_dir / saved["subfolder"] / saved["filename"]
    maps = safetensors.torch.load_file(str(path))["maps"]
    pointing = items["pointing"]
    cell = pointing["cell"]
    assert (cell["gh"], cell["gw"]) == tuple(maps.shape[-2:]), "the grid is the maps' own token grid"
    for row in pointing["values"]:
        want = float(maps[0, row["index"], cell["gy"], cell["gx"]])
        assert row["value"] == pytest.approx(want, rel=2e-4, abs=1e-9), row
    print(f"everyday items: {', '.join(items)}; took {result['seconds']:.1f}s")


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


# --------------------------------------------------------------------------- what the chips are given (Step 18)


@pytest.mark.host
def test_pointing_grid_is_the_maps_at_token_grid_rounded_and_capped(comfy):
    """``enfoque_grid``: the first image's word maps as integers of each word's own scale, pooled to fit."""
    import torch

    previews = comfy.submodule("nodes.common.previews")
    g = torch.Generator().manual_seed(1)
    maps = torch.rand((2, 3, 8, 12), generator=g) * 0.05
    grid = previews.pointing_grid(maps)
    assert (grid["h"], grid["w"]) == (8, 12) and len(grid["values"]) == 3 and len(grid["values"][0]) == 96
    back = torch.tensor(grid["values"], dtype=torch.float64).reshape(3, 8, 12)
    back = back * torch.tensor(grid["scales"], dtype=torch.float64)[:, None, None] / previews.GRID_LEVELS
    torch.testing.assert_close(back, maps[0].double(), rtol=0, atol=float(maps.max()) / previews.GRID_LEVELS)
    assert json.loads(json.dumps(grid)) == grid
    # a large grid is average-pooled by a whole factor until it fits the budget
    big = torch.rand((1, 12, 128, 128), generator=g)
    pooled = previews.pointing_grid(big)
    assert 12 * pooled["h"] * pooled["w"] <= previews.GRID_MAX_VALUES and pooled["h"] == pooled["w"] == 32
    assert previews.pointing_grid(torch.zeros((1, 0, 4, 4))) is None


@pytest.mark.host
def test_heatmaps_say_where_each_panel_is(comfy):
    """``enfoque_panels``: each word's map in the picture, so pointing at a panel reads that word at that pixel."""
    import torch

    maps_mod = comfy.submodule("attention.maps")
    g = torch.Generator().manual_seed(2)
    words = ["a", "red", "cat", "on", "a"]
    maps = maps_mod.AttentionMaps(maps=torch.rand((1, 5, 6, 8), generator=g) * 0.05, words=words,
                                  meta={"image_size": [48, 64]})
    for image, columns in ((None, 0), (torch.rand((1, 48, 64, 3), generator=g), 2)):
        extra = {} if image is None else {"image": image}
        out = comfy.run("EnfoqueHeatmaps", maps=maps, colormap="viridis", opacity=1.0, normalisation="minmax",
                        columns=columns, **extra)
        picture = out[0]
        (p,) = out.ui["enfoque_panels"]
        assert p["count"] == 5 and p["top"] == 0 and p["width"] == picture.shape[2]
        assert p["columns"] * p["cell_w"] + (p["columns"] - 1) * p["gap"] == picture.shape[2]
        assert p["rows"] * p["cell_h"] + (p["rows"] - 1) * p["gap"] == picture.shape[1]
        assert p["map_h"] < p["cell_h"], "the caption is under the map"
        # the map of word 4 (the second "a") is where the layout says: it equals that word's own preview
        k = 4
        x0 = (k % p["columns"]) * (p["cell_w"] + p["gap"])
        y0 = (k // p["columns"]) * (p["cell_h"] + p["gap"])
        rows = picture[0, :, x0 : x0 + p["map_w"]].numpy()
        assert rows[y0 + p["map_h"] - 1].min() > 0.001, "the map's last row is coloured (viridis has no black)"
        assert rows[y0 + p["map_h"]].max() < 0.02, "the caption's black bar starts right under the map"
        assert rows[y0].min() > 0.001 and (y0 == 0 or rows[y0 - 1].max() < 0.2), "the map starts at the cell's top"
        assert out.ui["enfoque_words"] == words and len(out.ui["enfoque_grid"]) == 1


@pytest.mark.host
def test_heatmaps_over_steps_give_each_frame_its_chips(comfy, tiny_dir):
    """``enfoque_frames``: per frame (in picture order) its caption, shares, word previews and grid."""
    from test_canvas import sampled

    _, probe, _, out = sampled(comfy, tiny_dir, keep_steps=True, steps=3)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    heat = comfy.run("EnfoqueHeatmaps", maps=maps, colormap="viridis", opacity=0.6, normalisation="minmax",
                     columns=0, over="steps")
    frames = heat.ui["enfoque_frames"]
    assert len(frames) == len(heat.ui["images"]) == 3
    for k, f in enumerate(frames):
        assert f["caption"] == maps.steps[k].caption
        assert len(f["shares"]) == len(f["word_images"]) == len(maps.words)
        assert abs(sum(f["shares"]) - 1) < 1e-4
        assert f["grid"]["h"] == maps.maps.shape[-2] and len(f["grid"]["values"]) == len(maps.words)
    assert frames[0]["shares"] != frames[2]["shares"], "each frame has its own shares"
    (p,) = heat.ui["enfoque_panels"]
    assert p["top"] > 0, "a frame's panels sit under its caption bar"
    assert p["top"] + p["rows"] * p["cell_h"] + (p["rows"] - 1) * p["gap"] == heat[0].shape[1]
    assert len(json.dumps(heat.ui)) < 200_000


@pytest.mark.host
def test_attention_maps_send_the_negative_prompts_words_when_captured(comfy, tiny_dir):
    import tiny_models

    model = tiny_models.sd3(tiny_dir).model
    clip = comfy.run("EnfoquePatchCLIP", clip=tiny_models.clip_sd3(), weight_mode="attention", capture=True)[0]
    pos = comfy.run("CLIPTextEncode", clip=clip, text="a red cat on a red chair")[0]
    neg = comfy.run("CLIPTextEncode", clip=clip, text="blurry, dark")[0]
    sent = {}
    for capture_negative in (False, True):
        patched, probe = comfy.run("EnfoquePatchModel", model=model, capture=True, reweight="bias", blocks="all",
                                   start_percent=0.0, end_percent=1.0, capture_negative=capture_negative)
        latent = comfy.run("EmptySD3LatentImage", width=64, height=64, batch_size=1)[0]
        out = comfy.run("KSampler", model=patched, seed=1, steps=1, cfg=2.0, sampler_name="euler",
                        scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]
        sent[capture_negative] = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="red").ui
    assert "enfoque_negative" not in sent[False]
    (negative,) = sent[True]["enfoque_negative"]
    assert negative["words"] == ["blurry", "dark"] and len(negative["grid"]["values"]) == 2
    assert sent[True]["enfoque_words"] == ["red"]
    assert comfy.node("EnfoqueAttentionMaps").GET_SCHEMA().is_output_node, "its chips come back from the cache"


@pytest.mark.host
def test_maps_to_mask_says_why_its_mask_is_black(comfy):
    import torch

    maps_mod = comfy.submodule("attention.maps")
    pictures = comfy.submodule("nodes.pictures")
    sent = []
    real = pictures.notify
    pictures.notify = lambda node, text: sent.append((node, text))
    try:
        m = torch.rand((1, 3, 8, 8)) * 0.05
        m[:, 1] = 0  # "red" weighted 0: no attention anywhere
        maps = maps_mod.AttentionMaps(maps=m, words=["a", "red", "cat"], meta={})
        mask = comfy.run("EnfoqueMapsToMask", maps=maps, words="red", threshold=0.0, hidden={"UNIQUE_ID": "12"})[0]
        assert not mask.any()
        assert sent[-1][0] == "12" and sent[-1][1].startswith("Enfoque Maps To Mask: 'red' gets no attention anywhere")
        assert "so the mask is black" in sent[-1][1]
        comfy.run("EnfoqueMapsToMask", maps=maps, words="red, cat", threshold=0.0, hidden={"UNIQUE_ID": "12"})
        assert "adds nothing to the mask" in sent[-1][1]
        comfy.run("EnfoqueMapsToMask", maps=maps, words="cat", threshold=0.0, hidden={"UNIQUE_ID": "12"})
        assert sent[-1] == ("12", ""), "a mask with pixels clears the notice"
    finally:
        pictures.notify = real
