"""What Enfoque Patch Model installs on a clone of the MODEL, through ComfyUI's official channels: an
``optimized_attention_override`` that calls through any override already set, the family's block hooks,
and the wrappers of a sampling run. The original MODEL is never touched."""

from __future__ import annotations

import logging

import comfy.patcher_extension as patcher_extension

from ..names import PATCH_MODEL
from . import families
from .blocks import DitBlockReplace, UnetAttn2Replace
from .concepts import Concepts, concept_stream
from .override import AttentionOverride
from .probe import ModelProbe
from .state import Geometry, ProbeConfig
from .wrappers import (
    ApplyModelWrapper,
    CalcCondBatchWrapper,
    IgnoredWeightsNotice,
    OuterSampleWrapper,
    PredictNoiseWrapper,
)

log = logging.getLogger(__name__)


def block_count(model) -> int:
    """The blocks of a MODEL Enfoque numbers (`families.detect`: a ValueError for a model it does not know)."""
    spec, network = families.detect(model)
    return families.block_count(spec, network)


def install(model, config: ProbeConfig, concepts: Concepts | None = None, node_id: str | None = None):
    """A clone of ``model`` with the probe's hooks, and the probe. The original is untouched.

    ``node_id``: the Enfoque Patch Model node, which gets a notice when ``reweight`` off ignores weights."""
    spec, network = families.detect(model)
    stream = concept_stream(spec, network, concepts) if concepts is not None else None
    latent_format = getattr(getattr(model, "model", None), "latent_format", None)
    geometry = Geometry(families.patch_size(spec, network), int(getattr(latent_format, "spacial_downscale_ratio", 8) or 8))
    probe = ModelProbe(spec.key, families.block_count(spec, network), geometry, config,
                       pad_multiple=getattr(network, "pad_tokens_multiple", None), concepts=concepts, stream=stream)
    patch = probe.patch
    m = model.clone()
    options = m.model_options.setdefault("transformer_options", {})
    options["optimized_attention_override"] = AttentionOverride(patch, options.get("optimized_attention_override"))
    key = probe.keys.call
    m.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, key, OuterSampleWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.APPLY_MODEL, key, ApplyModelWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.PREDICT_NOISE, key, PredictNoiseWrapper(probe))
    m.add_wrapper_with_key(patcher_extension.WrappersMP.CALC_COND_BATCH, key, CalcCondBatchWrapper(probe))
    # with reweight off, weights on the prompt do nothing: say so at each sampling run (and clear it otherwise)
    m.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, key + "_notice",
                           IgnoredWeightsNotice(node_id, active=config.reweight == "off"))
    if spec.hook == "dit":
        families.install_blocks(spec, m, network, lambda i, single, prev: DitBlockReplace(patch, i, single, prev))
    elif spec.hook == "attn2":
        attn2 = options.get("patches_replace", {}).get("attn2", {})
        for i, (name, number, t) in enumerate(families.unet_attn2_sites(network)):
            # ComfyUI prefers the (block, number, index) key over (block, number): chain to either
            prev = attn2.get((name, number, t)) or attn2.get((name, number))
            if prev is not None and not isinstance(prev, UnetAttn2Replace):
                log.info("Enfoque: %s attn2 %s already has a replace patch; running it inside ours "
                         "(its maps are captured only if it calls ComfyUI's attention)", name, number)
            m.set_model_attn2_replace(UnetAttn2Replace(patch, i, prev), name, number, t)
    return m, probe


def find_probe(model, node: str) -> ModelProbe:
    """The probe of the Enfoque Patch Model a MODEL came from (the outermost one)."""
    options = (getattr(model, "model_options", None) or {}).get("transformer_options", {})
    hook = options.get("optimized_attention_override")
    while hook is not None:
        if isinstance(hook, AttentionOverride) and hasattr(model, "get_wrappers"):
            # the probe is the one the same patch's OUTER_SAMPLE wrapper runs
            wrappers = model.get_wrappers(patcher_extension.WrappersMP.OUTER_SAMPLE, hook.patch.keys.call)
            probe = next((w.probe for w in wrappers if isinstance(w, OuterSampleWrapper)), None)
            if probe is not None:
                return probe
        hook = getattr(hook, "previous", None)
    raise ValueError(f"{node}: the model is not patched by {PATCH_MODEL}; connect the MODEL output of "
                     f"{PATCH_MODEL}.")
