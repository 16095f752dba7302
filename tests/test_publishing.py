"""Publishing to the Comfy Registry: comfy-cli's own checks, offline.

- ``comfy node validate`` (comfy-cli, a test-only dependency) passes on the pack with no
  warning: the version, the classifiers and requires-comfyui are all read, and the
  security scan finds nothing.
- ``[tool.comfy]`` states the tested ComfyUI range, an icon that is a file of this
  repository, and the shapes model files as includes; the OS and accelerator classifiers
  are the registry's own words.
- What the registry archive would contain, built by comfy-cli's own packer (the one
  ``comfy node pack`` and ``comfy node publish`` use) into a temporary folder: the pack's
  files, nothing from .venv, out/, node_modules or caches. The listing is printed.

Skipped, with the reason, where comfy-cli is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from host import REPO_ROOT
from PIL import Image

COMFY_CLI = "comfy-cli"
MISSING = (
    f"{COMFY_CLI} is not installed (a test-only dependency: tools/setup.sh TEST_DEPS, "
    f"or {REPO_ROOT / '.venv' / 'bin' / 'pip'} install comfy-cli)"
)
TESTED = (">=0.3.64", "<=0.8.0")  # tests/test_oldest_host.py (0.3.64) and the pinned host (0.8.0)
SHAPES = ["models/enfoque_shapes_sd3.safetensors", "models/enfoque_shapes_vae.safetensors"]
NEVER = (".venv/", "out/", "node_modules/", "__pycache__/", ".pytest_cache/", ".ruff_cache/", ".hypothesis/",
         ".git/", "build/")


def comfy_cli():
    if importlib.util.find_spec("comfy_cli") is None:
        pytest.skip(MISSING)
    exe = shutil.which("comfy", path=str(Path(sys.executable).parent)) or shutil.which("comfy")
    if exe is None:
        pytest.skip(MISSING)
    return exe


def tracked() -> set[str]:
    """The files git tracks: what comfy-cli packs (it walks every file, .venv included, when git cannot say)."""
    try:
        # -z: the names as they are (plain `git ls-files` quotes non-ASCII names, which comfy-cli then drops)
        proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        pytest.skip(f"git cannot list the repository's files ({exc}); comfy-cli packs what git tracks")
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.skip(f"git cannot list the repository's files (exit {proc.returncode}); comfy-cli packs what git tracks")
    return {f for f in proc.stdout.split("\0") if f}


def offline_env(tmp_path: Path) -> dict:
    """comfy-cli keeps its config (and tracking consent) under the home folder: a fresh one, no prompts."""
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    env.pop("COMFY_WHERE", None)
    return env


def config():
    from comfy_cli.registry.config_parser import extract_node_configuration

    return extract_node_configuration(str(REPO_ROOT / "pyproject.toml"))


def test_comfy_node_validate_passes_without_warnings(tmp_path):
    exe = comfy_cli()
    proc = subprocess.run(
        [exe, "--skip-prompt", "--no-json", "node", "validate"],
        cwd=REPO_ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    print(out)
    assert proc.returncode == 0, out
    assert "All validation checks passed" in out, out
    assert "Warning" not in out and "Security warnings" not in out, out


def test_registry_metadata():
    comfy_cli()
    cfg = config()
    assert cfg.project.name == "enfoque" and re.fullmatch(r"\d+\.\d+\.\d+", cfg.project.version)
    assert cfg.project.supported_comfyui_version == ",".join(TESTED)
    assert cfg.project.supported_os == ["OS Independent"]
    assert cfg.project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert cfg.project.dependencies == [], "no runtime dependency beyond what ComfyUI installs"
    assert cfg.tool_comfy.publisher_id and cfg.tool_comfy.display_name == "Enfoque"
    assert cfg.tool_comfy.includes == SHAPES
    # the icon: a square PNG of at most 400 px in this repository, at the address the registry shows
    m = re.fullmatch(r"https://raw\.githubusercontent\.com/enfoque/enfoque/main/(.+)", cfg.tool_comfy.icon)
    assert m, cfg.tool_comfy.icon
    assert cfg.project.urls.repository == "https://github.com/enfoque/enfoque"
    with Image.open(REPO_ROOT / m.group(1)) as im:
        assert im.format == "PNG" and im.width == im.height <= 400, (im.format, im.size)
    assert m.group(1) in tracked(), f"the icon {m.group(1)} is not committed"


def test_registry_archive_contents(tmp_path):
    """The archive comfy-cli would upload, listed: the pack's files and nothing from .venv, out/ or caches."""
    comfy_cli()
    files = tracked()
    archive = tmp_path / "node.zip"
    code = ("import sys; from comfy_cli.file_utils import zip_files; "
            "zip_files(sys.argv[1], includes=sys.argv[2:])")
    proc = subprocess.run([sys.executable, "-c", code, str(archive), *config().tool_comfy.includes],
                          cwd=REPO_ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
    names = [i.filename for i in infos]
    total = sum(i.file_size for i in infos)
    print(f"registry archive: {len(names)} entries, {total / 2**20:.1f} MB uncompressed, "
          f"{archive.stat().st_size / 2**20:.1f} MB packed")
    for i in infos:
        print(f"  {i.file_size:>10}  {i.filename}")
    bad = [n for n in names if any(n.startswith(p) or f"/{p}" in n for p in NEVER) or n.endswith(".pyc")]
    assert not bad, f"the archive carries what it must not: {bad[:20]}"
    for needed in ("__init__.py", "pyproject.toml", "LICENSE", "README.md", "nodes/extension.py", "js/enfoque.js",
                   "attention/engine.py", "docs/icon.png"):
        assert needed in names, f"{needed} is missing from the archive"
    # comfy-cli packs what `git ls-files` prints; it drops a file whose name git quotes (non-ASCII, quotes)
    missing = sorted({f for f in files if (REPO_ROOT / f).is_file()} - set(names))
    assert not missing, f"tracked files missing from the archive (a name git quotes?): {missing[:20]}"
    # every committed template with its thumbnail; the working tree may hold templates not committed yet,
    # which a published archive cannot carry (the registry packs a clean clone)
    templates = sorted(f for f in files if re.fullmatch(r"example_workflows/[^/]+\.json", f))
    assert templates, "no template in example_workflows/ is committed"
    for t in templates:
        assert t in names, f"{t} is missing from the archive"
        assert f"{t[:-len('.json')]}.jpg" in names, f"the thumbnail of {t} is missing from the archive"
    # the shapes model files, once they exist, with their full size
    for include in SHAPES:
        path = REPO_ROOT / include
        if path.is_file():
            assert next(i for i in infos if i.filename == include).file_size == path.stat().st_size


@pytest.mark.parametrize("include", SHAPES)
def test_included_model_files_exist(include):
    """comfy-cli packs a missing include as an empty folder of that name: publish only once they exist."""
    if not (REPO_ROOT / include).is_file():
        pytest.skip(f"{include} does not exist yet (the shapes model, tools/shapes.py); publish after it does")
    assert (REPO_ROOT / include).stat().st_size > 0
