"""The shapes model's CLIP-L: full size (so ComfyUI's stock CLIPLoader reads it),
weights generated from a seed instead of committed (246 MB in fp16).

Why these weights and not plain random ones: a random 12-layer CLIP-L washes
token identity out (measured: "circle" and "square" at the same position had
cosine 0.966), so the diffusion model's word columns looked alike and their
attention could not tell words apart. Here the token embeddings dominate the
residual stream and every layer adds only a small branch, so each position
stays its own word plus where it stands; the final layer norm is zero, so the
pooled vector SD3 feeds to adaLN is zero and the model has to read the prompt
through attention.

The generator is SplitMix64 over (seed, tensor name, element index), written
with numpy uint64 arithmetic: the same bits on every machine and version.
Pure numpy + safetensors; no torch, no ComfyUI.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

SEED = 20261128
VOCAB, WIDTH, POSITIONS, LAYERS, MLP = 49408, 768, 77, 12, 3072

TOKEN_STD = 1.0  # per channel: the token identity that must survive 11 layers
POSITION_STD = 0.5  # where the word stands (first or second object)
BRANCH_GAIN = 0.05  # attention-out and MLP-out scale: small residual branches

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def _key(seed: int, name: str) -> np.uint64:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.uint64(int.from_bytes(h[:8], "little"))


def uniform(seed: int, name: str, n: int, chunk: int = 1 << 22) -> np.ndarray:
    """``n`` floats uniform in [-1, 1) from SplitMix64(key(seed, name) + i * golden)."""
    key = _key(seed, name)
    out = np.empty(n, dtype=np.float64)
    with np.errstate(over="ignore"):
        for s in range(0, n, chunk):
            z = np.arange(s, min(n, s + chunk), dtype=np.uint64) * _GOLDEN + key
            z = (z ^ (z >> np.uint64(30))) * _C1
            z = (z ^ (z >> np.uint64(27))) * _C2
            z = z ^ (z >> np.uint64(31))
            out[s : s + len(z)] = (z >> np.uint64(11)).astype(np.float64) * (2.0**-53) * 2.0 - 1.0
    return out


def _tensor(seed: int, name: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    n = math.prod(shape)
    return (uniform(seed, name, n) * (std * math.sqrt(3.0))).reshape(shape).astype(np.float16)


def state_dict(seed: int = SEED) -> dict[str, np.ndarray]:
    """CLIP-L in the key layout stock CLIPLoader reads (``text_model.*``), fp16."""
    sd: dict[str, np.ndarray] = {}
    t = "text_model."
    sd[t + "embeddings.token_embedding.weight"] = _tensor(seed, "token", (VOCAB, WIDTH), TOKEN_STD)
    sd[t + "embeddings.position_embedding.weight"] = _tensor(seed, "position", (POSITIONS, WIDTH), POSITION_STD)
    ones, zeros = np.ones(WIDTH, np.float16), np.zeros(WIDTH, np.float16)
    for i in range(LAYERS):
        p = f"{t}encoder.layers.{i}."
        for proj in ("q", "k", "v"):
            sd[p + f"self_attn.{proj}_proj.weight"] = _tensor(seed, f"{i}.{proj}", (WIDTH, WIDTH), WIDTH**-0.5)
            sd[p + f"self_attn.{proj}_proj.bias"] = zeros.copy()
        sd[p + "self_attn.out_proj.weight"] = _tensor(seed, f"{i}.out", (WIDTH, WIDTH), BRANCH_GAIN * WIDTH**-0.5)
        sd[p + "self_attn.out_proj.bias"] = zeros.copy()
        sd[p + "mlp.fc1.weight"] = _tensor(seed, f"{i}.fc1", (MLP, WIDTH), WIDTH**-0.5)
        sd[p + "mlp.fc1.bias"] = np.zeros(MLP, np.float16)
        sd[p + "mlp.fc2.weight"] = _tensor(seed, f"{i}.fc2", (WIDTH, MLP), BRANCH_GAIN * MLP**-0.5)
        sd[p + "mlp.fc2.bias"] = zeros.copy()
        for ln in ("layer_norm1", "layer_norm2"):
            sd[p + f"{ln}.weight"] = ones.copy()
            sd[p + f"{ln}.bias"] = zeros.copy()
    # zero final norm: SD3's pooled CLIP-L vector (final_layer_norm at the end token) is zero
    sd[t + "final_layer_norm.weight"] = zeros.copy()
    sd[t + "final_layer_norm.bias"] = zeros.copy()
    sd["text_projection.weight"] = np.zeros((WIDTH, WIDTH), np.float16)
    return sd


def write(path: Path, seed: int = SEED) -> Path:
    """Write the CLIP-L file atomically (a temp file, then a rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state_dict(seed), str(tmp), metadata={"enfoque": f"shapes CLIP-L, seed {seed}"})
    tmp.replace(path)
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
