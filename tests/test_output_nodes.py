"""The output nodes (EnfoqueHeatmaps, EnfoqueMapsToMask, EnfoqueSaveAttentionMaps,
EnfoqueLoadAttentionMaps) run by ComfyUI: in-process through the registered
classes, and end to end through a live server from tiny SD3 sampling to files
on disk and back. The UI example workflows (templates) are checked in
tests/test_templates.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ksampler, tiny_sd3_prompt
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host import REPO_ROOT, ExecutionError  # noqa: E402

pytestmark = pytest.mark.host

EXAMPLES = REPO_ROOT / "example_workflows"
NODE_IDS = ["EnfoqueHeatmaps", "EnfoqueMapsToMask", "EnfoqueSaveAttentionMaps", "EnfoqueLoadAttentionMaps"]


def pack(comfy):
    """The pack's modules as ComfyUI loaded them (the classes the nodes check against)."""
    return comfy.submodule("attention.maps"), comfy.submodule("attention.export")


def make_maps(comfy, shape=(1, 3, 8, 12), words=("a", "red", "cat"), meta=None, seed=0):
    maps_mod, _ = pack(comfy)
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g) ** 3 * 0.05
    meta = {"model_family": "sd3", "image_size": [64, 96], "normalisation": "none"} if meta is None else meta
    return maps_mod.AttentionMaps(maps=t, words=list(words), meta=meta)


def unique_prefix(stem: str) -> str:
    return f"enfoque_test/{stem}_{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- registration


def test_nodes_are_registered_with_contract_inputs(comfy):
    assert set(NODE_IDS) <= comfy.node_ids
    heat = comfy.node("EnfoqueHeatmaps").INPUT_TYPES()
    assert list(heat["required"]) == ["maps", "colormap", "opacity", "normalisation", "columns"]
    assert list(heat["optional"]) == ["image", "over", "upscale"]  # new inputs go last: old widget values stay
    assert heat["optional"]["over"][1]["options"] == ["mean", "steps", "blocks", "frames"]  # frames: Step 13 (video)
    assert heat["optional"]["over"][1]["default"] == "mean"
    assert heat["required"]["maps"][0] == "ENFOQUE_MAPS"
    assert heat["required"]["colormap"][1]["options"] == ["viridis", "inferno", "turbo", "jet"]
    assert heat["required"]["normalisation"][1]["options"] == ["minmax", "text", "softmax", "none"]
    assert heat["required"]["opacity"][1]["default"] == 0.6
    assert heat["required"]["columns"][1]["default"] == 0
    mask = comfy.node("EnfoqueMapsToMask").INPUT_TYPES()
    assert list(mask["required"]) == ["maps", "words", "threshold"]
    assert list(mask["optional"]) == ["width", "height", "image"]
    save = comfy.node("EnfoqueSaveAttentionMaps")
    st = save.INPUT_TYPES()["required"]
    assert st["filename_prefix"][1]["default"] == "enfoque/maps"
    assert st["format"][1]["options"] == ["safetensors", "npz", "png"]
    assert save.OUTPUT_NODE is True
    load = comfy.node("EnfoqueLoadAttentionMaps")
    assert list(load.INPUT_TYPES()["required"]) == ["file"]
    assert load.RETURN_TYPES == ["ENFOQUE_MAPS"]


# --------------------------------------------------------------------------- in-process


def test_heatmaps_alone_and_over_image(comfy):
    m = make_maps(comfy)
    out = comfy.run(
        "EnfoqueHeatmaps", maps=m, colormap="viridis", opacity=0.6, normalisation="minmax", columns=0
    )
    img = out[0]
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3
    assert img.dtype == torch.float32 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert img.shape[2] > img.shape[1]  # 2 columns x 2 rows of 8x12 (wide) panels
    ui = out.ui
    assert ui["enfoque_words"] == ["a", "red", "cat"]
    assert len(ui["enfoque_shares"]) == 1 and abs(sum(ui["enfoque_shares"][0]) - 1.0) < 1e-5
    (preview,) = ui["images"]
    assert preview["type"] == "temp"
    assert (comfy.temp_dir / preview["subfolder"] / preview["filename"]).is_file()

    image = torch.rand(2, 64, 96, 3)  # two images, one map row: broadcast
    over = comfy.run(
        "EnfoqueHeatmaps",
        maps=m,
        image=image,
        colormap="inferno",
        opacity=0.0,
        normalisation="text",
        columns=3,
    )[0]
    assert over.shape[0] == 2
    assert over.shape[2] == 3 * 96 + 2 * 4  # three panels of the image's width, 4 px gaps
    # opacity 0: the panels show the image itself
    assert torch.allclose(over[:, :64, :96], image, atol=1 / 255 + 1e-6)


def test_heatmaps_errors_name_the_node(comfy):
    m = make_maps(comfy)
    with pytest.raises(ValueError, match=r"^Enfoque Heatmaps: 2 map rows but 3 images"):
        comfy.run(
            "EnfoqueHeatmaps",
            maps=make_maps(comfy, shape=(2, 3, 8, 12)),
            image=torch.rand(3, 8, 8, 3),
            colormap="viridis",
            opacity=0.5,
            normalisation="minmax",
            columns=0,
        )
    with pytest.raises(ValueError, match="^Enfoque Heatmaps: colormap 'rainbow' is not an option; options: viridis"):
        comfy.run(
            "EnfoqueHeatmaps", maps=m, colormap="rainbow", opacity=0.5, normalisation="minmax", columns=0
        )
    with pytest.raises(ValueError, match="^Enfoque Heatmaps: maps is Tensor, not ENFOQUE_MAPS"):
        comfy.run(
            "EnfoqueHeatmaps",
            maps=torch.zeros(1, 1, 2, 2),
            colormap="viridis",
            opacity=0.5,
            normalisation="minmax",
            columns=0,
        )


def test_maps_to_mask_sizes_and_words(comfy):
    maps_mod, _ = pack(comfy)
    t = torch.zeros(2, 3, 4, 6)
    t[:, 2, 1:3, 0:2] = 1.0  # "cat" attends top-left
    t[:, 1, :, 5] = 0.5  # "red" the right edge
    m = maps_mod.AttentionMaps(maps=t, words=["a", "red", "cat"], meta={"image_size": [40, 60]})

    mask = comfy.run("EnfoqueMapsToMask", maps=m, words="cat", threshold=0.5)[0]
    assert tuple(mask.shape) == (2, 40, 60)  # meta image_size, [H, W]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[:, 15, 5].eq(1).all() and mask[:, 35, 55].eq(0).all()

    auto = comfy.run("EnfoqueMapsToMask", maps=m, words="", threshold=0.0, width=0, height=0)[0]
    assert auto[:, 15, 5].eq(1).all() and auto[:, 20, 58].eq(1).all()  # all words: cat and red

    both = comfy.run("EnfoqueMapsToMask", maps=m, words="red, cat", threshold=0.3, width=30, height=20)[0]
    assert tuple(both.shape) == (2, 20, 30)
    one = comfy.run("EnfoqueMapsToMask", maps=m, words="cat", threshold=0.3, width=12, height=0)[0]
    assert tuple(one.shape) == (2, 8, 12)  # height follows the maps' 4:6 aspect

    no_meta = maps_mod.AttentionMaps(maps=t, words=["a", "red", "cat"], meta={})
    plain = comfy.run("EnfoqueMapsToMask", maps=no_meta, words="cat", threshold=0.0)[0]
    assert tuple(plain.shape) == (2, 4, 6)  # no image size recorded: the map size

    with pytest.raises(
        ValueError, match=r"^Enfoque Maps To Mask: word 'dog' .*Available: 'a', 'red', 'cat'\. Pick words"
    ):
        comfy.run("EnfoqueMapsToMask", maps=m, words="dog", threshold=0.0)
    with pytest.raises(ValueError, match="^Enfoque Maps To Mask: threshold 1.5"):
        comfy.run("EnfoqueMapsToMask", maps=m, words="cat", threshold=1.5)


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "png"])
def test_save_node_writes_and_never_overwrites(comfy, fmt):
    _, export = pack(comfy)
    m = make_maps(comfy, shape=(2, 3, 8, 12))
    prefix = unique_prefix(f"inproc_{fmt}")
    first = comfy.run("EnfoqueSaveAttentionMaps", maps=m, filename_prefix=prefix, format=fmt)
    second = comfy.run("EnfoqueSaveAttentionMaps", maps=m, filename_prefix=prefix, format=fmt)
    files = []
    for out in (first, second):
        (entry,) = out.ui["enfoque_files"]
        assert entry["type"] == "output" and entry["subfolder"] == str(Path(prefix).parent)
        path = comfy.output_dir / entry["subfolder"] / entry["filename"]
        files.append(path)
        back = export.load(path)
        assert back.words == m.words and back.meta == m.meta
        if fmt == "png":
            assert len(out.ui["images"]) == 2 * 3
            assert all((path.parent / x["filename"]).is_file() for x in out.ui["images"])
            assert torch.allclose(back.maps, m.maps, rtol=0, atol=float(m.maps.max()) / 65535)
        else:
            assert torch.equal(back.maps, m.maps)
    assert files[0] != files[1]  # the counter moved on
    assert files[0].name.startswith(Path(prefix).name + "_00001_")
    assert files[1].name.startswith(Path(prefix).name + "_00002_")


def test_save_node_takes_the_next_free_name_on_a_race(comfy, monkeypatch):
    """Another writer took the counter ComfyUI picked: the node moves on instead of overwriting."""
    import folder_paths

    _, export = pack(comfy)
    prefix = unique_prefix("race")
    folder = comfy.output_dir / Path(prefix).parent
    folder.mkdir(parents=True, exist_ok=True)
    taken = folder / f"{Path(prefix).name}_00001_.npz"
    real = folder_paths.get_save_image_path

    def stale(*args, **kwargs):  # ComfyUI computed the counter before the other file appeared
        out = real(*args, **kwargs)
        taken.write_bytes(b"another writer")
        return out

    monkeypatch.setattr(folder_paths, "get_save_image_path", stale)
    out = comfy.run("EnfoqueSaveAttentionMaps", maps=make_maps(comfy), filename_prefix=prefix, format="npz")
    assert out.ui["enfoque_files"][0]["filename"] == f"{Path(prefix).name}_00002_.npz"
    assert taken.read_bytes() == b"another writer"
    assert export.load(folder / f"{Path(prefix).name}_00002_.npz").words == ["a", "red", "cat"]


def test_save_node_refuses_path_escapes(comfy):
    m = make_maps(comfy)
    for bad in ("../../outside/maps", "/tmp/abs/maps"):
        with pytest.raises(
            ValueError, match="^Enfoque Save Attention Maps: filename_prefix .* outside the output folder"
        ):
            comfy.run("EnfoqueSaveAttentionMaps", maps=m, filename_prefix=bad, format="npz")
    with pytest.raises(ValueError, match="has no file name"):
        comfy.run("EnfoqueSaveAttentionMaps", maps=m, filename_prefix="  ", format="npz")
    assert not (comfy.output_dir.parent / "outside").exists()


def test_nan_and_inf_maps_give_clear_errors(comfy):
    for bad in (float("nan"), float("inf")):
        m = make_maps(comfy)
        m.maps[0, 1, 2, 3] = bad  # AttentionMaps refuses these on creation; a later in-place change gets here
        runs = {
            "EnfoqueHeatmaps": dict(colormap="viridis", opacity=0.6, normalisation="minmax", columns=0),
            "EnfoqueMapsToMask": dict(words="", threshold=0.0),
            "EnfoqueSaveAttentionMaps": dict(filename_prefix=unique_prefix("nan"), format="safetensors"),
        }
        for node_id, kwargs in runs.items():
            name = comfy.node(node_id).GET_SCHEMA().display_name
            with pytest.raises(ValueError, match=f"^{name}: the attention maps contain NaN or inf"):
                comfy.run(node_id, maps=m, **kwargs)
    assert not list(comfy.output_dir.rglob("nan_*"))


def test_load_node_lists_validates_and_fingerprints(comfy):
    _, export = pack(comfy)
    cls = comfy.node("EnfoqueLoadAttentionMaps")
    sub = comfy.input_dir / "enfoque_test" / uuid.uuid4().hex[:8]
    sub.mkdir(parents=True)
    rel = sub.relative_to(comfy.input_dir).as_posix()
    m = make_maps(comfy, shape=(1, 3, 5, 7))
    export.save_safetensors(m, sub / "m.safetensors")
    export.save_npz(m, sub / "m.npz")
    export.save_png(m, sub, "set_")
    (sub / "workflow.json").write_text('{"nodes": []}')
    (sub / "notes.txt").write_text("x")

    options = cls.INPUT_TYPES()["required"]["file"][1]["options"]
    mine = sorted(o for o in options if o.startswith(rel + "/"))
    assert mine == [f"{rel}/m.npz", f"{rel}/m.safetensors", f"{rel}/set_.json"]

    for name in mine:
        assert cls.validate_inputs(file=name) is True
        back = comfy.run("EnfoqueLoadAttentionMaps", file=name)[0]
        assert back.words == m.words and back.meta == m.meta and back.maps.shape == m.maps.shape

    fp = cls.fingerprint_inputs(file=f"{rel}/m.npz")
    assert fp == cls.fingerprint_inputs(file=f"{rel}/m.npz")
    (sub / "m.npz").unlink()
    export.save_npz(make_maps(comfy, shape=(1, 3, 5, 7), seed=9), sub / "m.npz")
    assert cls.fingerprint_inputs(file=f"{rel}/m.npz") != fp  # a changed file re-runs the node

    msg = cls.validate_inputs(file=f"{rel}/gone.npz")
    assert isinstance(msg, str) and msg.startswith("Enfoque Load Attention Maps:") and "not found" in msg
    msg = cls.validate_inputs(file=f"{rel}/workflow.json")
    assert isinstance(msg, str) and "not an Enfoque attention-maps file" in msg
    assert "outside" in cls.validate_inputs(file="../../etc/passwd.json")
    with pytest.raises(ValueError, match="^Enfoque Load Attention Maps: file .*gone.npz.* was not found"):
        comfy.run("EnfoqueLoadAttentionMaps", file=f"{rel}/gone.npz")

    # a file straight from the output folder, with ComfyUI's "[output]" annotation
    out_rel = f"{rel}/from_output.npz"
    export.save_npz(m, comfy.output_dir / out_rel)
    assert cls.validate_inputs(file=f"{out_rel} [output]") is True
    assert comfy.run("EnfoqueLoadAttentionMaps", file=f"{out_rel} [output]")[0].words == m.words

    (sub / "broken.npz").write_bytes((sub / "m.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match="^Enfoque Load Attention Maps: cannot load .*broken.npz.*Save it again"):
        comfy.run("EnfoqueLoadAttentionMaps", file=f"{rel}/broken.npz")


# --------------------------------------------------------------------------- live server

W, H = 160, 96  # non-square: latent 20x12, MMDiT token grid 10x6


def sampling_graph(prefix: str, words: str = "#1, #2, #3") -> dict:
    """Tiny SD3 sampling with the pack wired in; every output node of this module."""
    g = {
        **tiny_sd3_prompt(W, H),
        "10": {
            "class_type": "EnfoquePatchModel",
            "inputs": {
                "model": ["1", 0],
                "capture": True,
                "reweight": "bias",
                "blocks": "all",
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        },
        "6": ksampler(["10", 0], ["3", 0], ["4", 0], ["5", 0], seed=3),
        "11": {
            "class_type": "EnfoqueAttentionMaps",
            "inputs": {"probe": ["10", 1], "latent": ["6", 0], "words": words},
        },
        "20": {
            "class_type": "EmptyImage",
            "inputs": {"width": W, "height": H, "batch_size": 1, "color": 0x808080},
        },
        "12": {
            "class_type": "EnfoqueHeatmaps",
            "inputs": {
                "maps": ["11", 0],
                "image": ["20", 0],
                "colormap": "turbo",
                "opacity": 0.6,
                "normalisation": "minmax",
                "columns": 0,
            },
        },
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
        "14": {
            "class_type": "SaveImage",
            "inputs": {"images": ["12", 0], "filename_prefix": prefix + "_heat"},
        },
        "15": {
            "class_type": "EnfoqueMapsToMask",
            "inputs": {"maps": ["11", 0], "words": "", "threshold": 0.0},
        },
        "16": {"class_type": "MaskToImage", "inputs": {"mask": ["15", 0]}},
        "17": {
            "class_type": "SaveImage",
            "inputs": {"images": ["16", 0], "filename_prefix": prefix + "_mask"},
        },
    }
    for i, fmt in enumerate(("safetensors", "npz", "png")):
        g[str(30 + i)] = {
            "class_type": "EnfoqueSaveAttentionMaps",
            "inputs": {"maps": ["11", 0], "filename_prefix": prefix, "format": fmt},
        }
    return g


def output_path(server, entry: dict) -> Path:
    assert entry["type"] == "output"
    return server.output_dir / entry["subfolder"] / entry["filename"]


@pytest.fixture(scope="module")
def sampled(comfy, comfy_server):
    """One end-to-end run shared by the server tests of this module (sampling is the slow part)."""
    prefix = unique_prefix("e2e")
    info = comfy_server.object_info()
    for node in ("EnfoquePatchModel", "EnfoqueAttentionMaps", *NODE_IDS):
        assert node in info, f"{node} is not served"
    entry = comfy_server.run(sampling_graph(prefix), timeout=180)
    return prefix, entry["outputs"]


@pytest.mark.server
def test_server_end_to_end_outputs(comfy, comfy_server, sampled):
    _, export = pack(comfy)
    prefix, outputs = sampled

    heat_ui = outputs["12"]
    assert heat_ui["enfoque_words"] == ["#1", "#2", "#3"]
    assert len(heat_ui["enfoque_shares"]) == 1 and len(heat_ui["enfoque_shares"][0]) == 3
    assert heat_ui["images"] and heat_ui["images"][0]["type"] == "temp"
    assert outputs["13"]["images"]  # PreviewImage of the panels

    (saved_heat,) = outputs["14"]["images"]
    with Image.open(output_path(comfy_server, saved_heat)) as im:
        assert im.size[0] == 2 * W + 4  # 2 columns of image-wide panels for 3 words

    (saved_mask,) = outputs["17"]["images"]
    with Image.open(output_path(comfy_server, saved_mask)) as im:
        assert im.size == (W, H)  # the mask is at the image size, not the 10x6 token grid
        arr = np.asarray(im.convert("L"))
    assert set(np.unique(arr).tolist()) <= {0, 255}

    loaded = {}
    for node, fmt in (("30", "safetensors"), ("31", "npz"), ("32", "png")):
        (entry,) = outputs[node]["enfoque_files"]
        path = output_path(comfy_server, entry)
        assert path.is_file() and entry["filename"].startswith(Path(prefix).name)
        back = export.load(path)
        loaded[fmt] = back
        assert back.words == ["#1", "#2", "#3"]
        assert tuple(back.maps.shape) == (1, 3, 6, 10)  # [batch, words, H, W]: the aspect of 96x160
        assert back.meta["image_size"] == [H, W]
        assert back.meta["model_family"] == "sd3"
        assert torch.isfinite(back.maps).all() and float(back.maps.sum()) > 0
    assert len(outputs["32"]["images"]) == 3
    assert torch.equal(loaded["safetensors"].maps, loaded["npz"].maps)
    assert loaded["safetensors"].meta == loaded["npz"].meta == loaded["png"].meta
    x = loaded["safetensors"].maps
    tol = x.amax(dim=(2, 3), keepdim=True) / 65535
    assert ((loaded["png"].maps - x).abs() <= tol).all()


@pytest.mark.server
def test_server_load_node_round_trip(comfy, comfy_server, sampled):
    _, export = pack(comfy)
    _, outputs = sampled
    src = output_path(comfy_server, outputs["30"]["enfoque_files"][0])
    png_sidecar = output_path(comfy_server, outputs["32"]["enfoque_files"][0])
    sub = comfy_server.input_dir / "enfoque_test" / uuid.uuid4().hex[:8]
    sub.mkdir(parents=True)
    shutil.copy2(src, sub / "maps.safetensors")
    for p in export.files_of(png_sidecar):
        shutil.copy2(p, sub / p.name)
    rel = sub.relative_to(comfy_server.input_dir).as_posix()

    options = comfy_server.object_info()["EnfoqueLoadAttentionMaps"]["input"]["required"]["file"][1][
        "options"
    ]
    assert f"{rel}/maps.safetensors" in options and f"{rel}/{png_sidecar.name}" in options

    prefix = unique_prefix("reloaded")
    graph = {
        "1": {"class_type": "EnfoqueLoadAttentionMaps", "inputs": {"file": f"{rel}/maps.safetensors"}},
        "2": {"class_type": "EnfoqueLoadAttentionMaps", "inputs": {"file": f"{rel}/{png_sidecar.name}"}},
        "3": {
            "class_type": "EnfoqueHeatmaps",
            "inputs": {
                "maps": ["2", 0],
                "colormap": "jet",
                "opacity": 0.6,
                "normalisation": "none",
                "columns": 1,
            },
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {
            "class_type": "EnfoqueSaveAttentionMaps",
            "inputs": {"maps": ["1", 0], "filename_prefix": prefix, "format": "npz"},
        },
    }
    outs = comfy_server.run(graph, timeout=60)["outputs"]
    again = export.load(output_path(comfy_server, outs["5"]["enfoque_files"][0]))
    original = export.load(src)
    assert torch.equal(again.maps, original.maps) and again.meta == original.meta
    assert outs["3"]["enfoque_words"] == original.words

    bad = {
        "1": {"class_type": "EnfoqueLoadAttentionMaps", "inputs": {"file": f"{rel}/nope.safetensors"}},
        "2": {
            "class_type": "EnfoqueSaveAttentionMaps",
            "inputs": {"maps": ["1", 0], "filename_prefix": prefix, "format": "npz"},
        },
    }
    with pytest.raises(
        RuntimeError, match="Enfoque Load Attention Maps: file .*nope.safetensors.* was not found"
    ):
        comfy_server.post_prompt(bad)


@pytest.mark.server
def test_server_reports_node_errors(comfy_server, sampled):
    graph = sampling_graph(unique_prefix("err"))
    graph["15"]["inputs"]["words"] = "#999"  # not a captured position
    for k in ("12", "13", "14", "30", "31", "32"):
        del graph[k]
    with pytest.raises(
        ExecutionError, match="Enfoque Maps To Mask: word '#999' is not among the map labels"
    ):
        comfy_server.run(graph, timeout=120)


# --------------------------------------------------------------------------- the API example (templates: tests/test_templates.py)


@pytest.mark.server
def test_api_example_runs(comfy_server):
    prompt = json.loads((EXAMPLES / "api" / "tiny_sd3_maps.json").read_text(encoding="utf-8"))
    outputs = comfy_server.run(prompt, timeout=180)["outputs"]
    saved = [e for o in outputs.values() for e in o.get("enfoque_files", [])]
    assert saved, "the demo graph saved no maps"
    assert all(output_path(comfy_server, e).is_file() for e in saved)
