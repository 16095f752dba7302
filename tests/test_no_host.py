"""The README's promise on a machine without ComfyUI: ``make test`` still passes.

- ``tools/setup.sh`` without any host (an empty ``XDG_CACHE_HOME``, no ``COMFYUI_PATH``, a ``git``
  that cannot clone, then cloning switched off with ``ENFOQUE_NO_CLONE=1``) exits 0, says how to
  provide a host, installs the pinned torch pair, numpy, safetensors, Pillow and test tools (into a
  stand-in venv whose ``pip`` only records what it was asked), forgets any host recorded before and
  touches no shared place; with a host it records it for the tests and links the pack into the
  host's ``custom_nodes`` only when asked (``ENFOQUE_LINK=1``, ``make link``).
- the test suite run against that stand-in venv (the project's python, so no second venv is built)
  finds no host, passes every pure test, skips each host test with one reason and says in the
  summary how many it skipped and how to provide a host.
- with a host: a ModelPatcher cached in a test module's global does not print "Exception ignored in
  ModelPatcher.__del__" at interpreter exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import host
import pytest

TESTS = Path(__file__).resolve().parent
SETUP = host.REPO_ROOT / "tools" / "setup.sh"
# pure tests that skip for a reason of the machine, not of the host: no GPU (tests/test_cuda.py), git that
# cannot list files here (the stand-in below; comfy-cli packs what git lists), the shapes model not yet trained
MACHINE_REASONS = ("no CUDA device: ", "git cannot list the repository's files", "(the shapes model, tools/shapes.py)",
                   "models/ lacks the shapes model files")
PINS_WANTED = ("torch", "torchvision", "numpy", "safetensors", "pillow", "pytest", "hypothesis", "ruff", "requests")


def _run(cmd, env, cwd=host.REPO_ROOT, timeout=120):
    return subprocess.run(
        cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _stand_ins(tmp: Path) -> tuple[dict, Path, Path, Path]:
    """An empty cache, a stand-in venv (the project's python; a ``pip`` that only records its
    arguments) and a ``git`` that records and fails (no network); returns (env, venv, pip log, git log)."""
    cache, venv, bin_dir = tmp / "cache", tmp / "venv", tmp / "bin"
    for d in (cache, venv / "bin", bin_dir):
        d.mkdir(parents=True)
    pip_log, git_log = tmp / "pip.log", tmp / "git.log"
    (venv / "bin" / "python").symlink_to(sys.executable)  # setup only checks that it is there
    for path, log, rc in ((venv / "bin" / "pip", pip_log, 0), (bin_dir / "git", git_log, 1)):
        path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >>"{log}"\nexit {rc}\n')
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMFYUI_PATH", "COMFYUI_OLDEST_PATH", "ENFOQUE_NO_CLONE", "ENFOQUE_LINK")}
    env.update(XDG_CACHE_HOME=str(cache), ENFOQUE_VENV=str(venv), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    return env, venv, pip_log, git_log


@pytest.fixture(scope="module")
def no_host(tmp_path_factory):
    """Runs tools/setup.sh twice without a host against a stand-in venv; returns what it saw."""
    tmp = tmp_path_factory.mktemp("no_host")
    env, venv, pip_log, git_log = _stand_ins(tmp)
    # a host recorded by an earlier setup (the real one where there is one): setup must forget it
    stale = host.find_comfyui() or tmp / "stale-host"
    (venv / ".comfyui-path").write_text(f"{stale}\n")
    (venv / ".comfyui-oldest-path").write_text(f"{stale}\n")

    first = _run(["bash", str(SETUP)], env)  # no network: the clone fails
    pip_first, git_first = _lines(pip_log), _lines(git_log)
    env["ENFOQUE_NO_CLONE"] = "1"
    second = _run(["bash", str(SETUP)], env)
    return dict(tmp=tmp, cache=tmp / "cache", venv=venv, env=env, first=first, second=second,
                pip_first=pip_first, git_first=git_first, pip_second=_lines(pip_log)[len(pip_first):],
                git_second=_lines(git_log)[len(git_first):])


def _pins(pip_calls: list[str]) -> dict[str, str]:
    """name -> version of the ``name==version`` arguments of the pip installs."""
    out = {}
    for call in pip_calls:
        for arg in call.split():
            if "==" in arg:
                name, version = arg.split("==", 1)
                out[name.lower()] = version
    return out


def test_setup_without_a_host(no_host):
    first, second = no_host["first"], no_host["second"]
    assert first.returncode == 0, f"setup failed without a host:\n{first.stdout}\n{first.stderr}"
    assert "no ComfyUI host found" in first.stderr and "COMFYUI_PATH=" in first.stderr, first.stderr
    assert "(a clone failed)" in first.stderr, first.stderr
    assert any(c.startswith("clone ") for c in no_host["git_first"]), no_host["git_first"]

    installs = [c for c in no_host["pip_first"] if c.startswith("install") and "--upgrade pip" not in c]
    assert installs, f"setup installed nothing without a host: {no_host['pip_first']}"
    for call in installs:  # every requirement pinned, and none of ComfyUI's own
        assert all("==" in a for a in call.split()[1:] if not a.startswith("-")), call
        assert "comfyui-frontend-package" not in call and "transformers" not in call, call
    pins = _pins(installs)
    assert set(PINS_WANTED) <= set(pins), f"not installed without a host: {set(PINS_WANTED) - set(pins)}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1", pins
    if Path(sys.prefix).resolve() == host.venv_dir().resolve():  # the venv setup built: the same versions
        assert {n: metadata.version(n) for n in pins} == pins

    venv = no_host["venv"]
    assert not (venv / ".comfyui-path").exists(), "setup kept a host recorded before"
    assert not (venv / ".comfyui-oldest-path").exists(), "setup kept an oldest host recorded before"
    assert (venv / ".enfoque-stamp").read_text().split()[0].startswith("base:")
    assert [p.name for p in no_host["cache"].rglob("*")] in ([], ["enfoque"]), list(no_host["cache"].rglob("*"))

    # cloning switched off: no git, nothing installed again, same message
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert "cloning is disabled: ENFOQUE_NO_CLONE=1" in second.stderr, second.stderr
    assert no_host["git_second"] == [], f"git ran with ENFOQUE_NO_CLONE=1: {no_host['git_second']}"
    assert "virtual environment up to date" in second.stdout and no_host["pip_second"] == [], second.stdout


def test_setup_with_a_host_leaves_its_custom_nodes_alone(tmp_path):
    """With a host, setup installs its requirements and records it for the tests, but links the pack
    into the host's custom_nodes only when asked (ENFOQUE_LINK=1, ``make link``)."""
    env, venv, pip_log, git_log = _stand_ins(tmp_path)
    checkout = tmp_path / "ComfyUI"
    (checkout / "comfy").mkdir(parents=True)
    (checkout / "custom_nodes").mkdir()
    (checkout / "comfy" / "model_management.py").write_text("")
    (checkout / "requirements.txt").write_text("torch\ntorchvision\ntorchaudio\nnumpy>=1.25.0\neinops\n")
    env.update(COMFYUI_PATH=str(checkout), ENFOQUE_NO_CLONE="1")

    plain = _run(["bash", str(SETUP)], env)
    assert plain.returncode == 0, f"{plain.stdout}\n{plain.stderr}"
    assert f"ComfyUI host: {checkout}" in plain.stdout, plain.stdout
    assert any("einops" in c and "numpy>=1.25.0" in c and "torchaudio" not in c for c in _lines(pip_log))
    assert (venv / ".comfyui-path").read_text().strip() == str(checkout)
    assert list((checkout / "custom_nodes").iterdir()) == [], "setup changed the host's custom_nodes"
    assert _lines(git_log) == []

    env["ENFOQUE_LINK"] = "1"
    linked = _run(["bash", str(SETUP)], env)
    assert linked.returncode == 0, f"{linked.stdout}\n{linked.stderr}"
    assert "virtual environment up to date" in linked.stdout, linked.stdout
    link = checkout / "custom_nodes" / "enfoque"
    assert link.is_symlink() and link.resolve() == host.REPO_ROOT.resolve(), linked.stdout


def test_pins_are_what_comfyui_requires():
    """The pack's pins satisfy the pinned ComfyUI's requirements.txt (where a host is here to read)."""
    from packaging.requirements import Requirement

    comfy_path = host.find_comfyui()
    if comfy_path is None:
        pytest.skip(host.NO_HOST_REASON)
    text = SETUP.read_text()
    pins = _pins(line.split("=", 1)[1].strip('"') for line in text.splitlines() if line.startswith("PACK_PINS="))
    assert set(pins) == {"numpy", "safetensors", "pillow"}, pins
    reqs = {}
    for line in (comfy_path / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            reqs[r.name.lower()] = r
    for name, version in pins.items():
        assert name in reqs and reqs[name].specifier.contains(version), (name, version, reqs.get(name))


def test_suite_without_a_host(no_host):
    """The pure run on a machine without ComfyUI: every pure test passes (or skips for a reason of the
    machine, `MACHINE_REASONS`), each host test is skipped with one reason, exit 0, and the summary
    counts them and says how to provide a host."""
    env = dict(no_host["env"])
    env["ENFOQUE_OLDEST_HOST_RUN"] = "1"  # belt and braces: never start the oldest-host subprocess
    found = _run([sys.executable, "-c", "import host; print(host.find_comfyui())"], env, cwd=TESTS)
    assert found.stdout.strip() == "None", f"the host is still found without one: {found.stdout}{found.stderr}"

    junit = no_host["tmp"] / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(no_host["tmp"] / "run"),
           "--junitxml", str(junit), "--ignore", str(Path(__file__).resolve()), str(TESTS)]
    proc = _run(cmd, env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode} without a host:\n{out[-6000:]}"

    passed, skipped, bad = [], [], []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            bad.append(name)
        elif (s := case.find("skipped")) is not None:
            skipped.append((name, s.get("message")))
        else:
            passed.append(name)
    assert not bad, bad
    hosted = [n for n, m in skipped if m == host.NO_HOST_REASON]
    other = [(n, m) for n, m in skipped if m != host.NO_HOST_REASON and not any(r in (m or "") for r in MACHINE_REASONS)]
    assert not other, f"skipped for another reason than the missing host or the machine: {other}"
    assert any(n.startswith("tests.test_export") for n in passed), "test_export (safetensors) did not run"
    names = {n for n, _ in skipped}
    assert any(n.startswith("tests.test_host_basics") for n in names) and any(
        n.startswith("tests.test_oldest_host") for n in names), sorted(names)[:5]

    assert "ComfyUI host: none" in out
    assert f"{len(hosted)} host tests skipped: no ComfyUI host found." in out, out[-3000:]
    assert "COMFYUI_PATH=/path/to/ComfyUI make test" in out and str(no_host["cache"]) in out, out[-3000:]
    assert f"{len(passed)} passed, {len(skipped)} skipped" in out, out[-500:]
    assert "Exception ignored" not in out, out[-3000:]


QUIET_EXIT_TEST = '''
import torch

_CACHE = {}


def test_cache_a_model_patcher(comfy):
    from comfy.model_patcher import ModelPatcher

    cpu = torch.device("cpu")
    _CACHE["model"] = (ModelPatcher(torch.nn.Linear(2, 2), cpu, cpu), "kept until the end of the session")
'''


@pytest.mark.host
def test_quiet_exit_with_a_cached_model(tmp_path):
    """A test module that keeps a ModelPatcher in a module-level cache (as test_hardening does) exits
    without ComfyUI's "Exception ignored in ModelPatcher.__del__" tracebacks."""
    (tmp_path / "test_cached_model.py").write_text(QUIET_EXIT_TEST)
    env = dict(os.environ, COMFYUI_PATH=str(host.find_comfyui()),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "--rootdir",
           str(tmp_path), "--basetemp", str(tmp_path / "run"), str(tmp_path / "test_cached_model.py")]
    proc = _run(cmd, env, cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "1 passed" in out, out[-4000:]
    assert "Exception ignored" not in out and "ModelPatcher(s) are still referenced" not in out, out[-4000:]
