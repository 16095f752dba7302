"""pytest configuration: the ComfyUI host fixtures.

- ``comfy`` (session): ComfyUI imported in-process with ``--cpu`` and the pack
  loaded by ComfyUI's own loader; returns ``host.Host``.
- ``comfy_server`` (session): a live headless ComfyUI on a free loopback port
  with the pack linked into its ``custom_nodes`` and tiny models in its
  ``models/`` (``tiny_sd3.safetensors``, ``tiny_clip_l.safetensors``); returns
  ``host.ComfyServer``.
- ``tiny_dir`` (session): a folder for tiny model files.

Tests that use these fixtures (or carry the ``host``/``server`` marker) are
marked ``host`` and skipped with one reason when no ComfyUI checkout is found.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

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
def comfy(tmp_path_factory) -> host.Host:
    """ComfyUI in-process (``--cpu``), the pack loaded by ``nodes.load_custom_node``."""
    if COMFY_PATH is None:
        pytest.skip(host.NO_HOST_REASON)
    yield host.load_host(COMFY_PATH, tmp_path_factory.mktemp("comfy"))
    # free models while ComfyUI's modules are still alive (else ModelPatcher.__del__ complains at exit)
    import gc

    import comfy.model_management
    import tiny_models

    tiny_models.clear_cache()
    comfy.model_management.unload_all_models()
    gc.collect()


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
        server.wait_ready()
        yield server
    finally:
        server.stop()


def pytest_unconfigure(config):
    """Collect leftover ModelPatchers while ComfyUI's modules are still alive (their
    __del__ needs them; at interpreter exit it prints 'Exception ignored ...')."""
    import gc

    gc.collect()
