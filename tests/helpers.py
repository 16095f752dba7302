"""Helpers the host tests share: patching a model as the node does, a module's model cache that is
released after the module, and the KSampler node of API-format test graphs."""

from __future__ import annotations

import pytest

PATCH_DEFAULTS = dict(capture=True, reweight="bias", blocks="all", start_percent=0.0, end_percent=1.0)


def patch(comfy, model, **kw):
    """(patched MODEL, probe) from Enfoque Patch Model with the node's defaults, ``kw`` changed."""
    return comfy.run("EnfoquePatchModel", model=model, **{**PATCH_DEFAULTS, **kw})


def released(cache: dict):
    """A module-scoped autouse fixture that empties ``cache`` (the module's models) after the module, so
    models built for one module do not stay in memory for the rest of the suite."""

    @pytest.fixture(scope="module", autouse=True)
    def _release():
        yield
        cache.clear()

    return _release


def ksampler(model, positive, negative, latent, seed: int = 3, steps: int = 2, cfg: float = 2.0) -> dict:
    """A KSampler node of an API-format graph (euler, simple, full denoise); links as ``[node id, output]``."""
    return {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
        "positive": positive, "negative": negative, "latent_image": latent, "denoise": 1.0}}


def tiny_sd3_prompt(width: int = 128, height: int = 128, text: str = "a red cat") -> dict:
    """Nodes "1" to "5" of an API-format graph on the server's tiny SD3 (tests/tiny_models.py): its model, CLIP-L
    (type sd3), the prompt and an empty negative, and an empty latent."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_clip_l.safetensors", "type": "sd3"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
    }
