"""Word rules of the token layout, checked against ComfyUI's real tokenizers and encodes.

A word is what the prompt's text separates by whitespace, less the punctuation at its ends:
"photorealistic", "3.5kg" and "don't" are one word each, with every CLIP and T5 token the
tokenizer gives the word alone; "cat," is "cat"; "'" alone is no word. The expectations
here are written out by hand and checked against each encoder's tokenizer called on the word
by itself, never against the layout code. ``/enfoque/tokenize`` must give exactly the words
of a real encode's layout for the family the frontend names.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import tiny_models

pytestmark = pytest.mark.host

TEXT = "a photorealistic 3.5kg cat, don't ' stop"
WORDS = ["a", "photorealistic", "3.5kg", "cat", "don't", "stop"]
CORES = {"cat,": "cat"}  # the word the tokenizer is asked about, where the prompt has punctuation around it

FAMILIES = {
    # family: (tiny CLIP factory, the encoders whose tokens are in its context)
    "sd15": (tiny_models.clip_sd15, ("l",)),
    "sdxl": (tiny_models.clip_sdxl, ("l", "g")),
    "sd3": (tiny_models.clip_sd3, ("l", "g", "t5xxl")),
    "flux": (tiny_models.clip_flux, ("t5xxl",)),
}

PROMPTS = [
    TEXT,
    "a red cat on a blue chair",
    "Portrait of a Woman with RED hair; oil-painting style!",
    "the cat's hat in 2024 BREAK a dog",
    r"a ((big:1.2) \(red\) cat:1.5) sitting on the [old] mat",
    "10,000 cats, 3.5kg each -- rock 'n' roll ' \" (e.g. ok)",
    ", ".join(["a small red cat sitting on a blue wooden chair in the sunny garden"] * 9),  # 2 CLIP chunks
]


def alone(tok, word: str) -> list[int]:
    """The tokens ComfyUI's sub-tokenizer gives ``word`` by itself (no start/end token)."""
    ids = tok.tokenizer(word)["input_ids"]
    return ids[tok.tokens_start:-1]


def encode_layout(comfy, factory, text):
    clip, _ = comfy.run("EnfoquePatchCLIP", clip=factory(), weight_mode="attention", capture=False)
    cond = comfy.run("CLIPTextEncode", clip=clip, text=text)[0]
    return clip, cond, cond[0][1]["enfoque_layout"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_multi_piece_words_keep_all_their_tokens(comfy, family):
    factory, encoders = FAMILIES[family]
    clip, cond, layout = encode_layout(comfy, factory, TEXT)
    assert [w.lower() for w in layout.words] == WORDS
    tokens = clip.tokenize(TEXT)
    n_clip = 77 if family == "sd3" else 0  # SD3: T5 follows the 77 CLIP positions; Flux: T5 alone
    for word, span in zip(TEXT.replace(" ' ", " ").split(), layout.spans, strict=True):
        word = CORES.get(word, word)
        if family != "flux":  # CLIP positions are the chunk's own token positions
            flat = [t for chunk in tokens["l"] for t, *_ in chunk]
            clip_pos = sorted(p for p in span if p < 77)
            assert [flat[p] for p in clip_pos] == alone(clip.tokenizer.clip_l, word), word
            if "g" in encoders:
                flat_g = [t for chunk in tokens["g"] for t, *_ in chunk]
                assert [flat_g[p] for p in clip_pos] == alone(clip.tokenizer.clip_g, word), word
        if "t5xxl" in encoders:
            flat = [t for chunk in tokens["t5xxl"] for t, *_ in chunk]
            t5_pos = sorted(p - n_clip for p in span if p >= n_clip)
            assert [flat[p] for p in t5_pos] == alone(clip.tokenizer.t5xxl, word), word
    # the pieces really are several: one word, not several words
    pieces = {w: len(alone(clip.tokenizer.t5xxl if family == "flux" else clip.tokenizer.clip_l, w))
              for w in ("photorealistic", "3.5kg", "don't")}
    assert all(n >= 2 for n in pieces.values()), pieces


def test_apostrophe_alone_is_not_a_word(comfy):
    for factory in (tiny_models.clip_sd15, tiny_models.clip_flux):
        _, _, layout = encode_layout(comfy, factory, "' a ' cat '")
        assert list(layout.words) == ["a", "cat"]


def test_weights_cover_the_whole_word(comfy):
    _, _, layout = encode_layout(comfy, tiny_models.clip_sd3, "a (photorealistic:1.3) cat")
    span = layout.spans[layout.words.index("photorealistic")]
    assert len(span) >= 4  # CLIP pieces and T5 pieces
    assert layout.weights == {p: pytest.approx(1.3) for p in span}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tokenize_route_gives_the_words_of_an_encode(comfy, family):
    routes = comfy.submodule("nodes.routes")
    factory, encoders = FAMILIES[family]
    for text in PROMPTS:
        _, _, layout = encode_layout(comfy, factory, text)
        got = routes.prompt_words(text, family)
        assert got["words"] == list(layout.words), (family, text)
        assert got["family"] == family and set(got["encoders"]) >= set(encoders)


def post(server, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + "/enfoque/tokenize", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.server
def test_tokenize_route_takes_the_family(comfy, comfy_server):
    status, body = post(comfy_server, {"text": TEXT, "family": "flux"})
    assert status == 200, body
    assert body["words"] == WORDS and body["tokenizer"] == "t5xxl" and body["family"] == "flux"
    status, body = post(comfy_server, {"text": TEXT, "family": "stable_diffusion"})
    assert (status, body["family"], body["tokenizer"]) == (200, "sd15", "clip_l")
    status, body = post(comfy_server, {"text": TEXT})
    assert (status, body["family"]) == (200, "sd15")
    status, body = post(comfy_server, {"text": TEXT, "family": "sd9"})
    assert status == 400 and "'sd9' is not a model family" in body["error"] and "sd3" in body["error"]
    status, body = post(comfy_server, {"text": TEXT, "family": 3})
    assert status == 400 and "'family' must be a string" in body["error"]


@pytest.mark.server
def test_frontend_sends_the_family(comfy_server):
    """In the browser, EnfoqueTokenWeights asks for the words of the family its graph names upstream."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    chromium = os.environ.get("ENFOQUE_CHROMIUM", "/usr/bin/chromium")
    browser_dir = Path(__file__).parent / "browser"
    node = shutil.which("node")
    if node is None or not Path(chromium).is_file() or not (browser_dir / "node_modules" / "playwright-core").is_dir():
        pytest.skip("needs node, Chromium and playwright-core (cd tests/browser && npm ci)")
    proc = subprocess.run([node, "family.mjs", "--url", comfy_server.url, "--chromium", chromium], cwd=browser_dir,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["ok"], result
    cases = result["cases"]
    assert cases["flux"] == {"text": "a flux prompt", "family": "flux"}
    assert cases["sd15"] == {"text": "an sd15 prompt", "family": "sd15"}
    assert cases["sd3_encode"] == {"text": "an sd3 prompt", "family": "sd3"}
    assert cases["checkpoint"] == {"text": "a checkpoint prompt"}  # nothing in the graph names the family
    # every CLIP loader type of the support table, by the server's table (GET /enfoque/info)
    for family in ("qwen_image", "flux2", "chroma", "lumina2", "wan"):
        assert cases[f"loader_{family}"] == {"text": f"a {family} prompt", "family": family}, family
    # a node only one family uses wins over the loader's type
    assert cases["qwen_edit"] == {"text": "a qwen edit prompt", "family": "qwen_image"}
