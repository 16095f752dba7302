"""What Enfoque Patch CLIP installs on a clone of the CLIP: its tokenizer (`tokenizer.TextTokenizer`),
the ``encode_token_weights`` patch (`encode`) and an attention patch on every self-attention of every
encoder it knows (`attention`), through the clone's patcher (restored by ComfyUI on unpatch). The
original CLIP is never touched."""

from __future__ import annotations

import inspect

import torch

from ..names import PATCH_CLIP
from .attention import AttentionForward
from .encode import EncodeTokenWeights
from .encoders import ENCODERS
from .probe import ClipProbe
from .tokenizer import TextTokenizer

WEIGHT_MODES = ("comfy", "attention", "both")  # where (word:w) acts: embeddings, attention, or both
ATTENTION_CLASSES = ("CLIPAttention", "T5Attention")
LLM_ATTENTION = ("comfy.text_encoders.llama", "Attention")  # module and class of ComfyUI's LLM self-attention


def install(clip, weight_mode: str, capture: bool):
    """A clone of ``clip`` with instrumented encoders, and its probe. The original is untouched."""
    c = clip.clone()
    probe = ClipProbe(weight_mode, capture)
    c.tokenizer = TextTokenizer(c.tokenizer, probe)
    model = c.cond_stage_model
    # the patcher's view, not the live module: another clone's patches may still be applied to it
    original = c.patcher.get_model_object("encode_token_weights")
    present = {e.key for e in ENCODERS.values() if getattr(model, e.attr, None) is not None}
    c.patcher.add_object_patch("encode_token_weights", EncodeTokenWeights(probe, original, c.tokenizer.inner, present))
    found = 0
    for e in ENCODERS.values():
        encoder = getattr(model, e.attr, None)
        if encoder is None:
            continue
        for name, mod in encoder.named_modules():
            if is_self_attention(mod):
                path = f"{e.attr}.{name}.forward"
                if path not in c.patcher.object_patches:
                    c.patcher.add_object_patch(path, AttentionForward(probe, mod, e.key))
                    probe.layers[e.key] = probe.layers.get(e.key, 0) + 1
                    found += 1
    if found == 0:
        raise ValueError(
            f"{PATCH_CLIP}: this CLIP has no text encoder Enfoque knows; supported: "
            f"{', '.join(e.name for e in ENCODERS.values())} (the encoders of SD1.5, SDXL, SD3/SD3.5, Flux, "
            "Flux 2, Chroma, Qwen-Image, Z-Image, Lumina 2 and Wan). Connect the CLIP of one of them"
        )
    return c, probe


def is_self_attention(mod: torch.nn.Module) -> bool:
    """A text encoder self-attention module whose ``forward`` takes the attention function ComfyUI passes
    down: CLIP's, T5's (umT5), and ComfyUI's LLM attention (Qwen, Mistral, Gemma)."""
    cls = type(mod)
    if cls.__name__ in ATTENTION_CLASSES:
        return True
    return (cls.__module__, cls.__name__) == LLM_ATTENTION and \
        "optimized_attention" in inspect.signature(cls.forward).parameters
