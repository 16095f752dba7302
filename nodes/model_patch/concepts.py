"""The concept stream of EnfoquePatchModel (ENFOQUE_CONCEPTS from EnfoqueConcepts): concept tokens
that run through the joint blocks beside the prompt, with the text stream's modulation, QKV,
projection and MLP weights, and attend to ``[concepts; image]`` (``attention/concepts.py``).

- `Concepts`: what EnfoqueConcepts outputs: the names and one context vector per concept (the
  mean of the concept word's token vectors when it is encoded alone).
- `ConceptStream`: per family, how a block's text weights move the stream: SD3's joint blocks
  (``context_block``) and Flux's double blocks (``txt_mod``, ``txt_attn``, ``txt_mlp``).
- `ConceptCall`: what a block replace hands the attention override for one block call (the
  concepts' q, k, v) and gets back (their attention output).

Image and text never attend to the concepts, so a patched model's output is the stock one. The pure
attention of the stream is `attention.concepts`; the block hooks that run it are in `blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...attention.engine import to_bhnd
from ...attention.formats import brief
from ...attention.layout import LAYOUT_KEY
from ..clip_patch.install import install as patch_clip
from ..names import PATCH_MODEL as NODE


@dataclass(frozen=True)
class Concepts:
    """ENFOQUE_CONCEPTS: concept names and their context vectors ``[concepts, context_dim]`` float32."""

    names: tuple[str, ...]
    embeddings: Tensor

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class ConceptCall:
    """One block call's concept queries/keys/values ``[B, H, Nc, D]``; ``out`` is set by the attention
    override: the concepts' attention output ``[B, Nc, H*D]``."""

    q: Tensor
    k: Tensor
    v: Tensor
    block: int
    record: bool  # whether this block's scores go into the maps (the block is one of the chosen blocks)
    txt_len: int  # text tokens first in the joint sequence
    seq_len: int  # keys of the block's joint attention (text + image)
    out: Tensor | None = None


class ConceptStream:
    """How one family's blocks move the concept stream; the block's own weights, no copies."""

    families = ("sd3", "flux")

    def __init__(self, family: str, network) -> None:
        if family not in self.families:
            raise ValueError(family)
        self.family, self.network = family, network

    def context_dim(self) -> int:
        layer = self.network.context_embedder if self.family == "sd3" else self.network.txt_in
        return int(layer.in_features)

    def start(self, embeddings: Tensor, batch: int, like: Tensor) -> Tensor:
        """The stream entering the first block: the concept vectors through the model's text input layer."""
        e = embeddings.to(device=like.device, dtype=like.dtype)[None].expand(batch, -1, -1)
        if self.family == "sd3":
            if getattr(self.network, "context_processor", None) is not None:
                e = self.network.context_processor(e)
            return self.network.context_embedder(e)
        if getattr(self.network, "txt_norm", None) is not None:
            e = self.network.txt_norm(e)
        return self.network.txt_in(e)

    def pre(self, index: int, x: Tensor, vec: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], tuple]:
        """(q, k, v) ``[B, H, Nc, D]`` of the stream at double block ``index``, and what `post` needs."""
        if self.family == "sd3":
            cb = self.network.joint_blocks[index].context_block
            qkv, inter = cb.pre_attention(x, vec)
            heads = cb.attn.num_heads
            return tuple(to_bhnd(t, heads, False) for t in qkv), (cb, inter)
        blk = self.network.double_blocks[index]
        mod1, mod2 = blk.txt_mod(vec)
        xm = torch.addcmul(mod1.shift, blk.txt_norm1(x), 1 + mod1.scale)
        qkv = blk.txt_attn.qkv(xm)
        q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, blk.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = blk.txt_attn.norm(q, k, v)
        return (q, k, v), (blk, mod1, mod2)

    def post(self, x: Tensor, out: Tensor, ctx: tuple) -> Tensor:
        """The stream after the block: its attention output through the text stream's projection and MLP."""
        if self.family == "sd3":
            cb, inter = ctx
            if cb.pre_only:  # SD3's last block updates no text
                return x
            return cb.post_attention(out, *inter)
        blk, mod1, mod2 = ctx
        x = x + mod1.gate * blk.txt_attn.proj(out)
        return x + mod2.gate * blk.txt_mlp(torch.addcmul(mod2.shift, blk.txt_norm2(x), 1 + mod2.scale))


def concept_stream(spec, network, concepts: Concepts) -> ConceptStream:
    """The concept stream of this model (``spec``: its `families.Family`), or a ValueError a user can act on."""
    if spec.key not in ConceptStream.families:
        raise ValueError(
            f"{NODE}: concepts work on the joint blocks of SD3 / SD3.5 and Flux.1; this model is "
            f"{spec.label}. Disconnect concepts, or use one of those models."
        )
    stream = ConceptStream(spec.key, network)
    dim = int(concepts.embeddings.shape[-1])
    if dim != stream.context_dim():
        raise ValueError(
            f"{NODE}: the concepts ({', '.join(concepts.names)}) were encoded into {dim} channels, this "
            f"{spec.label} model reads text of {stream.context_dim()}; encode them with the text encoder this "
            "model uses (the CLIP that encodes its prompt) in Enfoque Concepts."
        )
    return stream


def encode_concepts(clip, names: list[str], node: str) -> Concepts:
    """Each concept encoded alone with the CLIP of the model's prompts; its vector is the mean over its
    words' context positions (start, end and padding tokens left out)."""
    patched, _ = patch_clip(clip, "comfy", False)  # comfy mode: the stock encode, plus the token layout
    vectors = []
    for name in names:
        cond = patched.encode_from_tokens_scheduled(patched.tokenize(name))
        context, extra = cond[0][0], cond[0][1]
        layout = extra.get(LAYOUT_KEY)
        positions = layout.positions() if layout is not None else []
        if not positions:
            raise ValueError(f"{node}: the concept {brief(name)!r} encodes to no word token; use a word or a "
                             "short phrase.")
        vectors.append(context[0, positions].float().mean(0))
    return Concepts(tuple(names), torch.stack(vectors).cpu())
