"""Maps of a picture the user already has (Enfoque Image Maps): its VAE latent noised to a fraction of
the model's sigma range, run once per repeat through the patched model (a one-step sampler at that
sigma, cfg 1, its own seed), and the maps of the repeats averaged: the prompt's word maps and, with
concepts, concept maps."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ...attention.maps import AttentionMaps
from ..names import CONCEPTS, PATCH_MODEL
from .install import find_probe
from .readout import read_maps


def mean_maps(parts: list[AttentionMaps]) -> AttentionMaps:
    """The mean of several runs' maps of the same words."""
    return parts[0].derive(maps=torch.stack([p.maps for p in parts]).mean(0), repeats=len(parts))


def explain(model, positive, latent, noise: float, repeats: int, seed: int,
            node: str) -> tuple[AttentionMaps, AttentionMaps]:
    """(word maps, concept maps) of the picture in ``latent``, averaged over ``repeats`` noisings."""
    probe = find_probe(model, node)
    if not probe.config.capture:
        raise ValueError(f"{node}: capture is off on {PATCH_MODEL}, so nothing is recorded; turn capture on.")
    if not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"{node}: noise {noise} is outside 0..1; set the fraction of the sigma range, e.g. 0.5.")
    if int(repeats) < 1:
        raise ValueError(f"{node}: repeats {repeats} is below 1; run the model at least once.")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"{node}: latent has no samples; connect the LATENT output of VAE Encode.")
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    ms = model.get_model_object("model_sampling")
    lo, hi = float(ms.sigma_min), float(ms.sigma_max)
    sigma = lo + float(noise) * (hi - lo)
    sigmas = torch.tensor([sigma, 0.0])
    sampler = comfy.samplers.sampler_object("euler")
    cross, concept = [], []
    bar = comfy.utils.ProgressBar(int(repeats))
    for r in range(int(repeats)):
        comfy.model_management.throw_exception_if_processing_interrupted()
        noise_t = comfy.sample.prepare_noise(samples, int(seed) + r)
        comfy.sample.sample_custom(model, noise_t, 1.0, sampler, sigmas, positive, positive, samples,
                                   disable_pbar=True, seed=int(seed) + r)
        cross.append(read_maps(probe, {"samples": samples}, kind="cross", node=node))
        if probe.concepts is not None:
            concept.append(read_maps(probe, {"samples": samples}, kind="concept", node=node))
        bar.update(1)
    meta = {"noise": float(noise), "sigma": sigma, "seed": int(seed)}
    maps = mean_maps(cross).derive(**meta)
    if concept:
        concept_maps = mean_maps(concept).derive(**meta)
    else:
        concept_maps = AttentionMaps(maps=maps.maps[:, :0], words=[], meta={
            **meta, "kind": "concept", "note": f"no concepts: connect {CONCEPTS} to {PATCH_MODEL}"})
    return maps, concept_maps
