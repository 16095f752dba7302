"""One rule for "which words": the same ``words`` text selects the same words in every node that takes
words (Enfoque Attention Maps, Maps To Mask, Token Weights, Patch Model's capture_words, and Attention
Maps' concept maps over Enfoque Concepts' names).

The expected selections are written out by hand below, for a prompt with repeated words, a word of
several tokens and punctuation: case and edge punctuation never matter, a repeated word is all its
occurrences, ``word#2`` the second, a phrase its words where they stand together. Each node is asked
through ComfyUI (tiny SD3, stock KSampler) and what it selected is read from what it did: the context
positions of the maps and their values, the mask, the weights on the layout, the captured columns.
"""

from __future__ import annotations

import pytest
import tiny_models
import torch
from helpers import released

pytestmark = pytest.mark.host

PROMPT = "A red cat, and a RED dog on the red-brick wall."
WORDS = ["a", "red", "cat", "and", "a", "red", "dog", "on", "the", "red-brick", "wall"]

# a words text -> the word indices (into WORDS) each of its items selects, written out by hand
SPELLINGS = {
    "red": [[1, 5]],
    "Red,": [[1, 5]],
    "(RED": [[1, 5]],
    "red#2": [[5]],
    "red #1": [[1]],
    "a#2": [[4]],
    "red cat": [[1, 2]],
    "Red Cat!": [[1, 2]],
    "a red": [[0, 1, 4, 5]],
    "a red#2": [[4, 5]],
    "red-brick": [[9]],
    "wall.": [[10]],
    "cat, dog": [[2], [6]],
    "red, Red, RED.": [[1, 5]],
}
NOT_WORDS = ["redd", "cat red", "red#3", "brick"]

CONCEPTS = "red, cat, red cat, dog"
CONCEPT_SPELLINGS = {"Red,": [[0]], "RED CAT": [[2]], "cat, Dog!": [[1], [3]], "dog#1": [[3]]}

_cache: dict = {}

_release = released(_cache)


def sampled(comfy, tiny_dir, capture_words: str = ""):
    """(probe, sampler output, positive conditioning) of one run of the tiny SD3 with a patched CLIP."""
    key = ("run", capture_words)
    if key not in _cache:
        if "model" not in _cache:
            clip, _ = comfy.run("EnfoquePatchCLIP", clip=tiny_models.clip_sd3(), weight_mode="attention",
                                capture=False)
            _cache["model"] = tiny_models.sd3(tiny_dir, name="word_rule_sd3").model
            _cache["clip"] = clip
            _cache["pos"] = comfy.run("CLIPTextEncode", clip=clip, text=PROMPT)[0]
            _cache["neg"] = comfy.run("CLIPTextEncode", clip=clip, text="")[0]
            _cache["concepts"] = comfy.run("EnfoqueConcepts", clip=tiny_models.clip_sd3(), concepts=CONCEPTS)[0]
        model, probe = comfy.run("EnfoquePatchModel", model=_cache["model"], capture=True, reweight="bias",
                                 blocks="all", start_percent=0.0, end_percent=1.0, capture_words=capture_words,
                                 concepts=_cache["concepts"])
        latent = comfy.run("EmptySD3LatentImage", width=64, height=64, batch_size=1)[0]
        out = comfy.run("KSampler", model=model, seed=1, steps=1, cfg=2.0, sampler_name="euler",
                        scheduler="simple", positive=_cache["pos"], negative=_cache["neg"], latent_image=latent,
                        denoise=1.0)[0]
        _cache[key] = (probe, out)
    probe, out = _cache[key]
    return probe, out, _cache["pos"]


def positions(layout, indices: list[int]) -> list[int]:
    """The context positions of these words, in order (written here, not taken from the layout's helpers)."""
    out: list[int] = []
    for i in indices:
        out.extend(p for p in layout.spans[i] if p not in out)
    return out


def test_the_prompt_has_the_words_this_test_expects(comfy, tiny_dir):
    _, _, pos = sampled(comfy, tiny_dir)
    assert list(pos[0][1]["enfoque_layout"].words) == WORDS


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_attention_maps_select_by_the_rule(comfy, tiny_dir, spelling):
    probe, out, pos = sampled(comfy, tiny_dir)
    layout = pos[0][1]["enfoque_layout"]
    every = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    got = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=spelling)[0]
    expected = SPELLINGS[spelling]
    assert got.meta["context_positions"] == [positions(layout, idx) for idx in expected]
    for k, idx in enumerate(expected):  # an item's map is the mean of its words' maps
        torch.testing.assert_close(got.maps[:, k], every.maps[:, idx].mean(1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_maps_to_mask_selects_as_attention_maps_does(comfy, tiny_dir, spelling):
    probe, out, _ = sampled(comfy, tiny_dir)
    every = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    chosen = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=spelling)[0]
    via_mask = comfy.run("EnfoqueMapsToMask", maps=every, words=spelling, threshold=0.5)[0]
    via_maps = comfy.run("EnfoqueMapsToMask", maps=chosen, words="", threshold=0.5)[0]
    assert torch.equal(via_mask, via_maps)
    assert via_mask.sum() > 0


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_token_weights_select_by_the_rule(comfy, tiny_dir, spelling):
    _, _, pos = sampled(comfy, tiny_dir)
    layout = pos[0][1]["enfoque_layout"]
    text = ", ".join(f"{item.strip()}:0.5" for item in spelling.split(",") if item.strip())
    weighted = comfy.run("EnfoqueTokenWeights", conditioning=pos, weights=text)[0]
    expected = sorted({p for idx in SPELLINGS[spelling] for p in positions(layout, idx)})
    assert sorted(weighted[0][1]["enfoque_layout"].weights) == expected


@pytest.mark.parametrize("spelling", ["Red,", "a#2", "red cat", "cat, dog", "a red#2"])
def test_capture_words_select_by_the_rule(comfy, tiny_dir, spelling):
    probe, _, pos = sampled(comfy, tiny_dir, capture_words=spelling)
    layout = pos[0][1]["enfoque_layout"]
    columns = probe.result.routes[("positive", 0)].columns
    expected = []
    for idx in SPELLINGS[spelling]:
        expected.extend(p for p in positions(layout, idx) if p not in expected)
    assert columns == expected


@pytest.mark.parametrize("spelling", list(CONCEPT_SPELLINGS))
def test_concept_maps_select_concepts_by_the_rule(comfy, tiny_dir, spelling):
    probe, out, _ = sampled(comfy, tiny_dir)
    every = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", kind="concept")[0]
    assert every.words == ["red", "cat", "red cat", "dog"]
    got = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=spelling, kind="concept")[0]
    for k, idx in enumerate(CONCEPT_SPELLINGS[spelling]):
        torch.testing.assert_close(got.maps[:, k], every.maps[:, idx].mean(1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("spelling", NOT_WORDS)
def test_what_selects_nothing_is_refused_everywhere(comfy, tiny_dir, spelling):
    probe, out, pos = sampled(comfy, tiny_dir)
    every = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    with pytest.raises(ValueError, match="Enfoque Attention Maps: .* in words is not a captured word"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=spelling)
    with pytest.raises(ValueError, match="Enfoque Maps To Mask: .* is not among"):
        comfy.run("EnfoqueMapsToMask", maps=every, words=spelling, threshold=0.5)
    with pytest.raises(ValueError, match="Enfoque Token Weights: .* in weights is not a word of the prompt"):
        comfy.run("EnfoqueTokenWeights", conditioning=pos, weights=f"{spelling}:2")


# --------------------------------------------------------------------------- special tokens


def test_special_tokens_on_request(comfy, tiny_dir):
    """<start>, <end>, <pad> (each encoder's, or one's: <end:t5xxl>) give those tokens' maps; they are
    captured with the words but never among them, an encoder's padding kept as one map (the mean of its
    tokens'), and their share of the image's text attention is in the maps' metadata (and every export).
    The reference: the same prompt encoded by the stock CLIP (every context position a map of its own,
    ``#p``), sampled with the same seed (the picture is the same)."""
    probe, out, _ = sampled(comfy, tiny_dir)
    every = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    assert every.words == WORDS and not any(w.startswith("<") for w in every.words)
    stock_pos = comfy.run("CLIPTextEncode", clip=tiny_models.clip_sd3(), text=PROMPT)[0]
    model, stock_probe = comfy.run("EnfoquePatchModel", model=_cache["model"], capture=True, reweight="bias",
                                   blocks="all", start_percent=0.0, end_percent=1.0)
    latent = comfy.run("EmptySD3LatentImage", width=64, height=64, batch_size=1)[0]
    stock_out = comfy.run("KSampler", model=model, seed=1, steps=1, cfg=2.0, sampler_name="euler",
                          scheduler="simple", positive=stock_pos, negative=_cache["neg"], latent_image=latent,
                          denoise=1.0)[0]
    assert torch.equal(stock_out["samples"], out["samples"])
    per_position = comfy.run("EnfoqueAttentionMaps", probe=stock_probe, latent=stock_out, words="")[0]  # #0 .. #153
    # SD3: CLIP-L and CLIP-G share positions 0..76, T5 follows at 77; where the end tokens are, ComfyUI's
    # own tokenizer says (CLIP-L pads with its end token: its first one is the end, CLIP-G pads with id 0)
    tokens = tiny_models.clip_sd3().tokenize(PROMPT)
    clip_end = [t for t, *_ in tokens["l"][0]].index(49407)
    t5_end = 77 + [t for t, *_ in tokens["t5xxl"][0]].index(1)
    clip_pad, t5_pad = list(range(clip_end + 1, 77)), list(range(t5_end + 1, 77 + len(tokens["t5xxl"][0])))
    # item -> the positions of each special label it selects (an item's map: the mean of its labels' maps)
    expected = {"<start>": [[0], [0]], "<end:l>": [[clip_end]], "<end:t5xxl>": [[t5_end]], "<pad:g>": [clip_pad],
                "<pad>": [clip_pad, clip_pad, t5_pad]}
    got = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=", ".join(expected))[0]
    assert got.words == list(expected)
    ref = per_position.maps[0]
    for k, labels in enumerate(expected.values()):
        per_label = [ref[positions].mean(0) for positions in labels]
        torch.testing.assert_close(got.maps[0, k], torch.stack(per_label).mean(0), rtol=0, atol=1e-6)
    share = every.meta["special_share"]
    assert set(share) == {"<start>", "<end>", "<pad>"}  # no chat template in CLIP and T5
    mass = ref.double().sum(dim=(1, 2))  # per context position
    assert share["<start>"] == pytest.approx(float(mass[0] / mass.sum()), abs=1e-5)
    assert share["<end>"] == pytest.approx(float(mass[[clip_end, t5_end]].sum() / mass.sum()), abs=1e-5)
    assert share["<pad>"] == pytest.approx(float(mass[clip_pad + t5_pad].sum() / mass.sum()), abs=1e-5)
    # the padding is one kept map per encoder, not hundreds
    assert len(probe.result.routes[("positive", 0)].groups) == len(probe.result.maps[("positive", 0)][0])
    assert probe.result.maps[("positive", 0)].shape[1] < 77
    with pytest.raises(ValueError, match="'<start:t5xxl>' in words is not a captured word"):  # T5 has no start
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="<start:t5xxl>")
    only_cat, out_cat, _ = sampled(comfy, tiny_dir, capture_words="cat")
    with pytest.raises(ValueError, match="'<end>' in words is not a captured word of the prompt; captured words: "
                                         "cat"):
        comfy.run("EnfoqueAttentionMaps", probe=only_cat, latent=out_cat, words="<end>")
    saved = comfy.run("EnfoqueSaveAttentionMaps", maps=every, filename_prefix="rule/special", format="safetensors")
    (entry,) = saved.ui["enfoque_files"]
    back = comfy.submodule("attention.export").load(comfy.output_dir / entry["subfolder"] / entry["filename"])
    assert back.meta["special_share"] == share
