"""Concept attention (ConceptAttention, Helbling et al., ICML 2025): maps taken in the
attention *output* space of a joint-attention block.

A set of concept tokens (each concept encoded on its own) runs through the joint
blocks as an extra stream with the text stream's own weights. Its queries attend
to ``[concepts; image]`` keys, never the prompt's text, and no image or text query
ever attends to a concept, so the picture is exactly the stock one. A concept's
map is the dot product of each image token's attention output with the concept's
attention output (both before the output projection), with a softmax over the
concepts.

Pure torch: the glue that runs the stream through a model's blocks is
``nodes/concepts.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def concept_attention(q_c: Tensor, k_c: Tensor, v_c: Tensor, k_img: Tensor, v_img: Tensor) -> Tensor:
    """The concepts' attention output ``[B, H, Nc, D]``: concept queries over ``[concepts; image]`` keys.

    All inputs are ``[B, H, N, D]``; image keys and values as the block's joint attention saw them
    (after its norms and rotary embedding), in the model's dtype."""
    k = torch.cat((k_c, k_img.to(k_c.dtype)), dim=2)
    v = torch.cat((v_c, v_img.to(v_c.dtype)), dim=2)
    return F.scaled_dot_product_attention(q_c, k, v)


def concept_scores(img_out: Tensor, concept_out: Tensor) -> Tensor:
    """``softmax_over_concepts(img_out · concept_outᵀ)``: ``[B, Nimg, Nc]`` float32.

    ``img_out`` ``[B, Nimg, C]`` and ``concept_out`` ``[B, Nc, C]`` are attention outputs with the
    heads concatenated (C = heads x head dim), before the block's output projection."""
    logits = torch.matmul(img_out.float(), concept_out.float().transpose(1, 2))
    return torch.softmax(logits, dim=-1)
