"""The fused route makes ComfyUI's own SDPA call (nodes/common/sdpa.py), on tiny real models.

- Kernel priority. On CUDA (ComfyUI 0.8.0: on Windows) ComfyUI's comfy/ops.py defines
  ``SDPA_BACKEND_PRIORITY`` and a ``scaled_dot_product_attention`` that runs SDPA inside
  ``sdpa_kernel(SDPA_BACKEND_PRIORITY, set_priority=True)``. Here, on the CPU, ComfyUI's own
  comfy/ops.py is loaded again with that condition made true (``torch.cuda.is_available``, ``WINDOWS``), and
  the priority list it built is then narrowed to MATH, a choice that shows on the CPU (SDPA runs its
  flash kernel otherwise). The fused route must give ComfyUI's output bit for bit, for the diffusion
  model and the text encoder, and enter the context only where ComfyUI does.
- Batch limit. ComfyUI's ``attention_pytorch`` splits a batch above ``SDP_BATCH_LIMIT``; the fused
  route is taken only within it.
- The context is in force at each of the engine's calls on the fused route and at none elsewhere
  (ComfyUI's CPU default backend, another override in front, a batch ComfyUI splits: there ComfyUI's own
  SDPA wrapper enters it, if that backend calls it at all).
- The engine's fallback notes come once per sampling run.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import pytest
import tiny_models
import torch

# the tiny models, prompts and sampling of test_model_probe; its model cache is released after this module too
from helpers import patch
from test_model_probe import _release_models, family, ksample  # noqa: F401
from test_model_probe import _stock_sdpa as stock_sdpa_backend
from torch.nn.attention import SDPBackend

pytestmark = pytest.mark.host

PROMPT = "a red cat on a blue chair"
LONG_PROMPT = ", ".join(["a small red cat on a blue wooden chair in a sunny garden"] * 10)  # two CLIP chunks
MATH_NOTE = "SDPA runs the math kernel on cpu here"
FAMILIES = ["sd3", "sd15"]


def sample(comfy, model, pos, neg, latent_node, cfg) -> torch.Tensor:
    return ksample(comfy, model, pos, neg, latent_node, cfg)["samples"]


def comfy_priority_branch(monkeypatch, priority: list) -> list:
    """ComfyUI's own comfy/ops.py loaded a second time, as a module of its own (``comfy.ops`` stays as it is),
    with the condition of its kernel-priority branch true; the ``SDPA_BACKEND_PRIORITY`` and the
    ``scaled_dot_product_attention`` it defines there are put on ``comfy.ops`` (undone after the test),
    with ``priority`` as the list. Returns the list ComfyUI built."""
    import importlib.util

    import comfy.model_management
    import comfy.ops

    spec = importlib.util.spec_from_file_location("comfy.enfoque_test_ops_on_cuda", comfy.ops.__file__)
    on_cuda = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as m:  # the condition, true only while ComfyUI's module runs
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(comfy.model_management, "WINDOWS", True, raising=False)  # (0.3.64's branch does not ask)
        spec.loader.exec_module(on_cuda)
    built = list(on_cuda.SDPA_BACKEND_PRIORITY)
    on_cuda.SDPA_BACKEND_PRIORITY = priority  # ComfyUI's wrapper reads its module global at each call
    monkeypatch.setattr(comfy.ops, "SDPA_BACKEND_PRIORITY", priority, raising=False)
    monkeypatch.setattr(comfy.ops, "scaled_dot_product_attention", on_cuda.scaled_dot_product_attention)
    return built


# torch's switches of the SDPA backends, which an ``sdpa_kernel`` context sets while it is in force
SDPA_SWITCHES = {
    SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
    SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
    SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled,
    SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled,
}


def backends_on() -> frozenset:
    """The SDPA backends switched on now (all of them where no ``sdpa_kernel`` context is in force)."""
    return frozenset(b for b, on in SDPA_SWITCHES.items() if on())


class Call(NamedTuple):
    fused: bool  # the fused route: the engine makes the SDPA call itself (no compute_out)
    batch: int
    backends: frozenset  # the SDPA backends on when the engine was called


def spy_routes(comfy, monkeypatch, module: str) -> list[Call]:
    """Each `attend` call of a hooks module (the engine itself runs): its route, batch, and the SDPA
    backends on as it starts (an ``sdpa_kernel`` context entered around it shows there)."""
    hooks = comfy.submodule(module)
    seen: list[Call] = []
    real = hooks.attend

    def spy(q, *args, **kwargs):
        seen.append(Call(kwargs.get("compute_out") is None, int(q.shape[0]), backends_on()))
        return real(q, *args, **kwargs)

    monkeypatch.setattr(hooks, "attend", spy)
    return seen


def context_only_on_the_fused_route(seen: list[Call], priority: list, everything: frozenset) -> bool:
    """ComfyUI's priority context (its backends alone) around each fused call, and around no other."""
    return all(c.backends == (frozenset(priority) if c.fused else everything) for c in seen)


def notes(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_route_runs_in_comfys_sdpa_context(comfy, tiny_dir, name, monkeypatch, caplog):
    stock_sdpa_backend(monkeypatch)
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    plain, plain_probe = patch(comfy, model)
    flash = sample(comfy, model, pos, neg, latent_node, cfg)
    sample(comfy, plain, pos, neg, latent_node, cfg)  # maps of the route without ComfyUI's context
    built = comfy_priority_branch(monkeypatch, [SDPBackend.MATH])
    assert built[0] == SDPBackend.CUDNN_ATTENTION, built  # what ComfyUI puts first on such a machine
    stock = sample(comfy, model, pos, neg, latent_node, cfg)
    assert not torch.equal(stock, flash), "the kernel does not show in the output here: the test cannot tell"
    patched, probe = patch(comfy, model)
    seen = spy_routes(comfy, monkeypatch, "nodes.model_patch.override")
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            out = sample(comfy, patched, pos, neg, latent_node, cfg)
            assert torch.equal(out, stock), "the fused route did not make ComfyUI's SDPA call"
    assert seen and all(c.fused for c in seen)
    assert all(c.backends == {SDPBackend.MATH} for c in seen), "the fused route ran outside ComfyUI's context"
    # the math kernel gives no log-sum-exp: said once in each run (the hooks reset the engine's notes)
    assert notes(caplog, MATH_NOTE) == 2, [r.getMessage() for r in caplog.records]
    torch.testing.assert_close(probe.result.maps[("positive", 0)], plain_probe.result.maps[("positive", 0)],
                               atol=1e-6, rtol=0)


def test_no_context_where_comfy_has_none(comfy, tiny_dir, monkeypatch, caplog):
    """Without ComfyUI's priority (this CPU host as it is) the fused route runs SDPA's own choice."""
    import comfy.ops as comfy_ops

    assert getattr(comfy_ops, "SDPA_BACKEND_PRIORITY", None) is None
    stock_sdpa_backend(monkeypatch)
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, "sd3")
    stock = sample(comfy, model, pos, neg, latent_node, cfg)
    patched, _ = patch(comfy, model)
    seen = spy_routes(comfy, monkeypatch, "nodes.model_patch.override")
    sdpa = comfy.submodule("attention.sdpa")
    sdpa.reset_routes()
    with caplog.at_level(logging.INFO):
        out = sample(comfy, patched, pos, neg, latent_node, cfg)
    assert torch.equal(out, stock)
    assert seen and all(c.fused for c in seen)
    engine = [r.getMessage() for r in caplog.records if r.name.endswith(("attention.sdpa", "attention.engine"))]
    assert engine == [], engine  # SDPA's own choice here is the CPU flash kernel: no fallback


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_route_only_within_comfys_batch_limit(comfy, tiny_dir, name, monkeypatch):
    attention = stock_sdpa_backend(monkeypatch)
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    plain, plain_probe = patch(comfy, model)
    sample(comfy, plain, pos, neg, latent_node, cfg)
    monkeypatch.setattr(attention, "SDP_BATCH_LIMIT", 1)  # ComfyUI now runs SDPA per batch row
    stock = sample(comfy, model, pos, neg, latent_node, cfg)
    patched, probe = patch(comfy, model)
    seen = spy_routes(comfy, monkeypatch, "nodes.model_patch.override")
    out = sample(comfy, patched, pos, neg, latent_node, cfg)
    assert torch.equal(out, stock)
    assert max(c.batch for c in seen) == 2, "cond and uncond were not batched: the limit is not crossed"
    assert seen and not any(c.fused for c in seen if c.batch > 1), "the fused route took a batch ComfyUI splits"
    torch.testing.assert_close(probe.result.maps[("positive", 0)], plain_probe.result.maps[("positive", 0)],
                               atol=1e-6, rtol=0)
    monkeypatch.setattr(attention, "SDP_BATCH_LIMIT", 2)
    seen.clear()
    assert torch.equal(sample(comfy, patched, pos, neg, latent_node, cfg), stock)
    assert seen and all(c.fused for c in seen)


def call_through(func, *args, **kwargs):
    """Another pack's ``optimized_attention_override`` (Sage attention and the like), here calling through."""
    return func(*args, **kwargs)


@pytest.mark.parametrize("where", ["cpu default", "override in front", "over the batch limit"])
@pytest.mark.parametrize("name", FAMILIES)
def test_comfys_context_only_on_the_fused_route(comfy, tiny_dir, name, where, monkeypatch):
    """Off the fused route the engine never enters ComfyUI's priority context (the backend ComfyUI runs,
    or the override in front, decides its own kernels); on it, always."""
    everything = backends_on()
    assert everything > {SDPBackend.MATH}
    model, pos, neg, latent_node, cfg = family(comfy, tiny_dir, name)
    if where != "cpu default":  # ComfyUI's SDPA backend, as on a GPU
        attention = stock_sdpa_backend(monkeypatch)
    if where == "override in front":
        model = model.clone()
        model.model_options["transformer_options"]["optimized_attention_override"] = call_through
    if where == "over the batch limit":
        monkeypatch.setattr(attention, "SDP_BATCH_LIMIT", 1)  # cond and uncond come as a batch of 2
    priority = [SDPBackend.MATH]
    comfy_priority_branch(monkeypatch, priority)
    stock = sample(comfy, model, pos, neg, latent_node, cfg)
    patched, _ = patch(comfy, model)
    seen = spy_routes(comfy, monkeypatch, "nodes.model_patch.override")
    assert torch.equal(sample(comfy, patched, pos, neg, latent_node, cfg), stock)
    assert seen and not any(c.fused for c in seen if c.batch > 1)
    if where == "over the batch limit":
        assert any(c.batch > 1 for c in seen), "cond and uncond were not batched: the limit is not crossed"
    else:
        assert not any(c.fused for c in seen)
    assert context_only_on_the_fused_route(seen, priority, everything), \
        f"ComfyUI's priority context was entered off the fused route: {sorted(set(seen))}"


def pytorch_text_attention(monkeypatch):
    """The text encoders on ComfyUI's SDPA backend, as on a GPU (``--use-pytorch-cross-attention``; this CPU
    host gives them ``attention_basic``)."""
    import comfy.model_management

    monkeypatch.setattr(comfy.model_management, "ENABLE_PYTORCH_ATTENTION", True)


def encode(comfy, clip, text: str):
    return comfy.run("CLIPTextEncode", clip=clip, text=text)[0][0][0]


def test_text_encoder_fused_route_in_comfys_sdpa_context(comfy, monkeypatch, caplog):
    pytorch_text_attention(monkeypatch)
    clip = tiny_models.clip_sd15()
    patched, _ = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=True)
    flash = encode(comfy, clip, PROMPT)
    comfy_priority_branch(monkeypatch, [SDPBackend.MATH])
    stock = encode(comfy, clip, PROMPT)
    assert not torch.equal(stock, flash), "the kernel does not show in the output here: the test cannot tell"
    seen = spy_routes(comfy, monkeypatch, "nodes.clip_patch.attention")
    comfy.submodule("attention.sdpa").reset_fallback_log()  # (a sampling run does this; here no run comes first)
    with caplog.at_level(logging.INFO):
        got = encode(comfy, patched, PROMPT)
    assert seen and all(c.fused for c in seen)
    assert all(c.backends == {SDPBackend.MATH} for c in seen), "the fused route ran outside ComfyUI's context"
    assert torch.equal(got, stock), "the text encoder's fused route did not make ComfyUI's SDPA call"
    assert notes(caplog, MATH_NOTE) >= 1


def test_text_encoder_fused_route_only_within_comfys_batch_limit(comfy, monkeypatch):
    import comfy.ldm.modules.attention as attention

    pytorch_text_attention(monkeypatch)
    clip = tiny_models.clip_sd15()
    patched, _ = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=True)
    monkeypatch.setattr(attention, "SDP_BATCH_LIMIT", 1)
    stock = encode(comfy, clip, LONG_PROMPT)
    seen = spy_routes(comfy, monkeypatch, "nodes.clip_patch.attention")
    got = encode(comfy, patched, LONG_PROMPT)
    assert torch.equal(got, stock)
    assert seen and all(c.batch == 2 for c in seen), "the long prompt was not one batch of two chunks"
    assert not any(c.fused for c in seen), "the fused route took a batch ComfyUI splits"
    monkeypatch.setattr(attention, "SDP_BATCH_LIMIT", 2)
    seen.clear()
    assert torch.equal(encode(comfy, patched, LONG_PROMPT), stock)
    assert seen and all(c.fused for c in seen)


@pytest.mark.parametrize("where", ["cpu default", "over the batch limit"])
def test_text_encoder_enters_comfys_context_only_on_the_fused_route(comfy, monkeypatch, where):
    import comfy.ldm.modules.attention as attention

    everything = backends_on()
    if where == "over the batch limit":
        pytorch_text_attention(monkeypatch)
        monkeypatch.setattr(attention, "SDP_BATCH_LIMIT", 1)  # the two chunks of the long prompt: split
    clip = tiny_models.clip_sd15()
    patched, _ = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=True)
    priority = [SDPBackend.MATH]
    comfy_priority_branch(monkeypatch, priority)
    stock = encode(comfy, clip, LONG_PROMPT)
    seen = spy_routes(comfy, monkeypatch, "nodes.clip_patch.attention")
    assert torch.equal(encode(comfy, patched, LONG_PROMPT), stock)
    assert seen and not any(c.fused for c in seen)
    assert context_only_on_the_fused_route(seen, priority, everything), \
        f"ComfyUI's priority context was entered off the fused route: {sorted(set(seen))}"
