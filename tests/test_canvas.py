"""Step 11, the canvas a newcomer meets (server side): distinct probe socket types, one error
style across nodes, a notice (not an error) for weights that reweight=off ignores, renamed
jargon, and EnfoqueHeatmaps' ``over`` input (one frame per kept step or block) feeding stock
SaveAnimatedWEBP. ComfyUI's own classes run everything, in-process or in a live server.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

import pytest
import tiny_models
import torch
from host import REPO_ROOT, ExecutionError
from PIL import Image

pytestmark = pytest.mark.host

W, H = 128, 96


def display_names(comfy) -> dict[str, str]:
    return {node_id: comfy.node(node_id).GET_SCHEMA().display_name for node_id in sorted(comfy.node_ids)}


def sampled(comfy, tiny_dir, *, reweight="bias", weights="", keep_steps=False, keep_blocks=False, steps=2,
            text="a red cat on a blue chair", clip_mode="attention"):
    """Tiny SD3 sampled through the pack: (patched model, probe, positive, latent out)."""
    model = tiny_models.sd3(tiny_dir).model
    clip = comfy.run("EnfoquePatchCLIP", clip=tiny_models.clip_sd3(), weight_mode=clip_mode, capture=True)[0]
    pos = comfy.run("CLIPTextEncode", clip=clip, text=text)[0]
    if weights:
        pos = comfy.run("EnfoqueTokenWeights", conditioning=pos, weights=weights)[0]
    neg = comfy.run("CLIPTextEncode", clip=clip, text="")[0]
    patched, probe = comfy.run(
        "EnfoquePatchModel", model=model, capture=True, reweight=reweight, blocks="all", start_percent=0.0,
        end_percent=1.0, keep_steps=keep_steps, keep_blocks=keep_blocks,
        hidden={"UNIQUE_ID": "7"},
    )
    latent = comfy.run("EmptySD3LatentImage", width=W, height=H, batch_size=1)[0]
    out = comfy.run("KSampler", model=patched, seed=1, steps=steps, cfg=2.0, sampler_name="euler",
                    scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]
    return patched, probe, pos, out


# --------------------------------------------------------------------------- probe socket types


def test_model_and_clip_probes_have_distinct_socket_types(comfy):
    patch_model = comfy.node("EnfoquePatchModel")
    patch_clip = comfy.node("EnfoquePatchCLIP")
    assert list(patch_model.RETURN_TYPES) == ["MODEL", "ENFOQUE_MODEL_PROBE"]
    assert list(patch_clip.RETURN_TYPES) == ["CLIP", "ENFOQUE_CLIP_PROBE"]
    assert comfy.node("EnfoqueAttentionMaps").INPUT_TYPES()["required"]["probe"][0] == "ENFOQUE_MODEL_PROBE"
    assert comfy.node("EnfoqueTextAttentionMaps").INPUT_TYPES()["required"]["probe"][0] == "ENFOQUE_CLIP_PROBE"
    # the node ids are kept
    assert {"EnfoquePatchModel", "EnfoquePatchCLIP", "EnfoqueAttentionMaps", "EnfoqueTextAttentionMaps"} <= comfy.node_ids


@pytest.mark.server
def test_server_refuses_a_clip_probe_in_a_model_probe_input(comfy_server):
    """An API prompt (no canvas) wiring the CLIP's probe into Enfoque Attention Maps fails validation, naming both types."""
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_clip_l.safetensors", "type": "sd3"}},
        "3": {"class_type": "EnfoquePatchCLIP", "inputs": {"clip": ["2", 0], "weight_mode": "attention", "capture": True}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat", "clip": ["3", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": W, "height": H, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "positive": ["4", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "EnfoqueAttentionMaps", "inputs": {"probe": ["3", 1], "latent": ["6", 0], "words": ""}},
        "8": {"class_type": "EnfoqueHeatmaps", "inputs": {"maps": ["7", 0], "colormap": "viridis", "opacity": 0.6,
                                                          "normalisation": "minmax", "columns": 0}},
    }
    with pytest.raises(RuntimeError, match=r"ENFOQUE_CLIP_PROBE.*ENFOQUE_MODEL_PROBE"):
        comfy_server.post_prompt(graph)


def test_a_clip_probe_in_code_gets_a_clear_error(comfy):
    clip_probe = comfy.run("EnfoquePatchCLIP", clip=tiny_models.clip_sd3(), weight_mode="attention", capture=True)[1]
    with pytest.raises(ValueError, match=r"^Enfoque Attention Maps: probe is a probe of Enfoque Patch CLIP, not the "
                                         r"probe of Enfoque Patch Model; connect the probe output of Enfoque Patch Model\.$"):
        comfy.run("EnfoqueAttentionMaps", probe=clip_probe, latent={"samples": torch.zeros(1, 16, 12, 16)}, words="")


# --------------------------------------------------------------------------- one error style


def _errors(comfy, tiny_dir) -> list[str]:
    """One error of each kind a user meets, from every Enfoque node, triggered through ComfyUI's classes."""
    maps_mod = comfy.submodule("attention.maps")
    _, probe, pos, out = sampled(comfy, tiny_dir, text="a cat and a cat and a red cat")
    maps = maps_mod.AttentionMaps(maps=torch.rand(1, 4, 6, 8), words=["a", "cat", "a", "cat"], meta={})
    maps2 = maps_mod.AttentionMaps(maps=torch.rand(2, 4, 6, 8), words=["a", "cat", "a", "cat"], meta={})
    clip_probe = comfy.run("EnfoquePatchCLIP", clip=tiny_models.clip_sd3(), weight_mode="attention", capture=True)[1]
    attempts = [
        ("EnfoqueAttentionMaps", dict(probe=probe, latent=out, words="dog")),
        ("EnfoqueAttentionMaps", dict(probe=probe, latent=out, words="", step=1)),
        ("EnfoqueAttentionMaps", dict(probe=probe, latent=out, words="", prompt="negative")),
        ("EnfoqueAttentionMaps", dict(probe=probe, latent=out, words="", step=0, block=0)),
        ("EnfoqueAttentionMaps", dict(probe=clip_probe, latent=out, words="")),
        ("EnfoqueTokenWeights", dict(conditioning=pos, weights="dog:2")),
        ("EnfoqueTokenWeights", dict(conditioning=pos, weights="cat=2")),
        ("EnfoquePatchModel", dict(model=tiny_models.sd3(tiny_dir).model, capture=True, reweight="loud",
                                   blocks="all", start_percent=0.0, end_percent=1.0)),
        ("EnfoquePatchModel", dict(model=tiny_models.sd3(tiny_dir).model, capture=True, reweight="bias",
                                   blocks="all", start_percent=0.8, end_percent=0.2)),
        ("EnfoqueTextAttentionMaps", dict(probe=probe, conditioning=pos)),
        ("EnfoqueTextAttentionMaps", dict(probe=clip_probe, conditioning=pos, encoder="g")),
        ("EnfoqueHeatmaps", dict(maps=maps, colormap="rainbow", opacity=0.5, normalisation="minmax", columns=0)),
        ("EnfoqueHeatmaps", dict(maps=maps, colormap="viridis", opacity=0.5, normalisation="minmax", columns=0,
                                 over="steps")),
        ("EnfoqueHeatmaps", dict(maps=maps2, colormap="viridis", opacity=0.5, normalisation="minmax", columns=0,
                                 image=torch.rand(3, 8, 8, 3))),
        ("EnfoqueMapsToMask", dict(maps=maps, words="dog", threshold=0.0)),
        ("EnfoqueMapsToMask", dict(maps=maps, words="cat", threshold=2.0)),
        ("EnfoqueSaveAttentionMaps", dict(maps=maps, filename_prefix="enfoque/x", format="tiff")),
        ("EnfoqueLoadAttentionMaps", dict(file="nope.npz")),
    ]
    messages = []
    for node_id, kwargs in attempts:
        try:
            comfy.run(node_id, **kwargs)
        except ValueError as exc:
            messages.append((node_id, str(exc)))
        else:
            pytest.fail(f"{node_id} ran with {sorted(kwargs)}; expected a ValueError")
    return messages


def test_errors_follow_one_style(comfy, tiny_dir):
    """The node's display name once, in front; the bad value; what is available, each once; the fix;
    no internal function names (such as the 'select:' of before) and no node ids."""
    names = display_names(comfy)
    for node_id, msg in _errors(comfy, tiny_dir):
        name = names[node_id]
        assert msg.startswith(f"{name}: "), msg
        assert msg.count(name) == 1, f"the node's name more than once: {msg}"
        assert not re.search(r"\bEnfoque[A-Z][A-Za-z]+\b", msg), f"a node id instead of a display name: {msg}"
        body = msg[len(name) + 2 :]
        assert not re.match(r"[a-z_]+(\.[a-z_]+)*: ", body), f"an internal name in front: {msg}"
        for listing in re.findall(r"(?:captured words|its words|Available|options|recorded|captured steps|encoders that ran): ([^.;]*)", msg):
            items = [x.strip() for x in listing.split(",") if x.strip()]
            assert len(items) == len(set(items)), f"a list with repeats: {msg}"
    # a few that must name the value and the fix
    text = dict(_errors(comfy, tiny_dir)[:1])["EnfoqueAttentionMaps"]
    assert "'dog'" in text and "captured words: a, cat, and, red." in text and "leave words empty" in text


def test_engine_errors_lose_their_internal_prefix(comfy):
    out = comfy.submodule("nodes.common.errors")
    assert out.engine_message(ValueError("select: word 'x' is not among the map labels. Available: 'a'.")) == (
        "word 'x' is not among the map labels. Available: 'a'."
    )
    assert out.engine_message(ValueError("heatmap_panels: put EnfoquePatchCLIP first")) == "put Enfoque Patch CLIP first"


# --------------------------------------------------------------------------- honest settings


def test_tooltips_and_descriptions_name_nodes_by_their_display_names(comfy):
    names = display_names(comfy)
    for node_id in names:
        schema = comfy.node(node_id).GET_SCHEMA()
        texts = [schema.description or ""] + [getattr(i, "tooltip", None) or "" for i in schema.inputs]
        for text in texts:
            assert not re.search(r"\bEnfoque[A-Z][A-Za-z]+\b", text), f"{node_id}: {text}"
    mask = comfy.node("EnfoqueMapsToMask").INPUT_TYPES()["required"]["threshold"][1]["tooltip"]
    assert "0 = automatic" in mask and "best separates attended from unattended" in mask
    maps = comfy.node("EnfoqueAttentionMaps").INPUT_TYPES()["optional"]["cond_index"][1]
    assert maps["display_name"] == "prompt_number" and "combined" in maps["tooltip"]


def test_cond_index_keeps_working_under_its_new_label(comfy, tiny_dir):
    """The input keeps its id (API prompts and saved widget values); only the label changed."""
    _, probe, _, out = sampled(comfy, tiny_dir)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="cat", cond_index=0)[0]
    assert maps.words == ["cat"] and maps.meta["cond_index"] == 0
    with pytest.raises(ValueError, match=r"no maps of the positive prompt number 1; recorded: negative #0, positive #0|"
                                         r"no maps of the positive prompt number 1; recorded: positive #0"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="", cond_index=1)


def test_weights_with_reweight_off_give_a_notice_not_an_error(comfy, tiny_dir, caplog):
    notices = comfy.submodule("nodes.model_patch.wrappers")
    sent = []
    real = notices.notify
    notices.notify = lambda node, text: sent.append((node, text))
    try:
        with caplog.at_level(logging.WARNING):
            sampled(comfy, tiny_dir, reweight="off", weights="cat:1.5, red:0.5")
        warned = [r.getMessage() for r in caplog.records if "reweight is off" in r.getMessage()]
        assert warned, "no warning in the log"
        assert warned[0].startswith("Enfoque Patch Model: reweight is off, so the diffusion model ignores the word "
                                    "weights of the prompt ('cat' 1.5, 'red' 0.5)")
        assert "Set reweight to bias or scale" in warned[0]
        assert sent and sent[-1] == ("7", warned[0]), "the node (its id) was not told"
        caplog.clear()
        sent.clear()
        # no weights: nothing to say, and the node's notice is cleared
        with caplog.at_level(logging.WARNING):
            sampled(comfy, tiny_dir, reweight="off")
        assert not [r for r in caplog.records if "reweight is off" in r.getMessage()]
        assert sent == [("7", "")]
        sent.clear()
        # reweight on: the weights act; the node's notice (from an earlier setting) is cleared
        with caplog.at_level(logging.WARNING):
            sampled(comfy, tiny_dir, reweight="bias", weights="cat:1.5")
        assert sent == [("7", "")]
        assert not [r for r in caplog.records if "reweight is off" in r.getMessage()]
    finally:
        notices.notify = real


# --------------------------------------------------------------------------- maps over steps and blocks


def test_heatmaps_over_steps_and_blocks_in_process(comfy, tiny_dir):
    _, probe, _, out = sampled(comfy, tiny_dir, keep_steps=True, keep_blocks=True, steps=3)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="red cat, chair")[0]
    assert [f.caption.split("  ")[0] for f in maps.steps] == ["step 0", "step 1", "step 2"]
    assert all(re.fullmatch(r"step \d  sigma \d+\.\d{3}", f.caption) for f in maps.steps)
    sigmas = [float(f.caption.split("sigma ")[1]) for f in maps.steps]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[0] > sigmas[-1]
    assert [f.caption for f in maps.blocks] == ["block 0", "block 1"]  # the tiny SD3 has two joint blocks
    # each frame is the pooled map of that step: their mean is the mean map (every step has the same calls)
    assert torch.allclose(torch.stack([f.maps for f in maps.steps]).mean(0), maps.maps, atol=1e-6)

    run = dict(colormap="viridis", opacity=0.6, normalisation="minmax", columns=0)
    mean = comfy.run("EnfoqueHeatmaps", maps=maps, **run)[0]
    steps = comfy.run("EnfoqueHeatmaps", maps=maps, over="steps", **run)[0]
    blocks = comfy.run("EnfoqueHeatmaps", maps=maps, over="blocks", **run)[0]
    assert mean.shape[0] == 1 and steps.shape[0] == 3 and blocks.shape[0] == 2
    assert steps.shape[2] == mean.shape[2] and steps.shape[1] > mean.shape[1]  # a caption bar on top
    assert not torch.equal(steps[0], steps[2])
    # two images of a batch sit side by side in each frame
    image = torch.rand(2, 48, 64, 3)
    both = comfy.run("EnfoqueHeatmaps", maps=maps, image=image, over="steps", **run)[0]
    one = comfy.run("EnfoqueHeatmaps", maps=maps, image=image[:1], over="steps", **run)[0]
    assert both.shape[0] == 3 and both.shape[2] == 2 * one.shape[2]

    # maps without frames (kept off, loaded from a file, a selection): a clear error
    plain = comfy.submodule("attention.maps").AttentionMaps(maps=maps.maps, words=maps.words, meta=maps.meta)
    with pytest.raises(ValueError, match=r"^Enfoque Heatmaps: over 'steps' needs the maps of each step, and these "
                                         r"maps hold only their mean\. Turn on keep_steps on Enfoque Patch Model"):
        comfy.run("EnfoqueHeatmaps", maps=plain, over="steps", **run)


def test_each_frame_draws_its_own_step_or_block(comfy, tiny_dir):
    """Over steps (blocks), frame i below its caption bar is the picture Enfoque Heatmaps draws from the maps
    of that one step (block), read by Enfoque Attention Maps with step = k (block = k), not the mean's."""
    _, probe, _, out = sampled(comfy, tiny_dir, keep_steps=True, keep_blocks=True, steps=3)
    words = "red cat, chair"
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=words)[0]
    run = dict(colormap="viridis", opacity=0.6, normalisation="minmax", columns=0)
    image = torch.rand(2, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    res = probe.result
    for over, kept in (("steps", res.active_steps), ("blocks", res.blocks)):
        assert len(kept) >= 2, kept
        for img in (None, image):
            frames = comfy.run("EnfoqueHeatmaps", maps=maps, image=img, over=over, **run)[0]
            mean = comfy.run("EnfoqueHeatmaps", maps=maps, image=img, **run)[0]
            assert frames.shape[0] == len(kept)
            drawn = []
            for i, k in enumerate(kept):
                one = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words=words,
                                **{over[:-1]: k})[0]
                assert torch.equal(getattr(maps, over)[i].maps, one.maps), f"{over} frame {i} holds other maps"
                panels = comfy.run("EnfoqueHeatmaps", maps=one, image=img, **run)[0]
                own = torch.cat(list(panels), dim=1)  # the images of a batch side by side
                bar = frames.shape[1] - own.shape[0]
                assert bar > 0 and frames.shape[2] == own.shape[1]
                assert torch.equal(frames[i, bar:], own), f"{over} frame {i} is not drawn from {over[:-1]} {k}"
                drawn.append(own)
            # what the frames show differs from frame to frame, and from the mean
            assert not torch.equal(drawn[0], drawn[-1])
            assert not any(torch.equal(d, torch.cat(list(mean), dim=1)) for d in drawn)


def steps_graph(prefix: str, steps: int, over: str = "steps") -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_clip_l.safetensors", "type": "sd3"}},
        "3": {"class_type": "EnfoquePatchCLIP", "inputs": {"clip": ["2", 0], "weight_mode": "attention", "capture": True}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cat on a blue chair", "clip": ["3", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["3", 0]}},
        "6": {"class_type": "EnfoquePatchModel", "inputs": {
            "model": ["1", 0], "capture": True, "reweight": "bias", "blocks": "all", "start_percent": 0.0,
            "end_percent": 1.0, "keep_steps": over == "steps", "keep_blocks": over == "blocks"}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": W, "height": H, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0], "seed": int(uuid.uuid4().int % 2**31), "steps": steps, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "EnfoqueAttentionMaps", "inputs": {"probe": ["6", 1], "latent": ["8", 0], "words": "red cat, chair"}},
        "10": {"class_type": "EnfoqueHeatmaps", "inputs": {
            "maps": ["9", 0], "colormap": "turbo", "opacity": 0.6, "normalisation": "minmax", "columns": 0, "over": over}},
        "11": {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": ["10", 0], "filename_prefix": prefix, "fps": 4.0, "lossless": False, "quality": 80,
            "method": "default"}},
    }


@pytest.mark.server
@pytest.mark.parametrize(("over", "frames"), [("steps", 4), ("blocks", 2)])
def test_over_steps_into_save_animated_webp(comfy_server, over, frames):
    """The live server: Enfoque Heatmaps over=steps (blocks) into stock SaveAnimatedWEBP, one frame per step (block)."""
    prefix = f"enfoque_test/anim_{over}_{uuid.uuid4().hex[:8]}"
    outputs = comfy_server.run(steps_graph(prefix, steps=4, over=over), timeout=180)["outputs"]
    (saved,) = outputs["11"]["images"]
    path = comfy_server.output_dir / saved["subfolder"] / saved["filename"]
    with Image.open(path) as im:
        assert im.format == "WEBP" and getattr(im, "is_animated", False) == (frames > 1)
        assert im.n_frames == frames
        pictures = []
        for i in range(im.n_frames):
            im.seek(i)
            pictures.append(im.convert("RGB").copy())
    assert len({p.tobytes() for p in pictures}) == frames, "frames repeat"
    assert outputs["10"]["enfoque_words"] == ["red cat", "chair"]
    assert len(outputs["10"]["images"]) == frames  # the node's own preview: every frame


@pytest.mark.server
def test_over_steps_without_keep_steps_fails_with_the_fix(comfy_server):
    graph = steps_graph(f"enfoque_test/anim_{uuid.uuid4().hex[:8]}", steps=2)
    graph["6"]["inputs"]["keep_steps"] = False
    with pytest.raises(ExecutionError, match=r"Enfoque Heatmaps: over 'steps' needs the maps of each step.*Turn on "
                                             r"keep_steps on Enfoque Patch Model"):
        comfy_server.run(graph, timeout=180)


@pytest.mark.server
def test_template_for_animation_uses_the_stock_saver(comfy_server):
    """The animation template's Enfoque Heatmaps draws one frame per step (over steps, keep_steps on), read by
    widget name in the order the frontend saves them (/object_info's), into the stock Save Animated WEBP."""
    from templates import api_prompt  # tools/templates.py

    path = REPO_ROOT / "example_workflows" / "SD3.5 - attention over the denoising steps.json"
    wf = json.loads(path.read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in wf["nodes"]}
    heat = next(n for n in nodes.values() if n["type"] == "EnfoqueHeatmaps")
    patch = next(n for n in nodes.values() if n["type"] == "EnfoquePatchModel")
    queued = api_prompt(wf, comfy_server.object_info())
    assert queued[str(heat["id"])]["inputs"]["over"] == "steps"
    assert queued[str(patch["id"])]["inputs"]["keep_steps"] is True
    (link,) = [lk for lk in wf["links"] if lk[1] == heat["id"]]
    assert nodes[link[3]]["type"] == "SaveAnimatedWEBP"
