"""The ComfyUI host for tests: find a checkout, import it in-process, load the
pack with ComfyUI's own loader, and run a live headless server.

Fixtures built on this live in ``conftest.py`` (``comfy``, ``comfy_server``);
import helpers from tests as ``from host import ...``.

Module names: ComfyUI has a top-level module ``nodes``; the pack is loaded by
``nodes.load_custom_node(<dir>)``, which registers it in ``sys.modules`` under
the directory path itself (dots replaced by ``_x_``), e.g.
``/tmp/.../custom_nodes/enfoque``, so its submodules are
``/tmp/.../custom_nodes/enfoque.nodes.extension`` etc. The pack's ``nodes/``
is never importable as top-level ``nodes``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
COMFY_COMMIT = "3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce"
PACK_DIR_NAME = "enfoque"  # the pack's folder name under custom_nodes
NO_HOST_REASON = (
    "no ComfyUI host found: set COMFYUI_PATH to a ComfyUI checkout or run `make setup` (tools/setup.sh)"
)


def how_to_provide_a_host() -> list[str]:
    """Lines saying how to give the tests a host, for the summary of a run without one."""
    cache = _cache_dir() / f"comfyui-{COMFY_COMMIT}"
    return [
        f"To run them, provide a ComfyUI checkout (ideally at {COMFY_COMMIT[:12]}, ComfyUI 0.8.0), one of:",
        "  - COMFYUI_PATH=/path/to/ComfyUI make test",
        f"  - a checkout at {cache}",
        "  - network access for `make test` (tools/setup.sh then clones it there)",
    ]


# --------------------------------------------------------------------------- locating ComfyUI


def _is_checkout(p: Path | None) -> bool:
    return p is not None and (p / "comfy" / "model_management.py").is_file() and (p / "nodes.py").is_file()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "enfoque"


def venv_dir() -> Path:
    """The venv tools/setup.sh builds and records the host in: ``ENFOQUE_VENV``, else ``.venv``."""
    return Path(os.environ.get("ENFOQUE_VENV") or REPO_ROOT / ".venv").expanduser()


def find_comfyui() -> Path | None:
    """COMFYUI_PATH, else the path setup wrote to ``<venv>/.comfyui-path`` (see ``venv_dir``), else the
    per-user cache ``${XDG_CACHE_HOME:-~/.cache}/enfoque/comfyui-<commit>``."""
    candidates: list[Path] = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    written = venv_dir() / ".comfyui-path"
    if written.is_file():
        text = written.read_text().strip()
        if text:
            candidates.append(Path(text).expanduser())
    candidates.append(_cache_dir() / f"comfyui-{COMFY_COMMIT}")
    for c in candidates:
        if _is_checkout(c):
            return c.resolve()
    return None


def venv_python() -> str:
    """The project's virtualenv python (for the server), else this interpreter."""
    py = REPO_ROOT / ".venv" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


# --------------------------------------------------------------------------- in-process


TEST_FLAGS = ("--cpu",)  # ComfyUI's command line in the tests
_bootstrapped: list[tuple[str, ...]] = []  # the flags ComfyUI was started with in this process


def bootstrap(comfy_path: Path, flags: tuple[str, ...] = TEST_FLAGS) -> None:
    """Make ``import comfy`` use ``comfy_path`` with the command line ``flags`` (the tests: ``--cpu``; a
    benchmark may choose its device and attention backend). Idempotent for the same flags; must run
    before anything imports comfy."""
    comfy_path, flags = Path(comfy_path), tuple(flags)
    if _bootstrapped:
        if _bootstrapped[0] != flags:
            raise RuntimeError(f"ComfyUI was started with {_bootstrapped[0]} in this process, not {flags}")
        return
    if "comfy.cli_args" in sys.modules:
        raise RuntimeError(
            "comfy was imported before the `comfy` fixture set up its command line; "
            "use the fixture (or host.bootstrap) before importing comfy"
        )
    p = str(comfy_path)
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)
    # A stray top-level `nodes` (e.g. the pack's own nodes/ via the cwd on sys.path) must not shadow ComfyUI's.
    stray = sys.modules.get("nodes")
    if (
        stray is not None
        and Path(getattr(stray, "__file__", "") or "").resolve() != comfy_path.resolve() / "nodes.py"
    ):
        raise RuntimeError(f"a foreign top-level module `nodes` is already imported: {stray!r}")
    sys.argv = [sys.argv[0], *flags]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401  (parses the command line now)

    _bootstrapped.append(flags)


def in_process(work_dir: Path, flags: tuple[str, ...] = TEST_FLAGS, who: str = "enfoque") -> Host:
    """ComfyUI in this process with the pack loaded (`load_host`), for the benchmarks and tools; exits
    with how to provide a host when there is none."""
    comfy_path = find_comfyui()
    if comfy_path is None:
        raise SystemExit(f"{who}: {NO_HOST_REASON}")
    return load_host(comfy_path, work_dir, flags)


def pack_module_name(pack_dir: Path | str) -> str:
    """The ``sys.modules`` key ComfyUI's ``load_custom_node`` gives a pack folder."""
    return str(pack_dir).replace(".", "_x_")


def pack_node_ids(nodes_module: ModuleType, module_name: str) -> set[str]:
    """Node ids in ``nodes.NODE_CLASS_MAPPINGS`` whose class comes from the pack."""
    out = set()
    for node_id, cls in nodes_module.NODE_CLASS_MAPPINGS.items():
        mod = getattr(cls, "__module__", "") or ""
        if mod == module_name or mod.startswith(module_name + "."):
            out.add(node_id)
    return out


@dataclass
class Host:
    """What the ``comfy`` fixture returns."""

    path: Path  # the ComfyUI checkout
    nodes: ModuleType  # ComfyUI's top-level `nodes` module
    pack_dir: Path  # the folder ComfyUI loaded the pack from (a link named `enfoque`)
    pack_module_name: str  # its key in sys.modules
    loaded: bool  # what nodes.load_custom_node returned
    load_seconds: float
    output_dir: Path  # folder_paths output/input/temp, redirected to a session temp dir
    input_dir: Path
    temp_dir: Path

    @property
    def pack(self) -> ModuleType | None:
        """The pack's top-level module as ComfyUI loaded it."""
        return sys.modules.get(self.pack_module_name)

    def submodule(self, dotted: str) -> ModuleType:
        """A pack submodule as loaded by ComfyUI, e.g. ``host.submodule("nodes.extension")``."""
        import importlib

        return importlib.import_module(f"{self.pack_module_name}.{dotted}")

    @property
    def node_ids(self) -> set[str]:
        """The pack's node ids registered in nodes.NODE_CLASS_MAPPINGS."""
        return pack_node_ids(self.nodes, self.pack_module_name)

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def run(self, node_id: str, hidden: dict | None = None, **inputs) -> Any:
        """Run a registered node (stock or pack, V1 or V3) the way ComfyUI's
        executor calls it; the result indexes like a tuple (V3: a NodeOutput).

        V3 nodes run on a class clone carrying ``hidden`` (keys as
        ``io.Hidden`` values: "PROMPT", "UNIQUE_ID", "EXTRA_PNGINFO", ...);
        V1 hidden inputs are ordinary keyword arguments. Async nodes are awaited."""
        cls = self.node(node_id)
        if hasattr(cls, "PREPARE_CLASS_CLONE"):  # V3, as execution._async_map_node_over_list
            from comfy_api.internal import make_locked_method_func

            cls.VALIDATE_CLASS()
            clone = cls.PREPARE_CLASS_CLONE({"hidden_inputs": dict(hidden or {})})
            out = make_locked_method_func(cls, cls.FUNCTION, clone)(**inputs)
        else:
            out = getattr(cls(), cls.FUNCTION)(**inputs)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
        return out


def load_host(comfy_path: Path, work_dir: Path, flags: tuple[str, ...] = TEST_FLAGS) -> Host:
    """Bootstrap ComfyUI, redirect its output/input/temp folders into
    ``work_dir``, register ComfyUI's built-in extra nodes and load the pack
    with ``nodes.load_custom_node`` from
    ``work_dir/custom_nodes/enfoque`` (a symlink to the repo root, so module
    names match a user install); ComfyUI's command line is ``flags``."""
    bootstrap(comfy_path, flags)
    import folder_paths

    import nodes

    if Path(nodes.__file__).resolve() != Path(comfy_path).resolve() / "nodes.py":
        raise RuntimeError(f"`import nodes` gave {nodes.__file__}, not ComfyUI's nodes.py")

    work_dir = Path(work_dir)
    dirs = {k: work_dir / k for k in ("output", "input", "temp")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(dirs["output"]))
    folder_paths.set_input_directory(str(dirs["input"]))
    folder_paths.set_temp_directory(str(dirs["temp"]))

    link = work_dir / "custom_nodes" / PACK_DIR_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    # as main.py does: ComfyUI's comfy_extras nodes first (so stock nodes such as
    # EmptySD3LatentImage are registered by id), then the pack, which may not
    # replace a built-in node id
    asyncio.run(nodes.init_builtin_extra_nodes())
    t0 = time.perf_counter()
    loaded = asyncio.run(nodes.load_custom_node(str(link), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
    seconds = time.perf_counter() - t0
    return Host(
        path=Path(comfy_path),
        nodes=nodes,
        pack_dir=link,
        pack_module_name=pack_module_name(link),
        loaded=bool(loaded),
        load_seconds=seconds,
        output_dir=dirs["output"],
        input_dir=dirs["input"],
        temp_dir=dirs["temp"],
    )


# --------------------------------------------------------------------------- live server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExecutionError(RuntimeError):
    """A prompt failed on the server; the message carries ComfyUI's error text."""


@dataclass
class ComfyServer:
    """``python main.py --cpu --listen 127.0.0.1`` with ``--base-directory``
    set to ``base_dir`` (``custom_nodes/enfoque`` links to the repo root)."""

    comfy_path: Path
    base_dir: Path
    port: int = 0
    python: str = field(default_factory=venv_python)
    extra_args: tuple = ()
    proc: subprocess.Popen | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def pack_dir(self) -> Path:
        return self.base_dir / "custom_nodes" / PACK_DIR_NAME

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def prepare(self) -> None:
        for d in (
            "custom_nodes",
            "input",
            "output",
            "temp",
            "user",
            "models/diffusion_models",
            "models/text_encoders",
            "models/checkpoints",
            "models/vae",
        ):
            (self.base_dir / d).mkdir(parents=True, exist_ok=True)
        if not self.pack_dir.exists():
            self.pack_dir.symlink_to(REPO_ROOT, target_is_directory=True)

    def start(self) -> None:
        """Launch without waiting (see ``wait_ready``)."""
        self.prepare()
        if not self.port:
            self.port = free_port()
        cmd = [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--database-url",
            "sqlite:///:memory:",  # the default is a file inside the checkout
            "--disable-auto-launch",
            "--disable-api-nodes",
            *self.extra_args,
        ]
        self._log_file = log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(self.comfy_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ),
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI server exited (rc={self.proc and self.proc.returncode});"
                    f" log:\n{self.log()[-6000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"ComfyUI server not ready after {timeout:.0f}s; log:\n{self.log()[-6000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ---- HTTP helpers

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"{method} {path} -> HTTP {e.code}: {e.read().decode(errors='replace')}"
            ) from e
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 30.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def object_info(self) -> dict:
        return self.get("/object_info")

    def post_prompt(self, prompt: dict) -> str:
        """POST an API-format graph to /prompt; returns its prompt_id (raises
        with ComfyUI's validation errors on HTTP 400)."""
        out = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        return out["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return (self.get(f"/history/{prompt_id}") or {}).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 60.0) -> dict:
        """Poll /history until the prompt finishes; returns its history entry,
        raises ExecutionError with ComfyUI's message if execution failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry is not None and (status.get("completed") or status.get("status_str") == "error"):
                if status.get("status_str") == "error":
                    raise ExecutionError(_error_text(status))
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI server died; log:\n{self.log()[-6000:]}")
            time.sleep(0.1)
        raise TimeoutError(
            f"prompt {prompt_id} did not finish in {timeout:.0f}s; log tail:\n{self.log()[-3000:]}"
        )

    def run(self, prompt: dict, timeout: float = 60.0) -> dict:
        return self.wait(self.post_prompt(prompt), timeout)

    def pack_import_problems(self) -> list[str]:
        """Server log lines that report the pack failing to import/register."""
        markers = (
            "IMPORT FAILED",
            "Cannot import",
            "Error while calling comfy_entrypoint",
            "did not return",
            "Skip ",
            "is not callable",
        )
        pack = str(self.pack_dir)
        return [ln for ln in self.log().splitlines() if pack in ln and any(m in ln for m in markers)]


def _error_text(status: dict) -> str:
    parts = []
    for event, data in status.get("messages", []):
        if event == "execution_error":
            parts.append(
                f"{data.get('node_type')} (node {data.get('node_id')}): "
                f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                + "".join(data.get("traceback", []))
            )
    return "\n".join(parts) or json.dumps(status)[:4000]
