"""Reading what a patched CLIP recorded for one encode (Enfoque Text Attention Maps): an encoder's
token x token attention, per layer or their mean, pooled to words or per token."""

from __future__ import annotations

import torch

from ...attention.formats import brief, listed
from ...attention.maps import AttentionMaps
from ..common.errors import check_option
from ..names import PATCH_CLIP, PATCH_MODEL
from .encoders import ENCODERS
from .probe import RECORD_KEY, ClipProbe

LEVELS = ("words", "tokens")


def _pool(matrix: torch.Tensor, spans: list[list[int]]) -> torch.Tensor:
    """Word x word mean of a token x token matrix."""
    rows = torch.stack([matrix[s].mean(0) for s in spans])
    return torch.stack([rows[:, s].mean(1) for s in spans], dim=1)


def read_text_maps(probe, conditioning, encoder: str, layer: int, level: str,
                   node: str) -> tuple[AttentionMaps, torch.Tensor]:
    """The maps of the encode that made ``conditioning`` (``[1, n, 1, n]`` in the maps' layout) and the
    ``[n, n]`` matrix with its labels; errors in ``node``'s name."""
    if not isinstance(probe, ClipProbe):
        got = f"a probe of {PATCH_MODEL}" if getattr(probe, "kind", None) == "model" else type(probe).__name__
        raise ValueError(f"{node}: probe is {got}, not the probe of {PATCH_CLIP}; connect the probe output "
                         f"of {PATCH_CLIP}.")
    check_option(node, "encoder", encoder, ("auto", *ENCODERS))
    check_option(node, "level", level, LEVELS)
    if not conditioning:
        raise ValueError(f"{node}: the conditioning is empty; connect the output of a text encode.")
    record_id = conditioning[0][1].get(RECORD_KEY)
    if record_id is None:
        raise ValueError(f"{node}: the conditioning was not encoded by the CLIP of this probe with capture on; "
                         f"connect the CLIP output of {PATCH_CLIP} to the text encode and turn capture on.")
    rec = probe.records.get(record_id)
    if rec is None:
        raise ValueError(f"{node}: the maps of this encode are no longer kept (the probe keeps the last few "
                         "encodes); run the text encode again.")
    keys = [k for k in ENCODERS if k in rec.maps]
    key = keys[0] if encoder == "auto" and keys else encoder
    skipped = rec.skipped
    if key not in rec.maps and (key in skipped or (key == "auto" and skipped)):
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items() if key in ("auto", k))
        raise ValueError(f"{node}: the maps of this prompt were not recorded ({why}); shorten the prompt "
                         "to see them (the encode itself is unaffected).")
    if key not in rec.maps:
        raise ValueError(f"{node}: encoder {brief(encoder)!r} did not run for this prompt; encoders that ran: "
                         f"{listed(keys)}. Pick one of them, or auto.")
    layers = rec.maps[key].layers
    if layer >= len(layers):
        raise ValueError(f"{node}: layer {layer} is out of range; this encoder has {len(layers)} layers "
                         f"(0-{len(layers) - 1}). Pick one of them, or -1 for the mean.")
    m = (torch.stack(layers).mean(0) if layer < 0 else layers[layer])[0].float().cpu()  # first chunk [T, T]
    layout = rec.layout
    t = m.shape[0]
    if level == "words":
        pairs = [(w, [i for i in s if i < t]) for w, s in zip(layout.words, layout.encoder_spans.get(key, []),
                                                              strict=False)]
        pairs = [(w, s) for w, s in pairs if s]
        if not pairs:
            raise ValueError(f"{node}: the prompt has no words in encoder {key!r} (an empty prompt?); give it "
                             "words, or set level to tokens.")
        labels = [w for w, _ in pairs]
        matrix = _pool(m, [s for _, s in pairs])
    else:
        labels = rec.labels.get(key, [])[:t]
        matrix = m
    meta = {"kind": "text", "encoder": key, "layer": int(layer), "level": level, "words": labels,
            "normalisation": "none (attention probability, mean over heads)"}
    maps = AttentionMaps(maps=matrix[None, :, None, :].contiguous(), words=labels, meta=meta)
    return maps, matrix
