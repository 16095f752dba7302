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
