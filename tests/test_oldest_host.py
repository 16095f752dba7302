"""The oldest supported host, ComfyUI 0.3.64 (upstream a125cd84b054a57729b5eecab930ca9408719832).

A process can import one ComfyUI only, so a subset of the host tests runs in a
subprocess with ``COMFYUI_PATH`` pointing at the oldest checkout: loading, sampling
the tiny models, the model probe, the text encoders, the output nodes, ComfyUI's own
SDPA call on the fused route (0.3.64 sets its kernel priority on any CUDA) and the
hardening checks (composition, lifecycle, a few bad inputs through a live server).

The checkout is found as ``COMFYUI_OLDEST_PATH``, then ``.venv/.comfyui-oldest-path``
(written by ``tools/setup.sh``), then the per-user cache
``${XDG_CACHE_HOME:-~/.cache}/enfoque/comfyui-<commit>``; without one the test is
skipped with that reason.

Two things of the test environment, not of the pack, differ on 0.3.64 and are
bridged here for the subprocess only (this module doubles as its pytest plugin):
- ``tiny_models`` builds Flux with keys 0.3.64's ``FluxParams`` does not know
  (``txt_ids_dims``, ``yak_mlp``, ``txt_norm``), and 0.3.64's detection hard-codes
  Flux's hidden size; the plugin drops the unknown keys and reads the size from
  the weights.
- the shared venv has the ``comfyui-workflow-templates`` the primary host pins,
  which no longer ships the ``templates`` folder 0.3.64's server serves; an empty
  stand-in package first on ``PYTHONPATH`` lets that server start.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import host
import pytest

OLDEST_COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"
OLDEST_VERSION = "0.3.64"
SUBRUN_ENV = "ENFOQUE_OLDEST_HOST_RUN"
TESTS = Path(__file__).resolve().parent

HARDENING = [
    f"test_hardening.py::test_bad_input_live[{case}]"
    for case in (
        "blocks-out-of-range", "start-nan", "capture-words-unknown", "prompt-weight-nan", "weights-inf",
        "maps-prompt-unknown", "maps-latent-of-another-size", "text-level-unknown", "heatmaps-opacity-nan",
        "save-100kB-prefix",
    )
] + [
    f"test_hardening.py::{name}"
    for name in (
        "test_budget_refusal_live", "test_interrupted_prompt_leaves_no_state", "test_sd3_layout_without_t5",
        "test_long_t5_prompt_is_not_captured", "test_foreign_attention_kernel_before_ours",
        "test_comfy_guidance_patches", "test_lora_patched_model", "test_two_patches_in_a_row",
        "test_hires_fix_graph", "test_no_tensors_kept_after_a_run", "test_interrupted_and_failed_runs_leave_nothing",
    )
]
# Step 13's families that ComfyUI 0.3.64 has (it has no Flux 2 and no Z-Image)
OLDEST_FAMILIES = ("qwen_image", "chroma", "wan", "lumina2")
FAMILIES = [
    f"test_families.py::{test}[{name}]"
    for test in ("test_capture_is_neutral_and_maps_have_the_words", "test_maps_equal_naive_reference",
                 "test_layout_matches_comfy_tokenizer_ids", "test_tokenize_route_gives_the_layout_words")
    for name in OLDEST_FAMILIES
] + [
    f"test_families.py::test_weights_act_on_the_captured_columns[{name}-{mode}]"
    for name in OLDEST_FAMILIES for mode in ("bias", "scale")
] + [
    f"test_families.py::{name}"
    for name in ("test_token_weights_on_an_llm_prompt_reach_the_model", "test_wan_maps_have_one_frame_per_latent_frame",
                 "test_a_known_family_that_records_nothing_says_why", "test_unknown_family_is_refused",
                 "test_lumina2_system_prompt_is_template",
                 "test_patch_clip_on_llm_encoders_captures_exact_maps[qwen_image]",
                 "test_patch_clip_on_llm_encoders_captures_exact_maps[lumina2]",
                 "test_prompt_weights_on_llm_encoders[qwen_image]")
]
SUBSET = ["test_host_basics.py", "test_model_probe.py", "test_text_encoders.py", "test_output_nodes.py",
          "test_comfy_sdpa.py", *HARDENING, *FAMILIES]


def find_oldest() -> tuple[Path | None, str]:
    """The oldest-host checkout and where it came from."""
    candidates: list[tuple[Path, str]] = []
    if os.environ.get("COMFYUI_OLDEST_PATH"):
        candidates.append((Path(os.environ["COMFYUI_OLDEST_PATH"]).expanduser(), "COMFYUI_OLDEST_PATH"))
    written = host.REPO_ROOT / ".venv" / ".comfyui-oldest-path"
    if written.is_file() and written.read_text().strip():
        candidates.append((Path(written.read_text().strip()).expanduser(), str(written)))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidates.append((cache / "enfoque" / f"comfyui-{OLDEST_COMMIT}", "the per-user cache"))
    for path, origin in candidates:
        if host._is_checkout(path):
            return path.resolve(), origin
    return None, ""


def comfy_version(path: Path) -> str | None:
    try:
        text = (path / "comfyui_version.py").read_text()
    except OSError:
        return None
    m = re.search(r"""__version__\s*=\s*["']([^"']+)""", text)
    return m.group(1) if m else None


def templates_stand_in(folder: Path) -> str | None:
    """A folder holding an empty ``comfyui_workflow_templates`` with a ``templates`` dir, if the installed
    package has none (what 0.3.64's server needs to start); None when the installed one will do."""
    spec = importlib.util.find_spec("comfyui_workflow_templates")
    if spec is not None and any((Path(p) / "templates").is_dir() for p in spec.submodule_search_locations or ()):
        return None
    pkg = folder / "comfyui_workflow_templates"
    (pkg / "templates").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Test stand-in: 0.3.64 serves this package\'s templates folder."""\n')
    return str(folder)


@pytest.mark.host
def test_oldest_host_subset(tmp_path):
    if os.environ.get(SUBRUN_ENV):
        pytest.skip("this is the oldest-host run itself")
    oldest, origin = find_oldest()
    if oldest is None:
        pytest.skip(
            f"no ComfyUI {OLDEST_VERSION} checkout (oldest supported host, {OLDEST_COMMIT[:12]}): set "
            "COMFYUI_OLDEST_PATH or run `make setup`"
        )
    version = comfy_version(oldest)
    if origin == "the per-user cache":
        assert version == OLDEST_VERSION, f"{oldest} holds ComfyUI {version}, not {OLDEST_VERSION}"
    paths = [p for p in (templates_stand_in(tmp_path / "stand-in"), str(TESTS)) if p]
    env = dict(os.environ)
    env.update(
        COMFYUI_PATH=str(oldest),
        PYTHONPATH=os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        **{SUBRUN_ENV: "1"},
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "test_oldest_host",
           "--basetemp", str(tmp_path / "run"), *[str(TESTS / t) for t in SUBSET]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=host.REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    tail = "\n".join([ln for ln in out.splitlines() if not ln.startswith(" ")][-60:])
    assert f"ComfyUI host: {oldest}" in out, f"the subprocess did not use {oldest}:\n{tail}"
    assert proc.returncode == 0, f"host tests fail on ComfyUI {version} ({oldest}):\n{tail}"
    collected = re.search(r"collected (\d+) items", out)
    summary = re.search(r"=+ (\d+) passed in [^=]+=+", out)  # all passed: nothing failed, skipped or erred
    assert collected and summary and summary.group(1) == collected.group(1), f"not all ran and passed:\n{tail}"
    print(f"\nComfyUI {version} at {oldest} ({origin}): {summary.group(1)} host tests passed in {seconds:.0f} s")


# --------------------------------------------------------------------------- the subprocess's plugin


def pytest_configure(config):
    """In the oldest-host run (``-p test_oldest_host``): bridge the tiny models to 0.3.64 (see above)."""
    if not os.environ.get(SUBRUN_ENV):
        return
    import tiny_models

    flux_config, detect = tiny_models.flux_config, tiny_models._detect

    def flux_config_for_host(*args, **kwargs):
        import comfy.ldm.flux.model as flux_model

        known = {f.name for f in dataclasses.fields(flux_model.FluxParams)} | {"image_model"}
        return {k: v for k, v in flux_config(*args, **kwargs).items() if k in known}

    def detect_for_host(sd):
        cfg = detect(sd)
        if cfg.get("image_model") == "flux" and "img_in.weight" in sd:
            cfg["hidden_size"] = int(sd["img_in.weight"].shape[0])
        return cfg

    tiny_models.flux_config = flux_config_for_host
    tiny_models._detect = detect_for_host
