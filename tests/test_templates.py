"""The example workflows ComfyUI's template browser shows (example_workflows/*.json).

- They are what tools/templates.py writes (conventions in docs/templates.md).
- Each has a title of one pattern, "<Model> - <what it teaches>" (its file name), a
  description of what it teaches, a .jpg thumbnail next to it that shows what it gives
  (the shapes templates' own output, the others a labelled illustration), the groups
  "Load", "Encode", "Sample", "Look", a Note that names the model files and where they
  go and says what each Enfoque node in it does; one shows EnfoqueTokenWeights, one
  animates the maps over the steps with stock SaveAnimatedWEBP.
- Every model file a loader loads is listed on it with its folder and its https download
  address (the official files ComfyUI's own templates name), except the shapes model's,
  which come with the pack.
- The node under an Enfoque Attention Maps leaves it room to grow after a run.
- Their links and widget values agree with the live server's /object_info, and the
  server lists and serves them and their thumbnails.
- In the browser (tests/browser/templates.mjs): the template browser's cards show their
  thumbnails; opened from its card, each template's missing-models dialog lists its
  files with their folders and addresses, its Note starts with its description, and no
  two nodes overlap at their rendered size, before and after a run with its previews
  and chips showing, in the worst case for Enfoque Attention Maps; screenshots go to
  out/artifacts/frontend/.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import templates as tool  # tools/templates.py (conftest puts tools/ on the path)
from host import REPO_ROOT
from PIL import Image
from templates import FRONTEND_ONLY, widget_inputs
from test_frontend import (  # noqa: F401  (browser_models is a fixture)
    ARTIFACTS,
    BROWSER_DIR,
    CHROMIUM,
    browser_missing,
    browser_models,
    run_browser_script,
)

EXAMPLES = REPO_ROOT / "example_workflows"
GROUPS = ["Load", "Encode", "Sample", "Look"]
TITLE_H = 30
# the folder under models/ each loader reads its files from
LOADER_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "UNETLoader": "diffusion_models", "VAELoader": "vae",
                  "CLIPLoader": "text_encoders", "DualCLIPLoader": "text_encoders", "TripleCLIPLoader": "text_encoders"}
PACK_FILES = re.compile(r"enfoque_shapes_\w+\.safetensors")  # the shapes model's files: they come with the pack
MAPS_ROOM = 320  # under an Enfoque Attention Maps (it grows to 300 px after a run), measured from its top
THUMB_SIZE = (800, 600)


def display_names() -> dict[str, str]:
    """Node id -> display name, as nodes/names.py states them (read without importing ComfyUI)."""
    tree = ast.parse((REPO_ROOT / "nodes" / "names.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DISPLAY_NAMES":
            return ast.literal_eval(node.value)
    raise AssertionError("nodes/names.py has no DISPLAY_NAMES")


def ui_workflows() -> list[Path]:
    return sorted(EXAMPLES.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- files


def test_templates_are_what_the_tool_writes():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "templates.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_template_has_a_readable_title_and_a_thumbnail():
    paths = ui_workflows()
    assert len(paths) >= 4, [p.name for p in paths]
    for p in paths:
        title = p.stem  # the template browser shows the file name: one pattern, "<Model> - <what it teaches>"
        assert re.fullmatch(r"[A-Z][A-Za-z0-9.]*( [A-Za-z0-9.,]+)* - [a-z][a-z0-9 ,.]+", title), title
        thumb = p.with_suffix(".jpg")
        assert thumb.is_file(), f"{p.name}: no thumbnail {thumb.name}"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.size == THUMB_SIZE, (thumb.name, im.size)
        assert thumb.stat().st_size < 400_000
        assert load(p)["extra"]["info"]["title"] == title


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_template_has_groups_and_a_note(path):
    wf = load(path)
    assert [g["title"] for g in wf["groups"]] == GROUPS
    nodes = wf["nodes"]
    notes = [n for n in nodes if n["type"] in FRONTEND_ONLY]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    # the model files and where they go
    loaders = [n for n in nodes if n["type"].endswith("Loader") or n["type"].startswith("CheckpointLoader")]
    assert loaders
    for n in loaders:
        for value in n["widgets_values"]:
            if isinstance(value, str) and value.endswith(".safetensors"):
                assert value in text, f"{path.name}: the note does not name {value}"
    assert re.search(r"`(checkpoints|diffusion_models)/", text) and "`models/`" in text
    # what each Enfoque node here does, by its display name
    names = display_names()
    for node_type in sorted({n["type"] for n in nodes if n["type"].startswith("Enfoque")}):
        display = names[node_type]
        assert f"**{display}**" in text, f"{path.name}: the note does not explain {display}"
    # every node sits inside the group of its stage; nodes in the note column do not
    for n in nodes:
        x, y, w, h = n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H
        inside = [g["title"] for g in wf["groups"]
                  if g["bounding"][0] <= x and x + w <= g["bounding"][0] + g["bounding"][2]
                  and g["bounding"][1] <= y and y + h <= g["bounding"][1] + g["bounding"][3]]
        assert len(inside) == (0 if n["type"] in FRONTEND_ONLY else 1), (path.name, n["type"], inside)


def test_templates_show_token_weights_and_an_animation():
    types = {p.stem: {n["type"] for n in load(p)["nodes"]} for p in ui_workflows()}
    assert any("EnfoqueTokenWeights" in t for t in types.values())
    assert any("SaveAnimatedWEBP" in t for t in types.values())


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_saved_sizes_do_not_overlap(path):
    """The cheap check (the browser test measures the rendered sizes)."""
    rects = [(n["type"], n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H)
             for n in load(path)["nodes"]]
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
            dy = min(a[2] + a[4], b[2] + b[4]) - max(a[2], b[2])
            assert dx <= 0 or dy <= 0, f"{path.name}: {a[0]} and {b[0]} overlap"


def templates_by_name() -> dict:
    """What tools/templates.py builds for each template (name -> Template)."""
    return {t.name: t for t in (make() for make in tool.TEMPLATES)}


def note_of(workflow: dict) -> str:
    return next(n for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY)["widgets_values"][0]


def test_descriptions_say_what_the_template_teaches():
    """Each template carries a description (extra.info.description) that says what it teaches, in a sentence
    of its own (not its title again), and its Note opens with it, under the heading."""
    seen = set()
    for p in ui_workflows():
        wf = load(p)
        description = wf["extra"]["info"].get("description", "")
        assert 60 <= len(description) <= 240 and description.endswith("."), (p.stem, description)
        assert p.stem not in description, f"{p.stem}: the description repeats the title"
        assert description not in seen, f"{p.stem}: the same description as another template"
        seen.add(description)
        paragraphs = note_of(wf).split("\n\n")
        assert paragraphs[0].startswith("## ") and paragraphs[1] == description, (p.stem, paragraphs[:2])


def model_files(workflow: dict):
    """(loader node, file name) for every model file a loader loads."""
    for n in workflow["nodes"]:
        if n["type"] in LOADER_FOLDERS:
            for value in n["widgets_values"]:
                if isinstance(value, str) and value.endswith(".safetensors"):
                    yield n, value


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_every_model_file_is_listed_with_its_folder_and_download_address(path):
    """ComfyUI's missing-models dialog reads a loader's properties.models on load: each file the loader loads
    is listed there with the folder it goes in and an https address on the Hugging Face hub, and the Note
    names it in that folder. The shapes model's files come with the pack: no address, the Note says how to
    install them."""
    wf = load(path)
    note = note_of(wf)
    files = list(model_files(wf))
    assert files
    for node, name in files:
        listed = [m for m in node["properties"].get("models", []) if m["name"] == name]
        if PACK_FILES.fullmatch(name):
            assert not listed, f"{path.stem}: {name} comes with the pack; it has no download address"
            assert "no download" in note and "tools/shapes.py install" in note, path.stem
            continue
        assert len(listed) == 1, f"{path.stem}: {node['type']} does not list {name} in properties.models"
        model = listed[0]
        assert model["directory"] == LOADER_FOLDERS[node["type"]], (path.stem, model)
        assert re.fullmatch(r"https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/[\w./-]+", model["url"]), model
        assert model["url"].endswith("/" + name), model
        assert f"`{model['directory']}/{name}`" in note, f"{path.stem}: the Note does not name {model['directory']}/{name}"
    for n in wf["nodes"]:  # nothing listed that the loader does not load
        for m in n["properties"].get("models", []):
            assert m["name"] in n["widgets_values"], (path.stem, m)


def urls(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from urls(v)
    elif isinstance(value, list):
        for v in value:
            yield from urls(v)
    elif isinstance(value, str):
        yield from re.findall(r"\b[a-z][a-z0-9+.-]*://[^\s`)\]\"']+", value)


def test_every_address_in_every_template_is_https():
    for p in ui_workflows():
        found = list(urls(load(p)))
        assert all(u.startswith("https://") for u in found), (p.stem, [u for u in found if not u.startswith("https://")])
        if not all(PACK_FILES.fullmatch(name) for _, name in model_files(load(p))):
            assert found, f"{p.stem}: no download address"


def comfyui_template_models() -> dict[tuple[str, str], set[str]]:
    """(file, folder) -> the addresses ComfyUI's own templates give it (comfyui-workflow-templates)."""
    import importlib.util

    out: dict[tuple[str, str], set[str]] = {}
    for package in ("comfyui_workflow_templates_media_image", "comfyui_workflow_templates_media_video",
                    "comfyui_workflow_templates_media_other"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for f in Path(next(iter(spec.submodule_search_locations)), "templates").glob("*.json"):
            try:
                wf = json.loads(f.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if not isinstance(wf, dict):
                continue
            graphs = [wf, *((wf.get("definitions") or {}).get("subgraphs") or [])]
            for n in (n for g in graphs for n in g.get("nodes") or []):
                for m in (n.get("properties") or {}).get("models") or []:
                    url = m.get("url", "").removesuffix("?download=true")
                    out.setdefault((m.get("name"), m.get("directory")), set()).add(url)
    return out


def test_download_addresses_are_the_ones_comfyuis_own_templates_give():
    """The official files: each (file, folder, address) is one that ComfyUI's own templates name."""
    official = comfyui_template_models()
    if not official:
        pytest.skip("comfyui-workflow-templates is not installed (ComfyUI's requirements install it)")
    for p in ui_workflows():
        for n in load(p)["nodes"]:
            for m in n["properties"].get("models", []):
                assert m["url"] in official.get((m["name"], m["directory"]), set()), (p.stem, m)


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_attention_maps_leave_room_to_grow(path):
    """After a run Enfoque Attention Maps grows with its word chips, up to 300 px (then they scroll): any node
    under it (or beside it, where it could overlap) starts, title bar included, at least 320 px below its top,
    and its group holds it grown."""
    nodes = load(path)["nodes"]
    groups = load(path)["groups"]
    for m in (n for n in nodes if n["type"] == "EnfoqueAttentionMaps"):
        x0, x1, top = m["pos"][0], m["pos"][0] + m["size"][0], m["pos"][1]
        for n in nodes:
            if n is m or n["pos"][0] >= x1 or n["pos"][0] + n["size"][0] <= x0 or n["pos"][1] <= top:
                continue
            assert n["pos"][1] - TITLE_H >= top + MAPS_ROOM, (
                f"{path.stem}: {n['type']} starts {n['pos'][1] - TITLE_H - top} px below Enfoque Attention Maps' top")
        g = next(g for g in groups if g["bounding"][0] <= x0 and x1 <= g["bounding"][0] + g["bounding"][2]
                 and g["bounding"][1] <= top <= g["bounding"][1] + g["bounding"][3])
        assert g["bounding"][1] + g["bounding"][3] >= top + MAPS_ROOM - 20, path.stem


def difference(a: Image.Image, b: Image.Image, size: tuple[int, int] | None = None) -> float:
    """Mean absolute difference of two pictures (0..255), at ``size`` if given."""
    if size:
        a, b = (im.convert("RGB").resize(size, Image.Resampling.BOX) for im in (a, b))
    return float(np.abs(np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean())


@functools.cache
def fresh_illustration(name: str) -> Image.Image:
    return tool.illustration(templates_by_name()[name])


def test_thumbnails_of_the_other_models_are_labelled_illustrations():
    """Templates whose models are too large to run here get an illustration of their kind of result (Enfoque's
    renderer on synthetic maps with the template's words) labelled ILLUSTRATION: the committed one is what
    `tools/templates.py thumbnails` draws now. The shapes templates' carry the REAL OUTPUT label (their
    pictures: test_shapes_thumbnails_are_the_templates_own_output)."""
    pytest.importorskip("torch")
    for t in templates_by_name().values():
        with Image.open(EXAMPLES / f"{t.name}.jpg") as committed:
            committed.load()
        assert committed.size == THUMB_SIZE, f"{t.name}: a {committed.size} thumbnail is no picture the tool draws"
        if t.picture == "shapes":
            blank = tool.shapes_thumbnail(t, {"save": [Image.new("RGB", (128, 128))], "image": [Image.new("RGB", (8, 8))]})
            band = (0, 0, 240, 64)  # the badge
            assert difference(committed.crop(band), blank.crop(band), (60, 16)) < 4, t.name
            continue
        assert difference(committed, fresh_illustration(t.name)) < 3, (
            f"{t.name}: the thumbnail is not the labelled illustration; run `python tools/templates.py thumbnails`")


# --------------------------------------------------------------------------- against the server

def _socket_types(spec: dict) -> tuple[dict[str, str], list[str]]:
    """Input name -> type, and output types, from one /object_info entry."""
    inputs = {}
    for section in ("required", "optional"):
        for name, conf in (spec["input"].get(section) or {}).items():
            t = conf[0]
            inputs[name] = "COMBO" if isinstance(t, list) else t
    return inputs, list(spec["output"])


@pytest.mark.server
@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_example_workflow_is_consistent(comfy_server, path):
    wf = load(path)
    info = comfy_server.object_info()
    assert {"nodes", "links", "version", "last_node_id", "last_link_id"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert max(nodes) <= wf["last_node_id"]
    types = {n["type"] for n in nodes.values()}
    # what a template shows: heatmaps, or (moving a word) the mask a map makes, fed to a region
    shown = {"EnfoqueMapsToMask", "EnfoqueRegion"} if "EnfoqueRegion" in types and "EnfoqueHeatmaps" not in types \
        else {"EnfoqueHeatmaps"}
    core = {"EnfoquePatchCLIP", "EnfoquePatchModel"} | shown
    # a picture the user has (Enfoque Image Maps) or one the sampler makes
    core |= {"EnfoqueImageMaps", "VAEEncode"} if "EnfoqueImageMaps" in types else {
        "EnfoqueAttentionMaps", "KSampler", "VAEDecode"}
    assert core <= types
    missing = types - set(info) - FRONTEND_ONLY
    assert not missing, f"{path.name}: node types unknown to the server: {sorted(missing)}"

    link_ids = set()
    for link in wf["links"]:
        lid, src, src_slot, dst, dst_slot, ltype = link
        assert lid not in link_ids and lid <= wf["last_link_id"]
        link_ids.add(lid)
        assert src in nodes and dst in nodes, f"link {lid} has a missing endpoint"
        s, d = nodes[src], nodes[dst]
        out = s["outputs"][src_slot]
        inp = d["inputs"][dst_slot]
        assert lid in (out.get("links") or []), f"link {lid} not listed on node {src} output {src_slot}"
        assert inp.get("link") == lid, f"link {lid} not set on node {dst} input {dst_slot}"
        _, out_types = _socket_types(info[s["type"]])
        in_types, _ = _socket_types(info[d["type"]])
        assert out["type"] == out_types[src_slot] == ltype, f"link {lid}: output type"
        assert inp["name"] in in_types, f"link {lid}: {d['type']} has no input {inp['name']!r}"
        assert in_types[inp["name"]] in (ltype, "*"), f"link {lid}: {ltype} into {d['type']}.{inp['name']}"

    for n in nodes.values():
        if n["type"] in FRONTEND_ONLY:
            continue
        in_types, out_types = _socket_types(info[n["type"]])
        for i, inp in enumerate(n.get("inputs") or []):
            assert inp["name"] in in_types, f"{n['type']} has no input {inp['name']!r}"
            if inp.get("link") is not None:
                assert inp["link"] in link_ids, f"node {n['id']} input {i} points to a missing link"
        for o, out in enumerate(n.get("outputs") or []):
            assert out["type"] == out_types[o]
            for lid in out.get("links") or []:
                assert lid in link_ids
        # every required socket is wired, and the widget values match the node's widgets
        connected = {inp["name"] for inp in n.get("inputs") or [] if inp.get("link") is not None}
        widgets = dict(widget_inputs(info[n["type"]]))
        for name in info[n["type"]]["input"].get("required") or {}:
            if name not in widgets:
                assert name in connected, f"{path.name}: {n['type']} (node {n['id']}) input {name!r} unconnected"
        assert len(n.get("widgets_values") or []) == sum(widgets.values()), (
            f"{path.name}: widget values of {n['type']} (node {n['id']})"
        )


@pytest.mark.server
def test_template_browser_lists_and_serves_templates_and_thumbnails(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates.get("enfoque", [])) == sorted(p.stem for p in ui_workflows())
    for p in ui_workflows():
        # the frontend fetches /api/workflow_templates/<pack>/<name>.json and <name>.jpg
        base = f"{comfy_server.url}/api/workflow_templates/enfoque/{urllib.parse.quote(p.stem)}"
        with urllib.request.urlopen(base + ".json", timeout=30) as r:
            assert json.loads(r.read()) == load(p)
        with urllib.request.urlopen(base + ".jpg", timeout=30) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read() == p.with_suffix(".jpg").read_bytes()


@pytest.mark.server
def test_shapes_thumbnails_are_the_templates_own_output(comfy_server):
    """Each shapes template's thumbnail is its own output: the template queued as the frontend queues it on the
    installed shapes model, its picture and its Enfoque Heatmaps composed as `tools/templates.py thumbnails`
    composes them (a CPU whose float sums differ may shift a few pixels: a small tolerance)."""
    import shapes

    if not (shapes.MODELS / shapes.DIT_FILE).is_file():
        pytest.skip("models/ lacks the shapes model files (run `python tools/shapes.py train`)")
    shapes.install(comfy_server.models_dir)  # the example picture: the comfy_server fixture writes it
    for t in (t for t in templates_by_name().values() if t.picture == "shapes"):
        fresh = tool.shapes_thumbnail(t, tool.shapes_outputs(comfy_server, t))
        with Image.open(EXAMPLES / f"{t.name}.jpg") as committed:
            assert committed.size == THUMB_SIZE, f"{t.name}: a {committed.size} thumbnail is no picture the tool draws"
            assert difference(committed, fresh) < 6, (
                f"{t.name}: the thumbnail is not the template's output; run `python tools/templates.py thumbnails`")


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def in_the_browser(comfy_server, browser_models):  # noqa: F811  (browser_models: the fixture)
    """tests/browser/templates.mjs, run once: the template browser's cards, then each template opened from its
    card, measured, run and measured again."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    for old in ARTIFACTS.glob("template*.png"):  # template_*.png, templates_browser.png, templates_failure.png
        old.unlink()
    result, _ = run_browser_script(comfy_server, BROWSER_DIR / "templates.mjs", ["--templates", str(EXAMPLES)],
                                   timeout=900)
    assert set(result["templates"]) == {p.stem for p in ui_workflows()}
    return result


@pytest.mark.server
def test_template_browser_cards_show_what_each_template_gives(in_the_browser):
    """Workflow > Browse Templates, the pack's category: one card per template, titled with its name, showing
    its thumbnail (800x600: the committed picture, which for the other models is the labelled illustration)."""
    cards = in_the_browser["cards"]
    assert sorted(cards) == sorted(p.stem for p in ui_workflows())
    for name, card in cards.items():
        thumb = card["thumbnail"]
        assert card["title"] == name and thumb and (thumb["width"], thumb["height"]) == THUMB_SIZE, (name, card)
        shown = Image.frombytes("RGB", (32, 24), bytes(thumb["pixels"]))
        with Image.open(EXAMPLES / f"{name}.jpg") as committed:
            assert difference(shown, committed, (32, 24)) < 10, f"{name}: the card does not show {name}.jpg"
        if templates_by_name()[name].picture != "shapes":
            assert difference(shown, fresh_illustration(name), (32, 24)) < 10, name
        print(f"card {name!r}: description {card['description']!r}")


@pytest.mark.server
def test_missing_models_dialog_lists_each_file_with_its_folder_and_address(in_the_browser):
    """Opened from its card with none of its model files on the server, each template makes ComfyUI's missing-
    models dialog list exactly the files it loads, each as "<folder> / <file>" with its https address and a
    working Download button; the shapes templates (their files come with the pack) open no such dialog."""
    for p in ui_workflows():
        expected = sorted({(m["directory"] + " / " + m["name"], m["url"])
                           for n in load(p)["nodes"] for m in n["properties"].get("models", [])})
        listed = in_the_browser["templates"][p.stem]["missing_models"]
        assert sorted((e["label"], e["url"]) for e in listed) == expected, p.stem
        assert all(e["enabled"] and not e["error"] and e["url"].startswith("https://") for e in listed), listed
        if not all(PACK_FILES.fullmatch(name) for _, name in model_files(load(p))):
            assert listed, f"{p.stem}: no missing-models dialog"


@pytest.mark.server
def test_opened_template_shows_its_description_first(in_the_browser):
    """Opened from its card, the template's Note reads its description first, under its heading."""
    for p in ui_workflows():
        (note,) = in_the_browser["templates"][p.stem]["notes"]
        assert note.split("\n\n")[1] == load(p)["extra"]["info"]["description"], p.stem


@pytest.mark.server
def test_templates_in_the_browser_never_overlap(in_the_browser):
    """Each template opened from its card in the real frontend, measured before and after a run with its
    previews and chips showing: no overlapping nodes, none smaller than its content, no chips outside their
    node. The run is the worst case for Enfoque Attention Maps (every word of a long prompt), and after it
    each one is measured as tall as the frontend lets it grow (300 px)."""
    result = in_the_browser
    for name, entry in result["templates"].items():
        for phase in ("before", "after"):
            seen = entry[phase]
            assert seen["overlaps"] == [], f"{name}, {phase} the run: overlapping nodes {seen['overlaps']}"
            assert seen["undersized"] == [], f"{name}, {phase} the run: nodes smaller than their content"
            assert seen["dom"] == [], f"{name}, {phase} the run: widgets outside their node {seen['dom']}"
            assert seen["clipped"] == [], f"{name}, {phase} the run: widgets cut off {seen['clipped']}"
        assert entry["groups"] == GROUPS
        assert any(c["chips"] for c in entry["chips"]), f"{name}: no word chips after the run"
        print(f"{name}: {entry['before']['nodes']} nodes; Attention Maps after the run: {entry['maps_heights']} px; "
              f"grown by the run: {entry['grown']}")
    shots = [Path(s) for s in result["screenshots"]]
    assert all(s.is_file() and s.parent == ARTIFACTS for s in shots)
    print(f"screenshots: {len(shots)} in {ARTIFACTS}; the check took {result['seconds']:.1f}s on {CHROMIUM}")
