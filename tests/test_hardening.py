"""Step 7 · Hardening.

- Bad input for every pack node, through a LIVE server: ComfyUI's own validation
  (HTTP 400, naming node and input) or a ValueError from the node that names it and
  the fix; never another exception type; the next good prompt still works.
- Long input: a 100 kB prompt through EnfoquePatchCLIP + CLIPTextEncode, 100 kB
  strings in every text input.
- Composition (in-process): an earlier attention override with its own kernel (a
  stand-in for Sage attention), ComfyUI's SAG / PAG / skip-layer guidance, a LoRA,
  two EnfoquePatchModel in a row, a hires-fix graph.
- Lifecycle: no tensors kept after a run, interrupted or failed runs leave nothing
  behind, 50 prompts on a live server keep its memory flat.
- The capture budget refusal through the live server.
"""

from __future__ import annotations

import gc
import json
import math
import re
import time
import weakref
from pathlib import Path

import pytest
import tiny_models
import torch
from helpers import patch

pytestmark = pytest.mark.host

PROMPT = "a red cat on a blue chair"
PROMPT_WORDS = ["a", "red", "cat", "on", "a", "blue", "chair"]


# =========================================================================== live server: bad input


def graph(seed: int = 1, prefix: str = "hardening/maps") -> dict:
    """Every pack node in one API-format graph on the server's tiny SD3 and CLIP-L."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_clip_l.safetensors", "type": "sd3"}},
        "3": {"class_type": "EnfoquePatchCLIP", "inputs": {"clip": ["2", 0], "weight_mode": "attention",
                                                           "capture": True}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["3", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["3", 0]}},
        "6": {"class_type": "EnfoqueTokenWeights", "inputs": {"conditioning": ["4", 0], "weights": "cat:1.5"}},
        "7": {"class_type": "EnfoquePatchModel", "inputs": {
            "model": ["1", 0], "capture": True, "reweight": "bias", "blocks": "all",
            "start_percent": 0.0, "end_percent": 1.0}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": seed, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["6", 0], "negative": ["5", 0], "latent_image": ["8", 0],
            "denoise": 1.0}},
        "10": {"class_type": "EnfoqueAttentionMaps", "inputs": {"probe": ["7", 1], "latent": ["9", 0], "words": ""}},
        "11": {"class_type": "EnfoqueHeatmaps", "inputs": {
            "maps": ["10", 0], "colormap": "viridis", "opacity": 0.6, "normalisation": "minmax", "columns": 0}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
        "13": {"class_type": "EnfoqueMapsToMask", "inputs": {"maps": ["10", 0], "words": "cat", "threshold": 0.0}},
        "14": {"class_type": "MaskToImage", "inputs": {"mask": ["13", 0]}},
        "15": {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}},
        "16": {"class_type": "EnfoqueSaveAttentionMaps", "inputs": {
            "maps": ["10", 0], "filename_prefix": prefix, "format": "safetensors"}},
        "17": {"class_type": "EnfoqueTextAttentionMaps", "inputs": {"probe": ["3", 1], "conditioning": ["4", 0]}},
        "18": {"class_type": "PreviewImage", "inputs": {"images": ["17", 1]}},
    }


def load_graph(file: str) -> dict:
    return {
        "1": {"class_type": "EnfoqueLoadAttentionMaps", "inputs": {"file": file}},
        "2": {"class_type": "EnfoqueHeatmaps", "inputs": {
            "maps": ["1", 0], "colormap": "viridis", "opacity": 0.6, "normalisation": "minmax", "columns": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def finish(server, prompt_id: str, timeout: float = 60.0) -> dict:
    """The history entry once the prompt is done, failed or interrupted (no raising)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.history(prompt_id)
        status = (entry or {}).get("status") or {}
        if entry is not None and (status.get("completed") or status.get("status_str") == "error"):
            return entry
        assert server.proc.poll() is None, f"the server died:\n{server.log()[-4000:]}"
        time.sleep(0.05)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")


def saved_maps(server, entry: dict, node: str = "16"):
    import safetensors

    (f,) = entry["outputs"][node]["enfoque_files"]
    path = server.output_dir / f["subfolder"] / f["filename"]
    with safetensors.safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        maps = fh.get_tensor("maps")
    return maps, meta


_seeds = iter(range(1000, 100000))


def run_good(server) -> dict:
    """The good graph with a fresh seed (so ComfyUI's cache cannot skip the sampler) must work."""
    entry = finish(server, server.post_prompt(graph(seed=next(_seeds))))
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status)[:3000]
    maps, _ = saved_maps(server, entry)
    assert maps.shape[:2] == (1, len(PROMPT_WORDS)) and torch.isfinite(maps).all()
    return entry


def expect_error(server, prompt: dict, node_type: str, *needles: str, owner: str | None = None) -> str:
    """Posts a bad prompt; returns where it was refused ("validation" or "execution").

    Validation: ComfyUI refuses the node's outputs (HTTP 400, or the outputs that do not
    depend on it run) and names the node class and the input. Execution: the failing
    node is `node_type`, the exception a ValueError in the pack's one error style (`check_style`)
    naming the node that owns the input (`owner`, default `node_type`), and containing `needles`:
    each case's needles hold the bad value, what is available where there is a choice, and the fix."""
    try:
        response = server.request("POST", "/prompt", {"prompt": prompt, "client_id": server.client_id})
        node_errors = response.get("node_errors") or {}
        if node_errors:
            finish(server, response["prompt_id"])  # the outputs that do not depend on the bad node
    except RuntimeError as exc:
        text = str(exc)
        assert "HTTP 400" in text, text[:2000]
        node_errors = json.loads(text.split("HTTP 400: ", 1)[1]).get("node_errors") or {}
        assert node_errors, text[:2000]
    if node_errors:
        errors = [e for e in node_errors.values() if e.get("class_type") == node_type]
        assert errors, f"no node error for {node_type}: {json.dumps(node_errors)[:2000]}"
        detail = json.dumps(errors)
        for n in needles:
            assert n in detail, f"{n!r} not in {detail[:2000]}"
        return "validation"
    prompt_id = response["prompt_id"]
    entry = finish(server, prompt_id)
    status = entry["status"]
    assert status["status_str"] == "error", f"the bad prompt succeeded: {json.dumps(status)[:2000]}"
    (err,) = [d for ev, d in status["messages"] if ev == "execution_error"]
    message = err["exception_message"]
    assert err["node_type"] == node_type, (err["node_type"], message)
    assert err["exception_type"] == "ValueError", (err["exception_type"], message)
    # errors name the node by its display name (the server's /object_info says it)
    check_style(message, server.object_info()[owner or node_type]["display_name"])
    for n in needles:
        assert n in message, f"{n!r} not in {message!r}"
    assert len(message) < 2000, f"an error message of {len(message)} characters"
    run_good(server)  # and the server goes on serving
    return "execution"


# an internal prefix ("select: ", "heatmap_panels: "), a node id or a class name of the pack in a message
INTERNAL = re.compile(r"^(?:[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*: )|\bEnfoque[A-Z]\w*|\b(?:AttentionMaps|"
                      r"FramedMaps|ModelProbe|ClipProbe|ProbeResult|TokenLayout)\b")


def check_style(message: str, name: str) -> None:
    """The pack's one error style: the node's display name once, in front; no internal names after it."""
    assert message.startswith(f"{name}: "), message
    assert message.count(name) == 1, f"{name!r} more than once: {message!r}"
    rest = message[len(name) + 2:]
    assert not INTERNAL.search(rest), f"an internal name in {message!r}: {INTERNAL.search(rest).group(0)!r}"


def changed(g: dict, node: str, **inputs) -> dict:
    g = json.loads(json.dumps(g))
    g[node]["inputs"].update(inputs)
    return g


LONG_TEXT = ("a small red cat sitting on a blue wooden chair in the sunny garden, " * 1500)[:100_000]

# (case id, node to change, its new inputs, failing node, owner of the message, needles); a COMBO value is refused by
# ComfyUI's validation on 0.8.0 ("'loud' not in ['off', ...]") and by the node itself on 0.3.64 ("options: off, ...")
BAD_INPUTS = [
    # EnfoquePatchModel
    ("model-not-a-model", "7", {"model": ["2", 0]}, "EnfoquePatchModel", None, ("MODEL", "CLIP")),
    ("reweight-unknown", "7", {"reweight": "loud"}, "EnfoquePatchModel", None, ("reweight", "'loud'", "scale")),
    ("start-not-a-number", "7", {"start_percent": "soon"}, "EnfoquePatchModel", None, ("start_percent", "soon")),
    ("end-above-max", "7", {"end_percent": 2.0}, "EnfoquePatchModel", None, ("end_percent", "2.0", "max of 1.0")),
    ("budget-negative", "7", {"budget_mb": -5.0}, "EnfoquePatchModel", None, ("budget_mb", "-5.0", "min of 1.0")),
    ("blocks-out-of-range", "7", {"blocks": "99"}, "EnfoquePatchModel", None,
     ("blocks '99'", "block 99 is out of range", "2 blocks (0-1)", "Pick blocks within 0-1, or 'all'")),
    ("blocks-wrong-type", "7", {"blocks": 5}, "EnfoquePatchModel", None,
     ("blocks '5'", "block 5 is out of range", "Pick blocks within 0-1")),
    ("blocks-backwards", "7", {"blocks": "1-0"}, "EnfoquePatchModel", None,
     ("blocks '1-0'", "runs backwards", "write 0-1")),
    ("blocks-garbage", "7", {"blocks": "first"}, "EnfoquePatchModel", None,
     ("blocks 'first'", "cannot read 'first'", "write 'all', a range like '8-16' or a list like '0,3,5'")),
    ("blocks-100kB", "7", {"blocks": "x" * 100_000}, "EnfoquePatchModel", None,
     ("cannot read 'xxx", "...'", "write 'all'")),
    ("start-after-end", "7", {"start_percent": 0.8, "end_percent": 0.2}, "EnfoquePatchModel", None,
     ("start_percent 0.8 is after end_percent 0.2", "set start_percent to at most end_percent")),
    ("start-nan", "7", {"start_percent": math.nan}, "EnfoquePatchModel", None,
     ("start_percent 'nan' is not a number", "set it to a number")),
    ("budget-nan", "7", {"budget_mb": math.nan}, "EnfoquePatchModel", None,
     ("budget_mb 'nan' is not a number", "set it to a number")),
    ("capture-words-unknown", "7", {"capture_words": "dog"}, "KSampler", "EnfoquePatchModel",
     ("'dog' in capture_words is not a word of the positive prompt", "its words: a, red, cat, on, blue, chair.",
      "leave it empty")),
    ("capture-words-100kB", "7", {"capture_words": "zebra " * 20_000}, "KSampler", "EnfoquePatchModel",
     ("'zebra zebra", "...' in capture_words is not a word of the positive prompt", "leave it empty")),
    # EnfoquePatchCLIP
    ("clip-not-a-clip", "3", {"clip": ["1", 0]}, "EnfoquePatchCLIP", None, ("CLIP", "MODEL")),
    ("weight-mode-unknown", "3", {"weight_mode": "louder"}, "EnfoquePatchCLIP", None,
     ("weight_mode", "'louder'", "attention")),
    ("prompt-weight-nan", "4", {"text": "a red (cat:nan) on a blue chair"}, "CLIPTextEncode", "EnfoquePatchCLIP",
     ("the prompt weight nan is not a finite number", "write weights such as (cat:1.2)")),
    ("prompt-weight-negative", "4", {"text": "a red (cat:-1) on a blue chair"}, "CLIPTextEncode",
     "EnfoquePatchCLIP", ("the prompt weight -1 is negative", "use weights >= 0", "weight_mode 'comfy'")),
    # EnfoqueTokenWeights
    ("weights-negative", "6", {"weights": "cat:-1"}, "EnfoqueTokenWeights", None,
     ("weight -1 for 'cat' is negative", "use 0")),
    ("weights-nan", "6", {"weights": "cat:nan"}, "EnfoqueTokenWeights", None,
     ("cannot read 'cat:nan'", "write word:weight pairs")),
    ("weights-inf", "6", {"weights": "cat:1e999"}, "EnfoqueTokenWeights", None,
     ("weight '1e999' for 'cat' is too large", "use a weight such as")),
    ("weights-no-number", "6", {"weights": "cat"}, "EnfoqueTokenWeights", None,
     ("cannot read 'cat'", "write word:weight pairs")),
    ("weights-unknown-word", "6", {"weights": "dog:2"}, "EnfoqueTokenWeights", None,
     ("'dog' in weights is not a word of the prompt", "its words: a, red, cat, on, blue, chair.",
      "Weigh words from these")),
    ("weights-100kB-unknown", "6", {"weights": "zebra:1, " * 11_000}, "EnfoqueTokenWeights", None,
     ("'zebra' in weights is not a word", "a, red, cat, on, blue, chair.", "Weigh words from these")),
    ("weights-stock-clip", "6", {"conditioning": ["22", 0]}, "EnfoqueTokenWeights", None,
     ("encoded by a stock CLIP", "Put Enfoque Patch CLIP before")),
    ("weights-not-conditioning", "6", {"conditioning": ["8", 0]}, "EnfoqueTokenWeights", None,
     ("CONDITIONING", "LATENT")),
    # EnfoqueAttentionMaps
    # the probes' socket types differ: ComfyUI's validation refuses a wrong one, naming both types
    ("maps-probe-from-clip", "10", {"probe": ["3", 1]}, "EnfoqueAttentionMaps", None,
     ("ENFOQUE_CLIP_PROBE", "ENFOQUE_MODEL_PROBE")),
    ("maps-probe-not-a-probe", "10", {"probe": ["1", 0]}, "EnfoqueAttentionMaps", None, ("ENFOQUE_MODEL_PROBE",)),
    ("maps-unknown-word", "10", {"words": "dog"}, "EnfoqueAttentionMaps", None,
     ("'dog' in words is not a captured word of the prompt", "captured words: a, red, cat, on, blue, chair.",
      "Pick words from these")),
    ("maps-100kB-words", "10", {"words": "zebra " * 20_000}, "EnfoqueAttentionMaps", None,
     ("'zebra zebra", "...' in words is not a captured word of the prompt", "Pick words from these")),
    ("maps-negative-not-captured", "10", {"prompt": "negative"}, "EnfoqueAttentionMaps", None,
     ("no maps of the negative prompt number 0", "recorded: positive #0", "turn on capture_negative")),
    ("maps-prompt-unknown", "10", {"prompt": "neutral"}, "EnfoqueAttentionMaps", None,
     ("prompt", "'neutral'", "positive")),
    ("maps-cond-index", "10", {"cond_index": 3}, "EnfoqueAttentionMaps", None,
     ("positive prompt number 3", "recorded: positive #0", "Set prompt and prompt_number to one of these")),
    ("maps-latent-of-another-size", "10", {"latent": ["20", 0]}, "EnfoqueAttentionMaps", None,
     ("no sampling run of this probe matches the latent (1 image(s) on a 16x16 grid)",
      "recorded runs: 1 image(s) on a 8x8 grid", "Connect the LATENT output")),
    ("maps-probe-never-sampled", "10", {"probe": ["21", 1]}, "EnfoqueAttentionMaps", None,
     ("no finished sampling run", "connect the LATENT output of a sampler")),
    # EnfoqueTextAttentionMaps
    ("text-probe-from-model", "17", {"probe": ["7", 1]}, "EnfoqueTextAttentionMaps", None,
     ("ENFOQUE_MODEL_PROBE", "ENFOQUE_CLIP_PROBE")),
    ("text-stock-conditioning", "17", {"conditioning": ["22", 0]}, "EnfoqueTextAttentionMaps", None,
     ("not encoded by the CLIP of this probe", "connect the CLIP output of Enfoque Patch CLIP")),
    ("text-encoder-absent", "17", {"encoder": "g"}, "EnfoqueTextAttentionMaps", None,
     ("encoder 'g' did not run", "encoders that ran: l.", "Pick one of them, or auto")),
    ("text-layer-out-of-range", "17", {"layer": 40}, "EnfoqueTextAttentionMaps", None,
     ("layer 40 is out of range", "12 layers (0-11)", "Pick one of them")),
    ("text-layer-above-max", "17", {"layer": 500}, "EnfoqueTextAttentionMaps", None, ("layer", "500", "max of 128")),
    ("text-encoder-unknown", "17", {"encoder": "clip_x"}, "EnfoqueTextAttentionMaps", None,
     ("encoder", "'clip_x'", "t5xxl")),
    ("text-level-unknown", "17", {"level": "letters"}, "EnfoqueTextAttentionMaps", None,
     ("level", "'letters'", "tokens")),
    ("text-empty-prompt", "text-only", {"text": ""}, "EnfoqueTextAttentionMaps", None,
     ("no words in encoder 'l'", "give it words, or set level to tokens")),
    # EnfoqueHeatmaps
    ("heatmaps-colormap", "11", {"colormap": "rainbowish"}, "EnfoqueHeatmaps", None,
     ("colormap", "'rainbowish'", "viridis")),
    ("heatmaps-opacity-nan", "11", {"opacity": math.nan}, "EnfoqueHeatmaps", None,
     ("opacity nan is outside 0..1", "set it between 0")),
    ("heatmaps-columns", "11", {"columns": -1}, "EnfoqueHeatmaps", None, ("columns", "-1", "min of 0")),
    # EnfoqueMapsToMask
    ("mask-unknown-word", "13", {"words": "dog"}, "EnfoqueMapsToMask", None,
     ("word 'dog' is not among the map labels", "'a', 'red', 'cat', 'on', 'blue', 'chair'.",
      "Pick words from these")),
    ("mask-100kB-words", "13", {"words": "zebra, " * 15_000}, "EnfoqueMapsToMask", None,
     ("word 'zebra' is not among", "Pick words from these")),
    ("mask-threshold-nan", "13", {"threshold": math.nan}, "EnfoqueMapsToMask", None,
     ("threshold nan is outside 0..1", "set it between 0 and 1")),
    ("mask-threshold-above-max", "13", {"threshold": 2.0}, "EnfoqueMapsToMask", None,
     ("threshold", "2.0", "max of 1.0")),
    # EnfoqueSaveAttentionMaps
    ("save-empty-prefix", "16", {"filename_prefix": ""}, "EnfoqueSaveAttentionMaps", None,
     ("filename_prefix '' has no file name", "use e.g. 'enfoque/maps'")),
    ("save-escaping-prefix", "16", {"filename_prefix": "../../escape/maps"}, "EnfoqueSaveAttentionMaps", None,
     ("'../../escape/maps' points outside the output folder", "use a relative prefix")),
    ("save-100kB-prefix", "16", {"filename_prefix": "m" * 100_000}, "EnfoqueSaveAttentionMaps", None,
     ("cannot write 'mmm", "use a shorter filename_prefix")),
    ("save-format", "16", {"format": "tiff"}, "EnfoqueSaveAttentionMaps", None, ("format", "'tiff'", "npz")),
]


def bad_graph(node: str, inputs: dict) -> dict:
    g = graph(seed=7)
    if node == "text-only":  # only EnfoqueTextAttentionMaps as an output: nothing else may fail first
        g = {k: v for k, v in g.items() if k in ("1", "2", "3", "4", "5", "17", "18")}
        g = changed(g, "4", **inputs)
    else:
        g = changed(g, node, **inputs)
    # helpers some cases link to: a latent of another size, a patched model no sampler uses, a stock encode
    g["20"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}}
    g["21"] = {"class_type": "EnfoquePatchModel", "inputs": {
        "model": ["1", 0], "capture": True, "reweight": "bias", "blocks": "0", "start_percent": 0.0,
        "end_percent": 1.0}}
    g["22"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}}
    return g


@pytest.fixture(scope="module")
def server(comfy, comfy_server):
    run_good(comfy_server)  # loads the models once
    return comfy_server


@pytest.mark.server
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_live(server, case):
    _, node, inputs, failing, owner, needles = case
    expect_error(server, bad_graph(node, inputs), failing, *needles, owner=owner)


@pytest.mark.server
def test_bad_maps_files_live(comfy, server):
    """Files that are not maps, broken maps and NaN maps: refused by EnfoqueLoadAttentionMaps."""
    import safetensors.torch

    export = comfy.submodule("attention.export")
    maps_mod = comfy.submodule("attention.maps")
    folder = server.input_dir / "hardening"
    folder.mkdir(exist_ok=True)
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)
    good = maps_mod.AttentionMaps(maps=torch.rand(1, 2, 4, 4), words=["red", "cat"], meta={"image_size": [32, 32]})
    export.save_safetensors(good, folder / "good.safetensors")
    with safetensors.safe_open(str(folder / "good.safetensors"), "pt") as fh:
        metadata = fh.metadata()
    bad = torch.rand(1, 2, 4, 4)
    bad[0, 1, 2, 2] = math.nan
    safetensors.torch.save_file({"maps": bad}, str(folder / "nan.safetensors"), metadata=metadata)
    safetensors.torch.save_file({"maps": torch.rand(1, 3, 4, 4)}, str(folder / "mismatch.safetensors"),
                                metadata=metadata)  # 3 maps, 2 words

    assert expect_error(server, load_graph("hardening/missing.safetensors"), "EnfoqueLoadAttentionMaps",
                        "Enfoque Load Attention Maps: file 'hardening/missing.safetensors' was not found",
                        "copy it there") == "validation"
    assert expect_error(server, load_graph("../../etc/passwd.safetensors"), "EnfoqueLoadAttentionMaps",
                        "Enfoque Load Attention Maps: file '../../etc/passwd.safetensors' is outside",
                        "pick a file from the list") == "validation"
    assert expect_error(server, load_graph("hardening/garbage.safetensors"), "EnfoqueLoadAttentionMaps",
                        "Enfoque Load Attention Maps: 'hardening/garbage.safetensors' is not an Enfoque "
                        "attention-maps file", "pick a file saved by Enfoque Save Attention Maps") == "validation"
    expect_error(server, load_graph("hardening/nan.safetensors"), "EnfoqueLoadAttentionMaps",
                 "cannot load 'hardening/nan.safetensors': the maps hold NaN values", "Save it again")
    expect_error(server, load_graph("hardening/mismatch.safetensors"), "EnfoqueLoadAttentionMaps",
                 "cannot load 'hardening/mismatch.safetensors': 3 word maps but 2 labels (red, cat)", "Save it again")
    entry = finish(server, server.post_prompt(load_graph("hardening/good.safetensors")))
    assert entry["status"]["status_str"] == "success"


@pytest.mark.server
def test_valid_long_strings_live(server):
    """100 kB of valid text in the string inputs works: repeated words are one map, one weight."""
    g = graph(seed=next(_seeds))
    g["6"]["inputs"]["weights"] = "cat:1.5, " * 11_000
    g["10"]["inputs"]["words"] = "cat, " * 20_000
    g["13"]["inputs"]["words"] = "cat, " * 20_000
    g["7"]["inputs"]["blocks"] = "0," * 50_000 + "1"
    t0 = time.perf_counter()
    entry = finish(server, server.post_prompt(g))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    assert time.perf_counter() - t0 < 30
    maps, _ = saved_maps(server, entry)
    assert maps.shape[:2] == (1, 1)


@pytest.mark.server
def test_budget_refusal_live(server):
    """10 token maps (7 words, the start, end and padding tokens) x 64 images x a 32x32 grid need 2.5 MB of
    running sums: refused before sampling starts."""
    g = changed(graph(seed=next(_seeds)), "7", budget_mb=1.0)
    g["8"]["inputs"].update(width=512, height=512, batch_size=64)
    t0 = time.perf_counter()
    expect_error(server, g, "KSampler", "capturing 10 token maps for 64 image(s) on a 32x32 grid needs 2 MB, "
                 "over the budget of 1 MB; raise budget_mb", owner="EnfoquePatchModel")
    assert time.perf_counter() - t0 < 20  # (sampling 64 images at 512 px would take minutes here)


# =========================================================================== long prompts, in-process


def test_100kB_prompt_patched_clip(comfy):
    """A 100 kB prompt (295 CLIP chunks) through EnfoquePatchCLIP + CLIPTextEncode: it works, and costs about
    what the stock encode costs (the layout, the weights and the capture stay linear in the length)."""
    clip = tiny_models.clip_sd15()
    short = LONG_TEXT[:10_000]
    t0 = time.perf_counter()
    comfy.run("CLIPTextEncode", clip=clip, text=short)
    stock = time.perf_counter() - t0
    patched, probe = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=True)
    t0 = time.perf_counter()
    comfy.run("CLIPTextEncode", clip=patched, text=short)
    assert time.perf_counter() - t0 < 2.0 * stock + 1.0

    t0 = time.perf_counter()
    cond = comfy.run("CLIPTextEncode", clip=patched, text=LONG_TEXT.replace("cat", "(cat:1.2)", 1))[0]
    seconds = time.perf_counter() - t0
    assert seconds < 90, f"{seconds:.0f} s"
    layout = cond[0][1]["enfoque_layout"]
    n_chunks = len(clip.tokenize(LONG_TEXT)["l"])
    assert cond[0][0].shape[1] == 77 * n_chunks and n_chunks > 250
    assert len(layout.words) == len(LONG_TEXT.replace(",", " ").split())
    assert layout.weights == {layout.spans[3][0]: 1.2}
    maps = comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond)[0]
    assert maps.words[:4] == ["a", "small", "red", "cat"]
    weighted = comfy.run("EnfoqueTokenWeights", conditioning=cond, weights="garden:0.5")[0]
    assert len(weighted[0][1]["enfoque_layout"].weights) > 1000


def test_long_prompt_layout_is_linear(comfy):
    """SD3: words of CLIP and T5 are aligned word by word. On 100 kB of text whose two tokenisations
    differ ("astronaut's", "3.5kg", "10,000"), the layout takes well under a second and still aligns."""
    layout_mod = comfy.submodule("attention.layout")
    words_mod = comfy.submodule("attention.words")
    encoders = comfy.submodule("nodes.clip_patch.encoders")
    text = ("A photo of an astronaut's helmet, red-fur cat (e.g. 3.5kg) on a chair; don't stop: 10,000 cats! "
            * 1100)[:100_000]
    clip = tiny_models.clip_sd3()
    toks = clip.tokenize(text)
    streams = [encoders.stream_of(e, toks[e.key], encoders.sub_tokenizer(clip.tokenizer, e))
               for e in encoders.ENCODERS.values() if e.key in ("l", "g", "t5xxl")]
    clip_len = 77 * len(toks["l"])
    t0 = time.perf_counter()
    layout = layout_mod.build_layout(streams, clip_len + len(toks["t5xxl"][0]), {"l": 0, "g": 0, "t5xxl": clip_len})
    assert time.perf_counter() - t0 < 5.0
    with_t5 = [s for s in layout.spans if any(p >= clip_len for p in s)]
    assert len(with_t5) > 0.6 * len(layout.words)  # CLIP splits "10,000" into 5 words, T5 into 2, ...
    i = layout.words.index("helmet", 5000)
    t5 = [p - clip_len for p in layout.spans[i] if p >= clip_len]
    assert [streams[2].pieces[toks["t5xxl"][0][p][0]] for p in t5] == ["▁helmet"]
    # the linear walk long prompts take agrees with difflib, which short prompts take
    a = [w.text.lower() for w in words_mod._words(streams[0])][:1500]
    b = [w.text.lower() for w in words_mod._words(streams[2])][:1400]
    import difflib

    reference = {}
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        reference.update({block.b + k: block.a + k for k in range(block.size)})
    assert layout_mod._align_walk(a, b) == reference


@pytest.mark.parametrize("encoders", [(True, True, False), (True, False, False), (True, True, True)],
                         ids=["sd3-without-t5", "sd3-clip-l-only", "sd3-all"])
def test_sd3_layout_without_t5(comfy, encoders):
    """SD3 without T5 (a common way to save memory): the tokenizer still gives T5 tokens, padded to 77 like
    CLIP's, but the context is CLIP's: words sit at CLIP positions 1..7, never on the start token."""
    clip = tiny_models.clip_sd3(*encoders)
    patched, _ = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=False)
    cond = comfy.run("CLIPTextEncode", clip=patched, text=PROMPT)[0]
    layout = cond[0][1]["enfoque_layout"]
    assert list(layout.words) == PROMPT_WORDS
    assert [[p for p in s if p < 77] for s in layout.spans] == [[i] for i in range(1, 8)]
    assert any(p >= 77 for s in layout.spans for p in s) == encoders[2]
    assert cond[0][0].shape[1] == (154 if encoders[2] else 77)


def test_long_t5_prompt_is_not_captured(comfy, monkeypatch):
    """Token x token maps of thousands of T5 tokens would take GBs: that encoder is encoded as usual but not
    captured, the others are, and EnfoqueTextAttentionMaps says why."""
    probe_mod = comfy.submodule("nodes.clip_patch.probe")
    monkeypatch.setattr(probe_mod, "TEXT_CAPTURE_BYTES", 4 * 2**20)  # as a 256 MB limit is to ~8000 T5 tokens
    clip = tiny_models.clip_flux()
    text = " ".join(["a red cat on a blue chair"] * 60)  # ~540 T5 tokens: 1.1 MB per layer, L: 3 x 24 kB
    stock = comfy.run("CLIPTextEncode", clip=clip, text=text)[0]
    patched, probe = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=True)
    cond = comfy.run("CLIPTextEncode", clip=patched, text=text)[0]
    assert torch.equal(cond[0][0], stock[0][0])
    comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond, encoder="l")
    monkeypatch.setattr(probe_mod, "TEXT_CAPTURE_BYTES", 2**20)  # CLIP-L (70 kB, first) fits, T5 (1.1 MB) not
    cond = comfy.run("CLIPTextEncode", clip=patched, text=text)[0]
    assert torch.equal(cond[0][0], stock[0][0])
    with pytest.raises(ValueError, match=r"Enfoque Text Attention Maps: the maps of this prompt were not recorded "
                                         r"\(t5xxl: \d+ tokens need .* MB .*shorten the prompt"):
        comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond, encoder="t5xxl")
    maps = comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond)[0]  # auto: CLIP-L was captured
    assert maps.meta["encoder"] == "l"


# =========================================================================== composition, in-process

_MODELS: dict = {}


def family(comfy, tiny_dir, name: str):
    """(model, positive, negative, latent node, cfg) with conditionings from a patched CLIP (they carry words)."""
    if name not in _MODELS:
        if name == "sd3":
            model, clip, latent_node, cfg = tiny_models.sd3(tiny_dir, name="hard_sd3").model, \
                tiny_models.clip_sd3(), "EmptySD3LatentImage", 3.0
        else:
            model, clip, latent_node, cfg = tiny_models.sd15_unet(tiny_dir, name="hard_sd15").model, \
                tiny_models.clip_sd15(), "EmptyLatentImage", 3.0
        labelled = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=False)[0]
        pos = comfy.run("CLIPTextEncode", clip=labelled, text=PROMPT)[0]
        neg = comfy.run("CLIPTextEncode", clip=labelled, text="blurry")[0]
        _MODELS[name] = (model, pos, neg, latent_node, cfg)
    return _MODELS[name]


def latent_for(comfy, latent_node, width=128, height=96, batch=1):
    return comfy.run(latent_node, width=width, height=height, batch_size=batch)[0]


def ksample(comfy, model, pos, neg, latent, cfg, steps=2, seed=3, denoise=1.0):
    return comfy.run("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=denoise)[0]


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """Equal within `tol`, relative to the largest magnitude when above 1 (the tiny SD1.5 predicts x0 ~ 300)."""
    bound = tol * max(1.0, b.abs().max().item())
    diff = (a - b).abs().max().item()
    assert diff <= bound, f"max difference {diff:.3g} > {bound:.3g}"


class PlainAttention:
    """Stands in for Sage attention: an override set before ours that computes attention with its own kernel
    (a plain float64 softmax, honouring masks) and never calls the backend it is handed."""

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options
        return self

    def __call__(self, func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        self.calls += 1

        def bhnd(t):
            if skip_reshape:
                return t
            if t.ndim == 4:
                return t.transpose(1, 2)
            b, n, hd = t.shape
            return t.view(b, n, heads, hd // heads).transpose(1, 2)

        qh, kh, vh = (bhnd(t).double() for t in (q, k, v))
        logits = qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5
        if mask is not None:
            m = mask
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=torch.float64).masked_fill(~m, -math.inf)
            m = m[None, None] if m.ndim == 2 else m[:, None] if m.ndim == 3 else m
            logits = logits + m.double()
        out = (torch.softmax(logits, dim=-1) @ vh).to(q.dtype)
        if skip_output_reshape:
            return out
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d)


def with_override(model, override):
    m = model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = override
    return m


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_foreign_attention_kernel_before_ours(comfy, tiny_dir, name):
    """An earlier override with its own kernel keeps computing every attention output (capture and weights
    go through it), outputs equal it alone, maps equal ours on the stock backend."""
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    latent = latent_for(comfy, latent_node)
    plain = PlainAttention()
    foreign = with_override(model, plain)
    alone = ksample(comfy, foreign, pos, neg, latent, cfg)["samples"]
    calls_alone = plain.calls
    stock = ksample(comfy, model, pos, neg, latent, cfg)["samples"]
    close(alone, stock, 1e-4)  # the stand-in is a faithful kernel

    plain.calls = 0
    patched, probe = patch(comfy, foreign)
    out = ksample(comfy, patched, pos, neg, latent, cfg)["samples"]
    assert plain.calls == calls_alone, "some attention bypassed the earlier override"
    close(out, alone, 1e-5)
    ours, ref_probe = patch(comfy, model)
    ksample(comfy, ours, pos, neg, latent, cfg)
    close(probe.result.maps[("positive", 0)], ref_probe.result.maps[("positive", 0)], 1e-5)

    # weights act through the foreign kernel (it receives the bias) as they do on the stock backend
    weighted = comfy.run("EnfoqueTokenWeights", conditioning=pos, weights="cat:3, chair:0")[0]
    out_w = ksample(comfy, patched, weighted, neg, latent, cfg)["samples"]
    ref_w = ksample(comfy, ours, weighted, neg, latent, cfg)["samples"]
    close(out_w, ref_w, 1e-4)
    assert (out_w - out).abs().max().item() > 1e-3


GUIDANCE = [
    ("sd15", "SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
    ("sd15", "PerturbedAttentionGuidance", {"scale": 3.0}),
    ("sd3", "SkipLayerGuidanceSD3", {"layers": "1", "scale": 3.0, "start_percent": 0.0, "end_percent": 1.0}),
]


@pytest.mark.parametrize("name, node, inputs", GUIDANCE, ids=[g[1] for g in GUIDANCE])
def test_comfy_guidance_patches(comfy, tiny_dir, name, node, inputs):
    """SAG / PAG / SLG before or after EnfoquePatchModel: the guided output is unchanged, and the extra model
    pass the guidance runs does not leak into the prompt's maps (a 1-step run has the unguided maps)."""
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    latent = latent_for(comfy, latent_node)
    stock = ksample(comfy, model, pos, neg, latent, cfg)["samples"]
    guided = comfy.run(node, model=model, **inputs)[0]
    stock_guided = ksample(comfy, guided, pos, neg, latent, cfg)["samples"]
    assert (stock_guided - stock).abs().max().item() > 1e-4, f"{node} changed nothing"
    plain, plain_probe = patch(comfy, model)
    ksample(comfy, plain, pos, neg, latent, cfg, steps=1)
    unguided_maps = plain_probe.result.maps[("positive", 0)]

    after, probe_after = patch(comfy, guided)  # the guidance first, then ours
    before_model, probe_before = patch(comfy, model)  # ours first, then the guidance
    before = comfy.run(node, model=before_model, **inputs)[0]
    for m, probe in ((after, probe_after), (before, probe_before)):
        close(ksample(comfy, m, pos, neg, latent, cfg)["samples"], stock_guided, 1e-5)
        ksample(comfy, m, pos, neg, latent, cfg, steps=1)
        close(probe.result.maps[("positive", 0)], unguided_maps, 1e-6)
        assert probe.run is None


def tiny_lora(model, rank: int = 4, seed: int = 1) -> dict:
    """A LoRA file's state dict for the tiny SD3: kohya key names on both attentions of block 0."""
    g = torch.Generator().manual_seed(seed)
    sd = model.model.diffusion_model.state_dict()
    out = {}
    for key in ("joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.context_block.attn.qkv"):
        rows, cols = sd[key + ".weight"].shape
        name = "lora_unet_" + key.replace(".", "_")
        out[name + ".lora_down.weight"] = torch.randn(rank, cols, generator=g) * 0.3
        out[name + ".lora_up.weight"] = torch.randn(rows, rank, generator=g) * 0.3
        out[name + ".alpha"] = torch.tensor(float(rank))
    return out


def test_lora_patched_model(comfy, tiny_dir):
    import comfy.sd as comfy_sd

    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    latent = latent_for(comfy, latent_node)
    lora = tiny_lora(model)
    with_lora, _ = comfy_sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert len(with_lora.patches) == 2
    stock = ksample(comfy, model, pos, neg, latent, cfg)["samples"]
    stock_lora = ksample(comfy, with_lora, pos, neg, latent, cfg)["samples"]
    assert (stock_lora - stock).abs().max().item() > 1e-3, "the LoRA changed nothing"
    # ours on the LoRA model, and the LoRA on ours
    patched, probe = patch(comfy, with_lora)
    close(ksample(comfy, patched, pos, neg, latent, cfg)["samples"], stock_lora, 1e-5)
    lora_maps = probe.result.maps[("positive", 0)]
    ours, probe2 = patch(comfy, model)
    lora_on_ours, _ = comfy_sd.load_lora_for_models(ours, None, lora, 1.0, 0)
    close(ksample(comfy, lora_on_ours, pos, neg, latent, cfg)["samples"], stock_lora, 1e-5)
    close(probe2.result.maps[("positive", 0)], lora_maps, 1e-6)
    ksample(comfy, ours, pos, neg, latent, cfg)  # the LoRA does not stick to the model it was put on
    assert (probe2.result.maps[("positive", 0)] - lora_maps).abs().max().item() > 1e-5


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_two_patches_in_a_row(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    latent = latent_for(comfy, latent_node)
    stock = ksample(comfy, model, pos, neg, latent, cfg)["samples"]
    first, probe_a = patch(comfy, model)
    second, probe_b = patch(comfy, first)
    close(ksample(comfy, second, pos, neg, latent, cfg)["samples"], stock, 1e-5)
    for probe in (probe_a, probe_b):  # the first patch of the chain still gets its maps
        assert probe.result is not None and ("positive", 0) in probe.result.maps
    close(probe_a.result.maps[("positive", 0)], probe_b.result.maps[("positive", 0)], 1e-6)
    # weights act once, not once per patch
    weighted = comfy.run("EnfoqueTokenWeights", conditioning=pos, weights="cat:3, chair:0")[0]
    single, _ = patch(comfy, model)
    once = ksample(comfy, single, weighted, neg, latent, cfg)["samples"]
    close(ksample(comfy, second, weighted, neg, latent, cfg)["samples"], once, 1e-5)


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_hires_fix_graph(comfy, tiny_dir, name):
    """Two KSamplers on one patched model, the second on the upscaled latent at denoise 0.5: both outputs as
    stock, and each EnfoqueAttentionMaps gets the maps of the run its latent came from."""
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    latent = latent_for(comfy, latent_node)
    patched, probe = patch(comfy, model)

    def hires(m):
        first = ksample(comfy, m, pos, neg, latent, cfg)
        up = comfy.run("LatentUpscaleBy", samples=first, upscale_method="nearest-exact", scale_by=1.5)[0]
        return first, ksample(comfy, m, pos, neg, up, cfg, denoise=0.5, seed=4)

    stock1, stock2 = hires(model)
    out1, out2 = hires(patched)
    close(out1["samples"], stock1["samples"], 1e-5)
    close(out2["samples"], stock2["samples"], 1e-5)

    maps1 = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out1, words="")[0]
    maps2 = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out2, words="")[0]
    h, w = out1["samples"].shape[-2:]
    grid1 = probe.geometry.grid(out1["samples"].shape)
    grid2 = probe.geometry.grid(out2["samples"].shape)
    assert grid2 != grid1
    assert tuple(maps1.maps.shape[-2:]) == grid1 and tuple(maps2.maps.shape[-2:]) == grid2
    assert maps1.meta["run"] < maps2.meta["run"]
    assert maps1.meta["image_size"] == [h * 8, w * 8]
    # the first pass's maps are those of the same run on its own
    alone, alone_probe = patch(comfy, model)
    single = ksample(comfy, alone, pos, neg, latent, cfg)
    expected = comfy.run("EnfoqueAttentionMaps", probe=alone_probe, latent=single, words="")[0]
    close(maps1.maps, expected.maps, 1e-6)
    with pytest.raises(ValueError, match="Enfoque Attention Maps: no sampling run of this probe matches the latent"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent={"samples": torch.zeros(3, *out1["samples"].shape[1:])},
                  words="")


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_two_runs_of_one_shape_each_keep_their_maps(comfy, tiny_dir, name, caplog):
    """Two KSamplers on one patched model, latents of one shape, other prompts: each Attention Maps reads the run
    its latent came from, in any order (ComfyUI may run both samplers first, or keep one's output cached); a
    latent changed after sampling reads the newest run of its shape, and says so once."""
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    latent = latent_for(comfy, latent_node)
    patched, probe = patch(comfy, model)
    first = ksample(comfy, patched, pos, neg, latent, cfg, seed=3)
    second = ksample(comfy, patched, neg, pos, latent, cfg, seed=4)  # "blurry" is this run's prompt
    again = ksample(comfy, patched, pos, neg, latent, cfg, seed=3)  # the first run again (a cached sampler's)
    assert torch.equal(again["samples"], first["samples"]) and len(probe.results) == 2

    def labels(lat):
        return list(comfy.run("EnfoqueAttentionMaps", probe=probe, latent=lat, words="")[0].words)

    assert labels(second) == ["blurry"]
    assert labels(first) == PROMPT_WORDS
    changed = {"samples": first["samples"] + 0.5}
    with caplog.at_level("WARNING"):
        assert labels(changed) == PROMPT_WORDS  # the newest run of this shape: the first run, sampled again
        labels(changed)
    said = [r.getMessage() for r in caplog.records if "is not one a kept run" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("Enfoque: Enfoque Attention Maps: this latent")


def test_budget_exceeded_while_sampling_names_the_node(comfy, tiny_dir):
    """dpm_2 calls the model at more sigmas than its step count, so keep_steps keeps more maps than the
    estimate that passed before the run: the refusal during sampling is in the pack's error style."""
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    latent = latent_for(comfy, latent_node)
    plain, probe = patch(comfy, model)
    ksample(comfy, plain, pos, neg, latent, cfg, steps=4)
    copy_mb = probe.result.maps[("positive", 0)].numel() * 4 / 2**20  # one kept map of the run
    patched, _ = patch(comfy, model, keep_steps=True, budget_mb=6.5 * copy_mb)  # fits 1 + 4 steps, not 1 + 7
    with pytest.raises(ValueError) as refused:
        comfy.run("KSampler", model=patched, seed=3, steps=4, cfg=cfg, sampler_name="dpm_2", scheduler="simple",
                  positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    message = str(refused.value)
    check_style(message, "Enfoque Patch Model")
    assert "while sampling, keeping per-step/per-block maps needs more than the capture budget of" in message
    assert "Raise budget_mb, turn off keep_steps / keep_blocks" in message


def test_unsupported_model_is_refused(comfy, tiny_dir):
    model, *_ = family(comfy, tiny_dir, "sd3")
    odd = model.clone()
    odd.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))
    families = comfy.submodule("nodes.model_patch.families")
    with pytest.raises(ValueError) as refused:
        patch(comfy, odd)
    # the display name once, the model, every supported family (each once) and the fix
    message = str(refused.value)
    labels = [families.FAMILIES[k].label for k in families.LISTED]
    assert message == (f"Enfoque Patch Model: the model Linear is not supported yet; supported families: "
                       f"{', '.join(labels)}. Connect a model of one of them."), message
    assert len(set(labels)) == len(labels) >= 9
    check_style(message, "Enfoque Patch Model")


# =========================================================================== lifecycle, in-process


def spy_on_runs(probe) -> list:
    """Weak references to every run record, accumulator and cached plan tensor, taken as each run ends."""
    refs: list = []
    end_run = probe.end_run

    def spy(ok, output=None):
        run = probe.run
        if run is not None:
            refs.append(weakref.ref(run))
            if run.acc is not None:
                refs.append(weakref.ref(run.acc))
                refs.extend(weakref.ref(r.total) for r in run.acc.records.values())
            for plan in run.plans.values():
                if plan is not None:
                    refs.extend(weakref.ref(c.columns) for c in plan.captures)
                    if plan.reweight is not None:
                        refs.append(weakref.ref(plan.reweight.weights))
        end_run(ok, output)

    probe.end_run = spy
    return refs


def assert_freed(refs: list) -> None:
    assert refs, "the spy saw no run"
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} objects of finished runs are still alive: {[type(a).__name__ for a in alive]}"


def result_tensors(result) -> list[torch.Tensor]:
    found = []

    def walk(x, depth=0):
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif depth < 6 and isinstance(x, dict):
            for v in x.values():
                walk(v, depth + 1)
        elif depth < 6 and isinstance(x, (list, tuple, set)):
            for v in x:
                walk(v, depth + 1)
        elif depth < 6 and hasattr(x, "__dict__"):
            walk(vars(x), depth + 1)

    walk(result)
    return found


@pytest.mark.parametrize("name", ["sd3", "sd15"])
def test_no_tensors_kept_after_a_run(comfy, tiny_dir, name):
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    weighted = comfy.run("EnfoqueTokenWeights", conditioning=pos, weights="cat:2")[0]
    patched, probe = patch(comfy, model, capture_negative=True)
    refs = spy_on_runs(probe)
    for seed in (1, 2):
        ksample(comfy, patched, weighted, neg, latent_for(comfy, latent_node), cfg, seed=seed)
        assert probe.run is None
    assert_freed(refs)
    # what stays of each run: its final maps and the latent it returned (how Attention Maps finds it), nothing else
    assert probe.results[-1] is probe.result and len(probe.results) == 2
    for res in probe.results:
        tensors = result_tensors(res)
        maps = list(res.maps.values())
        assert len(maps) == 2 and {id(t) for t in tensors} == {id(t) for t in maps} | {id(res.output)}
        assert all(t.dtype == torch.float32 and t.shape[0] == 1 for t in maps)
        assert res.output.dtype == torch.float32 and res.output.device.type == "cpu"


class Interrupting(PlainAttention):
    """An earlier override that, when armed, receives ComfyUI's interrupt in the middle of the forward pass
    (as ComfyUI's own ops check it on every layer)."""

    armed = False

    def __call__(self, *args, **kwargs):
        import comfy.model_management as mm

        if self.armed and self.calls == 3:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()
        return super().__call__(*args, **kwargs)


def test_interrupted_and_failed_runs_leave_nothing(comfy, tiny_dir):
    import comfy.model_management as mm

    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    latent = latent_for(comfy, latent_node)
    interrupting = Interrupting()
    patched, probe = patch(comfy, with_override(model, interrupting))
    finished = ksample(comfy, patched, pos, neg, latent, cfg)
    clean = probe.result.maps[("positive", 0)].clone()
    kept = probe.results[:]
    refs = spy_on_runs(probe)

    interrupting.armed, interrupting.calls = True, 0
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ksample(comfy, patched, pos, neg, latent, cfg, seed=9)
    finally:
        interrupting.armed = False
        mm.interrupt_current_processing(False)
    assert interrupting.calls == 3, "the interrupt did not come in the middle of the run"
    # nothing of the interrupted run: the finished run before it is all the probe keeps
    assert probe.run is None and probe.result is None and probe.results == kept and len(kept) == 1
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=finished, words="")[0]
    assert maps.meta["run"] == kept[0].run

    class Failing(PlainAttention):  # an earlier override that breaks in the middle of the run
        def __call__(self, *args, **kwargs):
            if self.calls == 2:
                raise RuntimeError("a kernel failed")
            return super().__call__(*args, **kwargs)

    failing, failing_probe = patch(comfy, with_override(model, Failing()))
    failing_refs = spy_on_runs(failing_probe)
    with pytest.raises(RuntimeError, match="a kernel failed"):
        ksample(comfy, failing, pos, neg, latent, cfg)
    assert failing_probe.run is None and failing_probe.result is None and failing_probe.results == []
    with pytest.raises(ValueError, match="no finished sampling run"):
        comfy.run("EnfoqueAttentionMaps", probe=failing_probe, latent=latent, words="")

    ksample(comfy, patched, pos, neg, latent, cfg)  # the next run: the same maps as before the interruption
    close(probe.result.maps[("positive", 0)], clean, 0.0)
    assert_freed(refs + failing_refs)


# =========================================================================== lifecycle, live server


def rss_kb(server) -> int:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))


@pytest.mark.server
def test_fifty_prompts_keep_memory_flat(server, record_property):
    rss = []
    t0 = time.perf_counter()
    for _ in range(50):
        entry = finish(server, server.post_prompt(graph(seed=next(_seeds), prefix="hardening/soak")))
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
        cached = {n for ev, d in entry["status"]["messages"] if ev == "execution_cached" for n in d["nodes"]}
        assert "9" not in cached, "the sampler was cached: the prompt did not run"
        rss.append(rss_kb(server))
    seconds = time.perf_counter() - t0
    warm, last = rss[9], rss[-1]
    growth = (last - warm) / warm
    record_property("rss_mb", [round(r / 1024, 1) for r in rss])
    print(f"\n50 prompts in {seconds:.1f} s; VmRSS after 10: {warm / 1024:.1f} MB, after 50: {last / 1024:.1f} MB "
          f"({100 * growth:+.2f} %), peak {max(rss) / 1024:.1f} MB")
    assert growth <= 0.05, f"VmRSS grew {100 * growth:.1f} % over 40 prompts: {rss}"


@pytest.mark.server
def test_interrupted_prompt_leaves_no_state(server):
    """POST /interrupt in the middle of a long sampling run; the cached EnfoquePatchModel (the same probe) then
    gives the next prompt exactly the maps it gave before."""
    seed = next(_seeds)
    before = finish(server, server.post_prompt(graph(seed=seed)))
    assert before["status"]["status_str"] == "success"
    maps_before, _ = saved_maps(server, before)

    slow = graph(seed=next(_seeds))
    slow["9"]["inputs"]["steps"] = 5000
    prompt_id = server.post_prompt(slow)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = server.get("/queue")["queue_running"]
        if any(item[1] == prompt_id for item in running):
            break
        time.sleep(0.05)
    time.sleep(1.5)  # well inside the sampling loop (the models are loaded already)
    server.request("POST", "/interrupt", {})
    entry = finish(server, prompt_id, timeout=120)
    interrupted = [d for ev, d in entry["status"]["messages"] if ev == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_type"] == "KSampler", entry["status"]["messages"]

    after = finish(server, server.post_prompt(graph(seed=seed)))
    assert after["status"]["status_str"] == "success"
    cached = {n for ev, d in after["status"]["messages"] if ev == "execution_cached" for n in d["nodes"]}
    assert "7" in cached and "9" not in cached, cached  # the same probe, a new sampling run
    maps_after, _ = saved_maps(server, after)
    assert torch.equal(maps_after, maps_before)
