"""pytest configuration: the ComfyUI host fixtures.

- ``comfy`` (session): ComfyUI imported in-process with ``--cpu`` and the pack
  loaded by ComfyUI's own loader; returns ``host.Host``.
- ``comfy_server`` (session): a live headless ComfyUI on a free loopback port
  with the pack linked into its ``custom_nodes`` and tiny models in its
  ``models/`` (``tiny_sd3.safetensors``, ``tiny_clip_l.safetensors``); returns
  ``host.ComfyServer``.
- ``tiny_dir`` (session): a folder for tiny model files.

Tests that use these fixtures (or carry the ``host``/``server`` marker) are
marked ``host`` and skipped with one reason when no ComfyUI checkout is found;
the test summary then says how many were skipped and how to provide a host.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
for _dir in (TESTS_DIR.parent / "tools", TESTS_DIR):  # test helpers, and the tools the tests check (templates, shapes)
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

# On 2-core machines a second OpenMP thread makes torch several times slower
# for the small ops of these tests; set OMP_NUM_THREADS to choose otherwise.
if "OMP_NUM_THREADS" not in os.environ and (os.cpu_count() or 1) <= 2 and "torch" not in sys.modules:
    os.environ["OMP_NUM_THREADS"] = "1"

import host  # noqa: E402

HOST_FIXTURES = {"comfy", "comfy_server"}
COMFY_PATH = host.find_comfyui()


def pytest_report_header(config):
    return f"ComfyUI host: {COMFY_PATH or 'none (' + host.NO_HOST_REASON + ')'}"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=host.NO_HOST_REASON)
    for item in items:
        needs_host = bool(HOST_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(
            item.get_closest_marker(m) for m in ("host", "server")
        )
        if not needs_host:
            continue
        if item.get_closest_marker("host") is None:
            item.add_marker(pytest.mark.host)
        if COMFY_PATH is None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def comfy(request, tmp_path_factory) -> host.Host:
    """ComfyUI in-process (``--cpu``), the pack loaded by ``nodes.load_custom_node``."""
    if COMFY_PATH is None:
        pytest.skip(host.NO_HOST_REASON)
    yield host.load_host(COMFY_PATH, tmp_path_factory.mktemp("comfy"))
    _free_comfy_objects(request.session)


# ModelPatchers still alive at interpreter exit run their __del__ after ComfyUI's modules were torn
# down and print "Exception ignored in ModelPatcher.__del__ ... 'NoneType' object has no attribute
# 'ON_DETACH'". Module-level caches in test modules (e.g. test_hardening's _MODELS) hold them until
# then, so the session's end empties them while ComfyUI is alive; any left are named in the summary.
_LEFT_AT_EXIT: list[str] = []


def _comfy_objects(value, depth: int = 2) -> bool:
    """Whether ``value`` is or (in containers, ``depth`` levels down) holds a ModelPatcher or a CLIP."""
    import comfy.model_patcher
    import comfy.sd

    if isinstance(value, (comfy.model_patcher.ModelPatcher, comfy.sd.CLIP)):
        return True
    if depth == 0:
        return False
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_comfy_objects(v, depth - 1) for v in value)
    return False


def _free_comfy_objects(session) -> None:
    import gc

    import comfy.model_management
    import comfy.model_patcher
    import tiny_models

    tiny_models.clear_cache()
    modules = {id(m): m for m in (getattr(item, "module", None) for item in session.items) if m is not None}
    for mod in list(sys.modules.values()):  # helpers beside the tests (tiny_models, host)
        file = getattr(mod, "__file__", None) or ""
        if file and Path(file).resolve().parent == TESTS_DIR:
            modules[id(mod)] = mod
    for mod in modules.values():
        for value in vars(mod).values():
            if isinstance(value, (dict, list, set)) and _comfy_objects(value):
                value.clear()
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):  # a failed test's frames
        if hasattr(sys, name):
            delattr(sys, name)
    comfy.model_management.unload_all_models()
    gc.collect()
    mp = comfy.model_patcher.ModelPatcher  # type(), not isinstance: some torch objects warn on __class__
    left = [o for o in gc.get_objects() if issubclass(type(o), mp)]
    if left:
        _LEFT_AT_EXIT.append(
            f"{len(left)} ModelPatcher(s) are still referenced at the end of the session; at exit ComfyUI "
            "prints 'Exception ignored in ModelPatcher.__del__' for each (harmless: its modules are gone)"
        )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def comfy_server(comfy, tmp_path_factory):
    """A live ComfyUI server (loopback only) with the pack and tiny models."""
    import tiny_models

    server = host.ComfyServer(COMFY_PATH, tmp_path_factory.mktemp("server"))
    server.start()
    try:
        # written while the server boots; ComfyUI rescans model folders on request
        tiny_models.write_models(server.models_dir)
        # the picture the "Shapes - explain an image" template loads (tools/shapes.py install --input)
        import shapes

        shapes.write_example(server.input_dir)
        server.wait_ready()
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Without a host: how many host tests were skipped and how to provide one (never silently)."""
    for line in _LEFT_AT_EXIT:
        terminalreporter.write_line(f"note: {line}")
    if COMFY_PATH is not None:
        return
    skipped = [
        r for r in terminalreporter.stats.get("skipped", [])
        if isinstance(r.longrepr, tuple) and r.longrepr[2].endswith(host.NO_HOST_REASON)
    ]
    terminalreporter.section("ComfyUI host", sep="-")
    terminalreporter.write_line(f"{len(skipped)} host tests skipped: no ComfyUI host found.")
    for line in host.how_to_provide_a_host():
        terminalreporter.write_line(line)


def pytest_unconfigure(config):
    """Collect leftover ModelPatchers while ComfyUI's modules are still alive (their
    __del__ needs them; at interpreter exit it prints 'Exception ignored ...')."""
    import gc

    gc.collect()
