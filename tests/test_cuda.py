"""The GPU path: for fp16, bf16 and fp32 and for every SDPA backend torch offers on the card (its
default choice, then flash, efficient, cuDNN and math forced one at a time), capture leaves the
output ``torch.equal`` to stock ``F.scaled_dot_product_attention`` with the same inputs, and the maps
match a float64 reference computed on the same rounded inputs, within the fp32 error bound derived in
``test_engine.fp32_error_bound`` (plus the kernel's own LSE error, measured against float64).

Covered: no mask, additive and bool masks, odd lengths, the weighted case (bias and scale), and one
joint-attention block at real sizes with random weights: SD3.5 Large (hidden 2432, 38 heads) and
Flux dev (hidden 3072, 24 heads) at 1024x1024 (4096 image tokens) with 333 and 512 text tokens.

Without CUDA every test is skipped with the reason. ``tools/gpu_check.sh --dry-run`` runs the same
tests on the CPU at tiny sizes (``ENFOQUE_GPU_CHECK_DEVICE=cpu``, where the backends are the CPU
flash kernel and math), so that the plan is known to run before a GPU is at hand.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_engine import U32, gamma  # noqa: E402  (the fp32 error model, derived there)

from attention import sdpa  # noqa: E402
from attention.engine import Capture, Reweight, attend, sdpa_mask  # noqa: E402

DEVICE = os.environ.get("ENFOQUE_GPU_CHECK_DEVICE", "cuda")
TINY = DEVICE != "cuda"  # the dry run: same plan, tiny sizes

if DEVICE == "cuda" and not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(
        reason="no CUDA device: run tools/gpu_check.sh where there is one (tools/gpu_check.sh --dry-run runs "
        "these tests on the CPU at tiny sizes)"
    )

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FORCED = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
BACKENDS = ["default", "flash", "efficient", "cudnn", "math"] if DEVICE == "cuda" else ["default", "flash", "math"]
LSE_KERNELS = {"flash", "efficient", "cudnn"}
KERNEL_LSE_MAX = 1e-3  # a kernel LSE error above this (the engine's own check uses the same) fails the test


def backend_context(name: str):
    return nullcontext() if name == "default" else sdpa_kernel([FORCED[name]])


def offered(name: str, q, k, v, mask) -> None:
    """Skip (with the reason) where the card or torch does not offer this backend for these inputs."""
    with backend_context(name):
        try:
            choice = sdpa.sdp_choice(q, k, v, mask)
        except RuntimeError as e:  # "No available kernel": torch offers none of the forced kind here
            pytest.skip(f"SDPA offers no {name} kernel for {q.dtype} q{tuple(q.shape)} here: {str(e)[:120]}")
    if name != "default" and sdpa.kernel_name(choice) != name:
        pytest.skip(f"SDPA picks {sdpa.kernel_name(choice)}, not {name}, for {q.dtype} q{tuple(q.shape)}")


# -- float64 reference, in head groups so that real sizes fit ------------------------------------


class Reference:
    """Float64 maps for the query range, summed over heads at ``cols``, with the terms of the fp32 error
    bound of ``test_engine.fp32_error_bound``, computed in head groups so that real sizes fit. With
    x = a + b, a the error of our fp32 logits and b that of the normaliser, p expm1(a + b) =
    p expm1(a) + p e^a expm1(b) exactly; b is bounded per row by its maximum over heads, so that
    ``bound(b)`` = A + C expm1(b) serves every backend from one float64 pass:
    - ``lse``: float64 LSE [B, H, queries]; ``chunked``: the bound on b where the engine computes the
      normaliser itself (chunked route), per [B, queries]."""

    def __init__(self, q, k, mask, cols, q_range, group_bytes=2 << 30):
        q0, q1 = q_range
        b, h, _, d = q.shape
        nk = k.shape[2]
        s = d**-0.5
        step = max(1, min(h, group_bytes // (b * (q1 - q0) * nk * 8 * 4)))
        self.maps = torch.zeros(b, q1 - q0, cols.numel(), dtype=torch.float64, device=q.device)
        self.A, self.C = torch.zeros_like(self.maps), torch.zeros_like(self.maps)
        self.chunked = torch.zeros(b, q1 - q0, dtype=torch.float64, device=q.device)
        lses = []
        for h0 in range(0, h, step):
            h1 = min(h, h0 + step)
            qd, kd = q[:, h0:h1, q0:q1].double(), k[:, h0:h1].double()
            logits = qd @ kd.transpose(-1, -2) * s
            m_abs = 0.0
            if mask is not None:
                m = mask[:, :, q0:q1] if mask.shape[2] > 1 else mask
                m = (m[:, h0:h1] if m.shape[1] > 1 else m).double()
                logits = logits + m
                m_abs = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).abs()
            live = torch.isfinite(logits)
            l_fin = torch.where(live, logits, torch.zeros_like(logits))
            dl = gamma(d) * s * (qd.abs() @ kd.abs().transpose(-1, -2)) + 2 * U32 * (l_fin.abs() + m_abs)
            dl = torch.where(live, dl, torch.zeros_like(dl))
            del qd, kd, l_fin, live
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            lses.append(lse[..., 0])
            own = dl.amax(-1) + gamma(nk + 4) + U32 * torch.where(torch.isfinite(lse[..., 0]), lse[..., 0], 0).abs()
            self.chunked = torch.maximum(self.chunked, own.amax(1))
            lc = logits.index_select(3, cols)
            p = torch.exp(lc - lse)
            a = dl.index_select(3, cols) + U32 * (torch.where(torch.isfinite(lc), lc, lse) - lse).abs()
            del logits, dl
            self.maps += p.sum(1)
            self.A += (p * torch.expm1(a) + U32 * p).sum(1)
            self.C += (p * torch.exp(a)).sum(1)
        self.lse = torch.cat(lses, dim=1)
        self.heads = h

    def bound(self, lse_err=None):
        """``lse_err``: the kernel's measured LSE error [B, H, queries]; None: the chunked route's own."""
        b = self.chunked if lse_err is None else lse_err.double().amax(1)
        return (self.A + self.C * torch.expm1(b)[..., None]) * (1 + gamma(self.heads))


def assert_maps(maps, ref, bound, what):
    err = (maps.double() - ref).abs()
    over = (err - bound).max().item()
    assert over <= 0, f"{what}: map error exceeds the fp32 bound by {over:.3g} (max error {err.max().item():.3g})"


# -- inputs -------------------------------------------------------------------------------------


def rand_qkv(b, h, nq, nk, d, dtype, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g) * scale
    k = torch.randn(b, h, nk, d, generator=g) * scale
    v = torch.randn(b, h, nk, d, generator=g)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


SMALL = dict(b=2, h=3, d=64) if not TINY else dict(b=2, h=2, d=16)
TEXT, IMAGE = (333, 31 * 33) if not TINY else (7, 5 * 7)  # odd lengths: 333 text + 1023 image tokens


def case_inputs(case: str, dtype):
    """q, k, v [B, H, N, D] over the joint sequence [text, image]; the mask and Reweight of the case."""
    n = TEXT + IMAGE
    q, k, v = rand_qkv(SMALL["b"], SMALL["h"], n, n, SMALL["d"], dtype)
    mask, rw = None, None
    g = torch.Generator().manual_seed(1)
    if case == "additive":
        mask = (torch.randn(SMALL["b"], 1, 1, n, generator=g) * 2).to(DEVICE, dtype)
    elif case == "bool":
        keep = torch.rand(SMALL["b"], 1, n, n, generator=g) > 0.2
        keep[..., 0] = True
        mask = keep.to(DEVICE)
    elif case in ("bias", "scale"):
        w = torch.ones(SMALL["b"], n)
        w[0, 1:6] = torch.tensor([1.5, 0.5, 0.0, 2.5, 1.2])
        w[1, 2:4] = torch.tensor([0.3, 1.8])
        rw = Reweight.build(w.to(DEVICE), case)
    return q, k, v, mask, rw


CASES = ["nomask", "additive", "bool", "bias", "scale"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_capture_is_stock_and_exact(dtype, backend, case):
    q, k, v, mask, rw = case_inputs(case, DTYPES[dtype])
    attn_mask = sdpa_mask(mask, rw, q)
    v_in = v if rw is None or rw.mode != "scale" else v * rw.weights.to(v.dtype)[:, None, :, None]
    offered(backend, q, k, v_in, attn_mask)
    cols = torch.arange(TEXT, device=DEVICE)
    qr = (TEXT, TEXT + IMAGE)
    caps = [Capture(slice(0, 1), cols), Capture(slice(1, 2), cols[: TEXT // 2])]
    sdpa.reset_routes()
    with backend_context(backend):
        stock = torch.nn.functional.scaled_dot_product_attention(q, k, v_in, attn_mask=attn_mask)
        out, maps = attend(q, k, v, SMALL["h"], mask=mask, reweight=rw, skip_reshape=True, skip_output_reshape=True,
                           captures=caps, query_range=qr)
        route = sdpa.route_of(q, k, v_in, attn_mask)
        fused = sdpa.attention_with_lse(q, k, v_in, attn_mask)
    assert torch.equal(out, stock), f"{dtype} {backend} {case}: output differs from stock SDPA"
    check_route(fused, route)
    sw = rw.weights if rw is not None and rw.mode == "scale" else None
    for c, got in zip(caps, maps, strict=True):
        m = rows_of(fused.mask, c.rows)
        ref = Reference(q[c.rows], k[c.rows], m, c.columns, qr)
        lse_err = lse_error(fused, c.rows, qr, ref)
        want, bound = ref.maps, ref.bound(lse_err)
        if sw is not None:
            w = sw[c.rows].index_select(1, c.columns).double()[:, None, :]
            want, bound = want * w, bound * w
        assert_maps(got, want, bound, f"{dtype} {backend} {case} rows {c.rows}")


def rows_of(mask, rows):
    return None if mask is None else mask[rows] if mask.shape[0] > 1 else mask


def check_route(fused, route):
    """Flash and efficient (and the CPU flash kernel) are called exactly as SDPA calls them: one call.
    cuDNN's op is given compute_log_sumexp, which may change its output bits: then two calls."""
    if fused.kernel in LSE_KERNELS:
        assert route in (sdpa.FUSED, sdpa.SDPA_PLUS_LSE), f"{fused.kernel}: route {route}"
        if fused.kernel != "cudnn":
            assert route == sdpa.FUSED, f"{fused.kernel}: its LSE op's output differs from SDPA's"
        assert fused.lse is not None


def lse_error(fused, rows, q_range, ref):
    """The kernel's LSE error against float64, per [B, H, queries] (None: the engine's own normaliser)."""
    if fused.lse is None:
        return None
    err = (fused.lse[rows, :, q_range[0] : q_range[1]].double() - ref.lse).abs()
    err = torch.where(torch.isfinite(ref.lse), err, torch.zeros_like(err))
    assert err.max().item() <= KERNEL_LSE_MAX, f"{fused.kernel}: LSE error {err.max().item():.3g}"
    return err


# -- one block at real sizes, random weights ------------------------------------------------------

BLOCKS = {
    # name: hidden, heads, text tokens (SD3: 77 CLIP + 256 T5; Flux: 512 T5); RMS-normed q and k in both
    "sd35-large": (2432, 38, 333) if not TINY else (64, 4, 13),
    "flux-dev": (3072, 24, 512) if not TINY else (64, 2, 16),
}
IMAGE_TOKENS = 4096 if not TINY else 64  # 1024x1024 px / 8 (VAE) / 2 (patch) = 64x64
_BLOCK_CACHE: dict = {}


def block_qkv(name: str, dtype):
    """q, k, v [B=2 (cond, uncond), N, hidden] of one joint block: text and image streams through their
    own random qkv projections (std 1/sqrt(hidden)), RMS-normed q and k, joint sequence [text, image]."""
    hidden, heads, text = BLOCKS[name]
    g = torch.Generator().manual_seed(len(name))
    b = 2
    streams = []
    for n in (text, IMAGE_TOKENS):
        x = torch.randn(b, n, hidden, generator=g)
        w = torch.randn(3 * hidden, hidden, generator=g) / hidden**0.5
        streams.append((x @ w.t()).view(b, n, 3, heads, hidden // heads))
    q, k, v = torch.cat(streams, dim=1).unbind(2)
    q, k = (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) for t in (q, k))
    return [t.reshape(b, text + IMAGE_TOKENS, hidden).to(DEVICE, dtype) for t in (q, k, v)], heads, text


def block_case(block: str, dtype: str, weighted: bool):
    """Inputs and the float64 reference of row 0 (the captured prompt), once per block, dtype and weights:
    the reference is the same for every backend (same rounded inputs); only the LSE error differs."""
    key = (block, dtype, weighted)
    if key not in _BLOCK_CACHE:
        _BLOCK_CACHE.clear()  # one at a time: real sizes
        (q, k, v), heads, text = block_qkv(block, DTYPES[dtype])
        b, n, hidden = q.shape
        rw = None
        if weighted:
            w = torch.ones(b, n, device=DEVICE)
            w[0, 3:7] = torch.tensor([1.5, 0.5, 0.0, 2.0], device=DEVICE)
            rw = Reweight.build(w, "bias")
        attn_mask = sdpa_mask(None, rw, q)
        qh, kh, vh = (t.view(b, n, heads, hidden // heads).transpose(1, 2) for t in (q, k, v))
        cols = torch.arange(text, device=DEVICE)
        ref = Reference(qh[0:1], kh[0:1], rows_of(attn_mask, slice(0, 1)), cols, (text, n))
        _BLOCK_CACHE[key] = (q, k, v, qh, kh, vh, heads, text, rw, attn_mask, ref)
    return _BLOCK_CACHE[key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["capture", "capture+bias"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("block", list(BLOCKS))
def test_real_size_block(block, dtype, weighted, backend):
    q, k, v, qh, kh, vh, heads, text, rw, attn_mask, ref = block_case(block, dtype, weighted)
    offered(backend, qh, kh, vh, attn_mask)
    b, n, hidden = q.shape
    cols = torch.arange(text, device=DEVICE)
    qr = (text, n)
    caps = [Capture(slice(0, 1), cols), Capture(slice(1, 2), cols[:8])]
    sdpa.reset_routes()
    with backend_context(backend):
        stock = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask)
        stock = stock.transpose(1, 2).reshape(b, n, hidden)  # as ComfyUI's attention_pytorch returns it
        out, maps = attend(q, k, v, heads, reweight=rw, captures=caps, query_range=qr)
        route = sdpa.route_of(qh, kh, vh, attn_mask)
        fused = sdpa.attention_with_lse(qh, kh, vh, attn_mask)
    assert torch.equal(out, stock), f"{block} {dtype} {backend}: output differs from stock SDPA"
    check_route(fused, route)
    assert maps[1].shape == (1, n - text, 8)
    assert_maps(maps[0], ref.maps, ref.bound(lse_error(fused, slice(0, 1), qr, ref)), f"{block} {dtype} {backend}")
    del maps, stock, out, fused
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
