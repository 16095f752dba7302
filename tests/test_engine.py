"""The engine against a naive softmax written out plainly here."""

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import sdpa  # noqa: E402
from attention.aggregate import BudgetExceeded, MapAccumulator, level_grid  # noqa: E402
from attention.engine import Capture, Reweight, attend  # noqa: E402


def naive_probs(q, k, mask=None, log_w=None):
    """softmax(q k^T / sqrt(d) + mask + log w) over all keys, [B, H, Nq, Nk], in float64."""
    q, k = q.double(), k.double()
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        logits = logits + mask.double()
    if log_w is not None:
        logits = logits + log_w.double()[:, None, None, :]
    return torch.softmax(logits, dim=-1)


def naive_out(p, v):
    return (p @ v.double())


def split_heads(t, heads):
    b, n, hd = t.shape
    return t.view(b, n, heads, hd // heads).transpose(1, 2)


def rand_qkv(b=2, h=3, nq=37, nk=41, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g) * 1.5
    k = torch.randn(b, h, nk, d, generator=g) * 1.5
    v = torch.randn(b, h, nk, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("fallback", [False, True], ids=["lse", "chunked"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 24], ids=["tiny-chunks", "one-chunk"])
def test_capture_equals_naive_softmax_fp32(fallback, masked, chunk_bytes):
    q, k, v = rand_qkv(nq=37, nk=41)
    mask = torch.randn(2, 1, 37, 41) if masked else None
    cols = torch.tensor([0, 3, 4, 10, 40])
    compute = (lambda q_, k_, v_, m_: torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)) if fallback else None
    caps = [Capture(slice(0, 1), cols), Capture(slice(1, 2), cols[:2])]
    out, maps = attend(q, k, v, 3, mask=mask, skip_reshape=True, skip_output_reshape=True,
                       captures=caps, query_range=(5, 30), compute_out=compute, chunk_bytes=chunk_bytes)
    p = naive_probs(q, k, mask)
    ref0 = p[0:1, :, 5:30][..., cols].sum(1)
    ref1 = p[1:2, :, 5:30][..., cols[:2]].sum(1)
    assert maps[0].shape == (1, 25, 5) and maps[1].shape == (1, 25, 2)
    torch.testing.assert_close(maps[0].double(), ref0, atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[1].double(), ref1, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.double(), naive_out(p, v), atol=1e-5, rtol=0)


def test_bool_mask_and_flat_layout():
    q, k, v = rand_qkv(b=2, h=4, nq=19, nk=23, d=8)
    keep = torch.rand(2, 19, 23, generator=torch.Generator().manual_seed(1)) > 0.3
    keep[..., 0] = True
    flat = [t.transpose(1, 2).reshape(2, t.shape[2], 32) for t in (q, k, v)]
    cols = torch.arange(0, 23, 2)
    out, maps = attend(*flat, 4, mask=keep, captures=[Capture(slice(0, 2), cols)])
    add = torch.zeros(2, 1, 19, 23).masked_fill(~keep[:, None], float("-inf"))
    p = naive_probs(q, k, add)
    assert out.shape == (2, 19, 32)
    torch.testing.assert_close(split_heads(out, 4).double(), naive_out(p, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[0].double(), p[..., cols].sum(1), atol=1e-5, rtol=0)


# fp32 unit roundoff. The captured logits are computed in fp32 from the inputs as the kernel saw them,
# so their error is fp32 rounding of the rounded inputs, whatever the input dtype.
U32 = 2.0**-24


def gamma(n):
    """Higham's gamma_n = n u / (1 - n u): bound on the relative error of n fp32 roundings in a row."""
    return n * U32 / (1 - n * U32)


def fp32_error_bound(q, k, mask, p, lse_err=None):
    """A bound on |captured - exact| per [B, Nq, Nk] entry, summed over heads, for maps computed in
    fp32 from exactly representable inputs (bf16/fp16 values are exact in fp32):
    - logit l_ij = (q_i.k_j) s + m_ij: the dot product of d terms errs by at most
      gamma_d * sum_t |q_it k_jt| (any summation order), times s, plus one rounding each for
      the scale and the mask: |dl_ij| <= gamma_d s (|q||k|^T)_ij + 2u(|l_ij| + |m_ij|);
    - the normaliser lse_i: where the engine computes it (chunked route) a softmax-weighted mean of
      its own logit errors (<= max_j |dl_ij|) plus the relative error of an Nk-term fp32 sum and of
      each exp/log (gamma_{Nk+4}) plus u|lse_i|; where a kernel gives it, the kernel's own error,
      ``lse_err``, measured against float64 by the caller (the CPU flash kernel's exp for half
      inputs is good to about 2^-14, so its LSE errs by ~5e-5: not ours to bound);
    - p = exp(l - lse): |dp| <= p (exp(|dl| + |dlse| + u|l - lse|) - 1) + u p; heads are summed in
      fp32 (gamma_H relative).
    Logits in bf16 would carry 2^-9 |l| (fp16: 2^-12 |l|): far outside this bound."""
    q, k = q.double(), k.double()
    d, nk, heads = q.shape[-1], k.shape[2], q.shape[1]
    s = d**-0.5
    logits = q @ k.transpose(-1, -2) * s
    m = torch.zeros_like(logits) if mask is None else mask.double().expand_as(logits)
    logits = logits + m
    live = torch.isfinite(logits)
    l_fin = torch.where(live, logits, torch.zeros_like(logits))
    m_fin = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    dl = gamma(d) * s * (q.abs() @ k.abs().transpose(-1, -2)) + 2 * U32 * (l_fin.abs() + m_fin.abs())
    dl = torch.where(live, dl, torch.zeros_like(dl))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    if lse_err is None:
        dlse = dl.amax(-1, keepdim=True) + gamma(nk + 4) + U32 * lse.abs()
    else:
        dlse = lse_err.double()[..., None]
    dx = dl + dlse + U32 * (l_fin - lse).abs()
    dp = p * torch.expm1(dx) + U32 * p
    return dp.sum(1) * (1 + gamma(heads))


def kernel_lse_error(lse, q, k, mask):
    """|kernel LSE - float64 LSE| per [B, H, Nq] row, on the same rounded inputs."""
    logits = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits + mask.double()
    return (lse.double() - torch.logsumexp(logits, dim=-1)).abs()


def assert_within(got, ref, bound):
    err = (got.double() - ref).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"error exceeds the fp32 bound by {worst:.3g} (max error {err.max().item():.3g})"


@pytest.mark.parametrize("route", ["lse", "lse-side", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_capture_precision_is_fp32_for_any_dtype(dtype, route, monkeypatch):
    """Maps from bf16/fp16/fp32 inputs agree with a float64 reference on the same rounded inputs within
    the fp32 error bound derived in fp32_error_bound, on every route to the normaliser. Logits computed
    in bf16 (or fp16) would be tens to hundreds of times outside it."""
    q, k, v = rand_qkv(b=2, h=3, nq=64, nk=80, d=32, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    mask = (torch.randn(2, 1, 1, 80, generator=g) * 2).to(dtype)
    cols = torch.arange(0, 16)
    compute = None
    if route != "lse":
        def compute(q_, k_, v_, m_):  # a foreign backend: the output comes from elsewhere
            return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)
    if route == "chunked":
        monkeypatch.setattr(sdpa, "lse_only", lambda *a: None)
    _, maps = attend(q, k, v, 3, mask=mask, skip_reshape=True, skip_output_reshape=True,
                     captures=[Capture(slice(0, 2), cols)], query_range=(16, 64), compute_out=compute)
    qs = q[:, :, 16:64]
    lse_err = None
    if route != "chunked":
        lse = sdpa.attention_with_lse(q, k, v, mask).lse[:, :, 16:64] if route == "lse" else sdpa.lse_only(qs, k, v, mask)
        lse_err = kernel_lse_error(lse, qs, k, mask)
        assert lse_err.max().item() < 2e-4  # the CPU kernel's own accuracy (fp32: ~2e-6, half types: ~5e-5)
    p = naive_probs(qs, k, mask)  # q, k, mask as rounded to `dtype`, in float64
    ref = p[..., cols].sum(1)
    bound = fp32_error_bound(qs, k, mask, p, lse_err)[..., cols]
    assert_within(maps[0], ref, bound)


def test_capture_is_neutral():
    q, k, v = rand_qkv(nq=50, nk=50, d=16)
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out, _ = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True,
                    captures=[Capture(slice(0, 2), torch.arange(8))])
    assert torch.equal(out, stock)
    assert sdpa.route_of(q, k, v, None) == sdpa.FUSED  # one kernel call gave both
    ones = Reweight.build(torch.ones(2, 50), "bias")
    out_b, _ = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, reweight=ones)
    out_s, _ = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, reweight=Reweight.build(torch.ones(2, 50), "scale"))
    assert (out_b - stock).abs().max().item() <= 1e-6
    assert (out_s - stock).abs().max().item() <= 1e-6


@settings(max_examples=25, deadline=None)
@given(
    nq=st.integers(1, 20), nk=st.integers(2, 20), d=st.sampled_from([4, 8]),
    seed=st.integers(0, 10_000), zero=st.booleans(),
)
def test_bias_equals_renormalised_softmax(nq, nk, d, seed, zero):
    q, k, v = rand_qkv(b=2, h=2, nq=nq, nk=nk, d=d, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.rand(2, nk, generator=g) * 3
    w[:, -1] = 1.0
    if zero:
        w[0, 0] = 0.0
    cols = torch.arange(nk)
    out, maps = attend(q, k, v, 2, skip_reshape=True, skip_output_reshape=True,
                       reweight=Reweight.build(w, "bias"), captures=[Capture(slice(0, 2), cols)])
    p = naive_probs(q, k)
    # p_ij w_j / sum_k p_ik w_k, written out
    pw = p * w.double()[:, None, None, :]
    ref = pw / pw.sum(-1, keepdim=True)
    torch.testing.assert_close(out.double(), naive_out(ref, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[0].double(), ref.sum(1), atol=1e-5, rtol=0)
    if zero:
        assert maps[0][0, :, 0].abs().max().item() == 0.0


def test_scale_equals_post_softmax_multiply():
    q, k, v = rand_qkv(nq=30, nk=33, d=8)
    w = torch.ones(2, 33)
    w[0, 3], w[0, 5], w[1, 7] = 2.0, 0.0, -0.5
    out, maps = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True,
                       reweight=Reweight.build(w, "scale"), captures=[Capture(slice(0, 2), torch.tensor([3, 5, 7, 9]))])
    p = naive_probs(q, k) * w.double()[:, None, None, :]  # not renormalised
    torch.testing.assert_close(out.double(), naive_out(p, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[0].double(), p[..., [3, 5, 7, 9]].sum(1), atol=1e-5, rtol=0)


def test_weights_only_touch_their_rows():
    q, k, v = rand_qkv(nq=10, nk=12, d=8)
    w = torch.ones(2, 12)
    w[0, 2] = 3.0
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    for mode in ("bias", "scale"):
        out, _ = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, reweight=Reweight.build(w, mode))
        assert (out[1] - stock[1]).abs().max().item() <= 1e-6
        assert (out[0] - stock[0]).abs().max().item() > 1e-3


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="negative token weight -1"):
        Reweight.build(torch.tensor([[1.0, -1.0]]), "bias")
    with pytest.raises(ValueError, match="NaN or inf"):
        Reweight.build(torch.tensor([[1.0, float("nan")]]), "scale")
    with pytest.raises(ValueError, match="mode"):
        Reweight.build(torch.ones(1, 2), "multiply")


# -- the kernel SDPA picks, on the CPU with stand-ins for the CUDA ops ------------------------------


def exact_lse(q, k, mask):
    logits = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = logits + mask.double()
    return torch.logsumexp(logits, dim=-1).float()


def own_attention(q, k, v, mask, scale):
    """What a stand-in kernel computes, its own way (never through SDPA): float64
    ``softmax(q k^T scale + mask) v`` cast back to q's dtype, and the float64 log-sum-exp in fp32."""
    logits = q.double() @ k.double().transpose(-1, -2) * scale
    if mask is not None:
        logits = logits + mask.double()
    out = torch.softmax(logits, dim=-1) @ v.double()
    return out.to(q.dtype), torch.logsumexp(logits, dim=-1).float()


class FakeAten:
    """Stands in for the CUDA ops in ``sdpa._aten``: records each call and answers in the real op's
    layout (LSE padded to 32 rows for efficient, ``[.., 1]`` for cuDNN), computing attention its own
    way (``own_attention``), so its output is not SDPA's to the bit unless the inputs make it exact
    (``one_hot_qkv``). ``outputs`` keeps every output tensor it returned."""

    def __init__(self):
        self.calls = []
        self.outputs = []
        self._scaled_dot_product_flash_attention = self  # `.default` below
        self.default = self._flash

    def __getattr__(self, name):
        return getattr(torch.ops.aten, name)

    def count(self, name):
        return sum(c[0] == name for c in self.calls)

    def _own(self, q, k, v, mask, scale):
        out, lse = own_attention(q, k, v, mask, scale)
        self.outputs.append(out)
        return out, lse

    def _flash(self, q, k, v, dropout_p, is_causal, return_debug_mask, scale=None):
        self.calls.append(("flash", q, k, v, None, scale))
        return self._own(q, k, v, None, scale)

    def _scaled_dot_product_efficient_attention(self, q, k, v, bias, compute_log_sumexp):
        self.calls.append(("efficient", q, k, v, bias, compute_log_sumexp))
        out, lse = self._own(q, k, v, bias, q.shape[-1] ** -0.5)
        pad = -q.shape[2] % 32
        return (out, torch.nn.functional.pad(lse, (0, pad), value=float("nan")), None, None)

    def _scaled_dot_product_cudnn_attention(self, q, k, v, bias, compute_log_sumexp):
        self.calls.append(("cudnn", q, k, v, bias, compute_log_sumexp))
        out, lse = self._own(q, k, v, bias, q.shape[-1] ** -0.5)
        return (out, lse[..., None])


def one_hot_qkv(b=2, h=2, n=24, d=16, seed=0):
    """q, k, v whose attention is one-hot to the last bit: query i's logit for key i beats every other by at
    least 120 (exp(-120) is 0 in fp32 and 1e-52 in float64, below half an fp32 ulp), so SDPA and a kernel
    computing its own way both give ``v_i`` exactly. For the fused route, where the kernel's output must be
    SDPA's to the bit."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(b, h, n, d, generator=g, dtype=torch.float64), dim=-1)
    cos = u @ u.transpose(-1, -2) - 2 * torch.eye(n, dtype=torch.float64)
    gap = 1 - cos.amax(-1).max().item()
    c = math.sqrt(120 * math.sqrt(d) / gap)
    q = k = (c * u).float()
    v = torch.randn(b, h, n, d, generator=g)
    return q, k.clone(), v


@pytest.fixture
def fake_kernel(monkeypatch):
    """``choose(n)``: SDPA "picks" kernel n on the CPU, and the CUDA op wrappers run on the FakeAten."""
    sdpa.reset_routes()
    sdpa.reset_fallback_log()
    aten = FakeAten()
    monkeypatch.setattr(sdpa, "_aten", aten)
    for choice, fn in ((sdpa.FLASH, sdpa._cuda_flash), (sdpa.EFFICIENT, sdpa._cuda_efficient),
                       (sdpa.CUDNN, sdpa._cuda_cudnn)):
        monkeypatch.setitem(sdpa.KERNELS, ("cpu", choice), fn)

    def choose(n):
        monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a, **kw: n)
        return aten

    yield choose
    sdpa.reset_routes()
    sdpa.reset_fallback_log()


def test_choice_follows_sdpa_on_cpu():
    """On this machine SDPA picks the CPU flash kernel for 4-D masks and math for 3-D ones: so do we."""
    q, k, v = rand_qkv()
    assert sdpa.sdp_choice(q, k, v, None) == sdpa.FLASH
    assert sdpa.sdp_choice(q, k, v, torch.zeros(2, 1, 1, 41)) == sdpa.FLASH
    assert sdpa.sdp_choice(q, k, v, torch.zeros(2, 37, 41)) == sdpa.MATH
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        assert sdpa.sdp_choice(q, k, v, None) == sdpa.MATH


@pytest.mark.parametrize("nk", [77, 80, 4250], ids=["nk77", "nk80", "nk4250"])
def test_efficient_mask_aligned_as_sdpa(fake_kernel, nk):
    """The memory-efficient kernel gets the mask as aten's preprocess_mask makes it: strides multiples of
    8 (a padded copy where they were not, same values), expanded to [B, H, Nq, Nk]; the maps use that
    same tensor. Nk = 77 and 4250 (weights on SD3/Flux context lengths) used to fall back silently."""
    aten = fake_kernel(sdpa.EFFICIENT)
    q, k, v = rand_qkv(b=2, h=3, nq=37, nk=nk, d=16)
    w = torch.ones(2, nk)
    w[0, 3], w[1, 5] = 2.0, 0.25
    rw = Reweight.build(w, "bias")
    out, maps = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, reweight=rw,
                       captures=[Capture(slice(0, 2), torch.tensor([3, 5, 9]))])
    (name, *_, bias, lse_flag), = [c for c in aten.calls if c[0] == "efficient"]
    assert lse_flag is True
    assert bias.shape == (2, 3, 37, nk) and bias.stride(-1) == 1
    assert all(st % 8 == 0 for st in bias.stride()[:-1])
    log_w = torch.log(w)[:, None, None, :]
    assert torch.equal(bias, log_w.expand(2, 3, 37, nk))
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=log_w)
    assert not torch.equal(aten.outputs[0], stock), "the stand-in gave SDPA's output: the test cannot tell"
    assert torch.equal(out, stock) and sdpa.route_of(q, k, v, log_w) == sdpa.SDPA_PLUS_LSE
    p = naive_probs(q, k, log_w)
    torch.testing.assert_close(maps[0].double(), p[..., [3, 5, 9]].sum(1), atol=1e-5, rtol=0)
    # the LSE comes back padded to 32 rows: trimmed to the queries, also for a foreign output's normaliser
    assert sdpa.run_lse_kernel(sdpa.EFFICIENT, q, k, v, log_w)[1].shape == (2, 3, 37)
    _, maps = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, reweight=rw, query_range=(5, 37),
                     captures=[Capture(slice(0, 2), torch.tensor([3, 5, 9]))],
                     compute_out=lambda q_, k_, v_, m_: torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_))
    torch.testing.assert_close(maps[0].double(), p[:, :, 5:37][..., [3, 5, 9]].sum(1), atol=1e-5, rtol=0)


def test_align_mask_like_sdpa():
    aligned = torch.zeros(2, 1, 1, 80)
    assert sdpa.align_mask_like_sdpa(aligned) is aligned
    odd = torch.randn(2, 1, 1, 77)
    got = sdpa.align_mask_like_sdpa(odd)
    assert torch.equal(got, odd) and got.stride() == (80, 80, 80, 1)  # 77 + (8 - 77 % 8) columns
    full = torch.randn(2, 3, 5, 16)[..., :13]  # a view with strides multiple of 8 but last dim 13
    assert sdpa.align_mask_like_sdpa(full) is full
    assert sdpa.align_mask_like_sdpa(torch.randn(4, 24).t()).stride(-1) == 1  # last stride 1 enforced


def test_flash_pads_head_dim_and_keeps_the_scale(fake_kernel):
    """CUDA flash: head dim padded to a multiple of 8, scale from the unpadded dim, output sliced back."""
    aten = fake_kernel(sdpa.FLASH)
    q, k, v = rand_qkv(b=1, h=2, nq=20, nk=24, d=12)
    out, maps = attend(q, k, v, 2, skip_reshape=True, skip_output_reshape=True,
                       captures=[Capture(slice(0, 1), torch.arange(4))])
    (_, qp, kp, vp, _, scale), = aten.calls
    assert qp.shape[-1] == kp.shape[-1] == vp.shape[-1] == 16 and scale == 1.0 / math.sqrt(12)
    assert out.shape == (1, 2, 20, 12)
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, stock)
    torch.testing.assert_close(maps[0].double(), naive_probs(q, k)[..., :4].sum(1), atol=1e-5, rtol=0)
    # the kernel's own output, sliced back to the head dim: its attention, not SDPA's
    own, _ = sdpa.run_lse_kernel(sdpa.FLASH, q, k, v, None)
    assert own.shape == (1, 2, 20, 12) and not torch.equal(own, stock)
    torch.testing.assert_close(own.double(), naive_out(naive_probs(q, k), v), atol=1e-6, rtol=0)


def test_cudnn_bool_mask_and_lse_shape(fake_kernel):
    """cuDNN: a bool mask becomes -65504 where SDPA would (its cuDNN workaround), LSE [B, H, Nq, 1]."""
    aten = fake_kernel(sdpa.CUDNN)
    q, k, v = rand_qkv(b=2, h=2, nq=19, nk=23, d=8)
    keep = torch.rand(2, 1, 19, 23, generator=torch.Generator().manual_seed(2)) > 0.3
    keep[..., 0] = True
    out, maps = attend(q, k, v, 2, mask=keep, skip_reshape=True, skip_output_reshape=True,
                       captures=[Capture(slice(0, 2), torch.arange(23))])
    bias = aten.calls[0][4]
    assert bias.dtype == q.dtype and set(bias.unique().tolist()) == {0.0, -65504.0}
    add = torch.zeros(2, 1, 19, 23).masked_fill(~keep, -65504.0)
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=add)
    assert not torch.equal(aten.outputs[0], stock), "the stand-in gave SDPA's output: the test cannot tell"
    assert torch.equal(out, stock)
    # the maps' normaliser is the kernel's LSE, reshaped from [B, H, Nq, 1]
    torch.testing.assert_close(maps[0].double(), naive_probs(q, k, add).sum(1), atol=1e-5, rtol=0)
    assert sdpa.route_of(q, k, v, keep) == sdpa.SDPA_PLUS_LSE
    assert sdpa.attention_with_lse(q, k, v, keep).lse.shape == (2, 2, 19)


def test_fused_route_returns_the_kernels_own_output(fake_kernel, monkeypatch):
    """Where the kernel's output is SDPA's to the bit (checked once, on the first call), every call returns
    the kernel's own output and its LSE: SDPA runs for that check only."""
    aten = fake_kernel(sdpa.CUDNN)
    q, k, v = one_hot_qkv()
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(stock, v) and torch.equal(own_attention(q, k, v, None, q.shape[-1] ** -0.5)[0], v)
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    sdpa_calls = []

    def counted(*a, **kw):
        sdpa_calls.append(1)
        return real_sdpa(*a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    for i in range(3):
        fused = sdpa.attention_with_lse(q, k, v, None)
        assert fused.route == sdpa.FUSED and aten.count("cudnn") == i + 1
        assert fused.out is aten.outputs[-1], "the fused route returned another output than its kernel's"
        torch.testing.assert_close(fused.lse, exact_lse(q, k, None), atol=0, rtol=0)
    assert len(sdpa_calls) == 1


@pytest.mark.parametrize("choice", [sdpa.MATH, 4, 9], ids=["math", "overrideable", "unknown"])
def test_no_lse_kernel_uses_sdpa_and_chunked_route_logged_once(fake_kernel, choice, caplog):
    fake_kernel(choice)
    q, k, v = rand_qkv()
    mask = torch.randn(2, 1, 37, 41)
    cols = torch.tensor([1, 2, 40])
    with caplog.at_level("WARNING", logger="attention.sdpa"):
        for _ in range(2):
            out, maps = attend(q, k, v, 3, mask=mask, skip_reshape=True, skip_output_reshape=True,
                               captures=[Capture(slice(0, 2), cols)])
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(maps[0].double(), naive_probs(q, k, mask)[..., cols].sum(1), atol=1e-5, rtol=0)
    notes = [r for r in caplog.records if "gives no log-sum-exp" in r.getMessage()]
    assert len(notes) == 1 and sdpa.kernel_name(choice) in notes[0].getMessage()
    sdpa.reset_fallback_log()
    with caplog.at_level("WARNING", logger="attention.sdpa"):
        attend(q, k, v, 3, mask=mask, skip_reshape=True, skip_output_reshape=True, captures=[Capture(slice(0, 2), cols)])
    assert len([r for r in caplog.records if "gives no log-sum-exp" in r.getMessage()]) == 2


def test_output_that_differs_from_sdpa_is_never_returned(fake_kernel, monkeypatch, caplog):
    """A kernel whose LSE op's output is off by one ulp from SDPA's: the output comes from SDPA (torch.equal),
    the LSE from the op (run again on later calls for it alone); said once."""
    aten = fake_kernel(sdpa.CUDNN)
    real = aten._scaled_dot_product_cudnn_attention

    def off_by_one_ulp(*a):
        out, lse = real(*a)
        return (torch.nextafter(out, torch.full_like(out, math.inf)), lse)

    monkeypatch.setattr(aten, "_scaled_dot_product_cudnn_attention", off_by_one_ulp)
    q, k, v = one_hot_qkv()  # the kernel's own output is SDPA's but for the one ulp
    with caplog.at_level("WARNING", logger="attention.sdpa"):
        for i in range(2):
            out, maps = attend(q, k, v, 2, skip_reshape=True, skip_output_reshape=True,
                               captures=[Capture(slice(0, 2), torch.arange(24))])
            assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
            assert aten.count("cudnn") == i + 1  # a later call runs the kernel for its LSE alone
    assert sdpa.route_of(q, k, v, None) == sdpa.SDPA_PLUS_LSE
    assert len([r for r in caplog.records if "not bit-identical" in r.getMessage()]) == 1
    # logits near 600 here: exp(l - lse) in fp32 carries about 600 u
    torch.testing.assert_close(maps[0].double(), naive_probs(q, k).sum(1), atol=1e-4, rtol=0)


def test_kernel_whose_lse_failed_its_check_is_not_called_again(fake_kernel, monkeypatch):
    """A kernel whose log-sum-exp failed the first call's check: that call's output is SDPA's (not the
    kernel's), and later calls of the same shapes, through the output route or the normaliser route, never
    run the kernel again (its output would be dropped); the maps stay exact."""
    aten = fake_kernel(sdpa.CUDNN)
    real = aten._scaled_dot_product_cudnn_attention

    def log2_lse(*a):
        out, lse = real(*a)
        return out, lse / math.log(2)

    monkeypatch.setattr(aten, "_scaled_dot_product_cudnn_attention", log2_lse)
    q, k, v = rand_qkv()
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    first = sdpa.attention_with_lse(q, k, v, None)
    assert aten.count("cudnn") == 1 and first.route == sdpa.CHUNKED and first.lse is None
    assert not torch.equal(aten.outputs[0], stock), "the stand-in gave SDPA's output: the test cannot tell"
    assert torch.equal(first.out, stock)
    for _ in range(3):
        again = sdpa.attention_with_lse(q, k, v, None)
        assert aten.count("cudnn") == 1, "the kernel ran again for shapes whose LSE failed its check"
        assert again.route == sdpa.CHUNKED and again.lse is None and torch.equal(again.out, stock)
    # through the engine: the maps' normaliser route checks the kernel once on its own (for the captured
    # rows and queries), and nothing runs it after that, whichever route the output takes
    cols = torch.arange(41)

    def foreign(q_, k_, v_, m_):  # an output from elsewhere (another backend)
        return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)

    checked = None
    for compute in (None, None, foreign, foreign):
        out, maps = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, compute_out=compute,
                           captures=[Capture(slice(0, 2), cols)])
        assert torch.equal(out, stock)
        torch.testing.assert_close(maps[0].double(), naive_probs(q, k).sum(1), atol=1e-5, rtol=0)
        checked = checked or aten.count("cudnn")
        assert checked <= 2 and aten.count("cudnn") == checked, "a kernel whose LSE failed its check ran again"


def test_lse_of_another_meaning_is_caught(fake_kernel, monkeypatch, caplog):
    """An LSE in log2 units (or of the wrong rows) fails the first-call check: chunked route, maps exact."""
    aten = fake_kernel(sdpa.CUDNN)
    real = aten._scaled_dot_product_cudnn_attention
    monkeypatch.setattr(aten, "_scaled_dot_product_cudnn_attention",
                        lambda *a: (real(*a)[0], real(*a)[1] / math.log(2)))
    q, k, v = rand_qkv()
    with caplog.at_level("WARNING", logger="attention.sdpa"):
        out, maps = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True,
                           captures=[Capture(slice(0, 2), torch.arange(41))])
    assert sdpa.route_of(q, k, v, None) == sdpa.CHUNKED
    assert any("does not match a direct computation" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(maps[0].double(), naive_probs(q, k).sum(1), atol=1e-5, rtol=0)
    # later calls of the shape go straight to SDPA's output and the chunked maps
    out2, maps2 = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True,
                         captures=[Capture(slice(0, 2), torch.arange(41))])
    assert torch.equal(out2, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(maps2[0].double(), naive_probs(q, k).sum(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("error", [
    lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
    lambda: RuntimeError("attn_bias is not correctly aligned"),
], ids=["oom", "cuda-error", "kernel-refusal"])
@pytest.mark.parametrize("where", ["fused", "normaliser"])
def test_errors_propagate(fake_kernel, monkeypatch, error, where):
    """Out-of-memory, CUDA errors and kernel refusals reach the caller: nothing falls back silently."""
    aten = fake_kernel(sdpa.EFFICIENT)

    def raising(*a):
        raise error()

    monkeypatch.setattr(aten, "_scaled_dot_product_efficient_attention", raising)
    q, k, v = rand_qkv()
    compute = None if where == "fused" else (lambda q_, k_, v_, m_: torch.nn.functional.scaled_dot_product_attention(q_, k_, v_))
    with pytest.raises(type(error())) as info:
        attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True, compute_out=compute,
               captures=[Capture(slice(0, 1), torch.arange(3))])
    assert str(info.value) == str(error())


def test_foreign_output_gets_its_normaliser_from_one_fused_call(monkeypatch):
    """Where the output comes from another backend, one fused call over the captured rows and queries
    gives the normaliser (not the chunked q.k over all keys), and the maps stay exact."""
    sdpa.reset_routes()
    calls = []
    real = sdpa.KERNELS[("cpu", sdpa.FLASH)]

    def spy(q, k, v, m):
        calls.append(tuple(q.shape))
        return real(q, k, v, m)

    monkeypatch.setitem(sdpa.KERNELS, ("cpu", sdpa.FLASH), spy)
    q, k, v = rand_qkv(b=3, h=2, nq=30, nk=30, d=8)
    foreign = []

    def compute(q_, k_, v_, m_):
        foreign.append(1)
        return torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=m_)

    mask = torch.randn(3, 1, 30, 30)
    out, maps = attend(q, k, v, 2, mask=mask, skip_reshape=True, skip_output_reshape=True, compute_out=compute,
                       captures=[Capture(slice(0, 1), torch.arange(5)), Capture(slice(1, 2), torch.arange(3))],
                       query_range=(10, 30))
    assert foreign == [1] and calls == [(2, 2, 20, 8)]  # rows 0..1, queries 10..29
    p = naive_probs(q, k, mask)
    torch.testing.assert_close(maps[0].double(), p[0:1, :, 10:30, :5].sum(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(maps[1].double(), p[1:2, :, 10:30, :3].sum(1), atol=1e-5, rtol=0)


def test_one_mask_for_output_and_maps():
    """bf16 queries with weights: the kernel gets log w rounded to bf16, and the maps use that same
    rounded mask: against a reference with the rounded mask they are exact to fp32, against unrounded
    log w they are not."""
    q, k, v = rand_qkv(b=1, h=2, nq=40, nk=48, d=16, dtype=torch.bfloat16)
    w = torch.ones(1, 48)
    w[0, :8] = torch.tensor([1.3, 0.7, 2.9, 0.11, 1.7, 0.45, 3.3, 0.9])
    rw = Reweight.build(w, "bias")
    cols = torch.arange(8)
    _, maps = attend(q, k, v, 2, skip_reshape=True, skip_output_reshape=True, reweight=rw,
                     captures=[Capture(slice(0, 1), cols)])
    rounded = torch.log(w).to(torch.bfloat16)[:, None, None, :]
    p = naive_probs(q, k, rounded)
    lse = sdpa.attention_with_lse(q, k, v, rounded).lse
    bound = fp32_error_bound(q, k, rounded, p, kernel_lse_error(lse, q, k, rounded))[..., cols]
    assert_within(maps[0], p[..., cols].sum(1), bound)
    unrounded = naive_probs(q, k, torch.log(w)[:, None, None, :])[..., cols].sum(1)
    assert ((maps[0].double() - unrounded).abs() > bound).any()


def test_ieee_fp32_turns_tf32_off_inside_only():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with sdpa.ieee_fp32(torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_fully_masked_rows_give_zero_maps():
    q, k, v = rand_qkv(b=1, h=2, nq=6, nk=10, d=8)
    mask = torch.zeros(1, 1, 6, 10)
    mask[0, 0, 2] = -math.inf  # query row 2 attends to nothing
    for compute in (None, lambda q_, k_, v_, m_: torch.zeros_like(q_)):
        _, maps = attend(q, k, v, 2, mask=mask, skip_reshape=True, skip_output_reshape=True, compute_out=compute,
                         captures=[Capture(slice(0, 1), torch.arange(10))])
        assert torch.isfinite(maps[0]).all() and maps[0][0, 2].abs().max() == 0
        torch.testing.assert_close(maps[0][0, 3].sum().item(), 2.0, atol=1e-5, rtol=0)


def test_aggregator_mean_equals_mean_of_calls():
    grid = (6, 4)
    acc = MapAccumulator(grid, keep_steps=True, keep_blocks=True)
    g = torch.Generator().manual_seed(3)
    per_call = []
    for step in range(3):
        for block in range(2):
            heads = 2 + block
            probs = torch.rand(2, 24, 5, generator=g) * heads
            acc.add("pos", probs, heads, step=step, block=block)
            per_call.append(probs.transpose(1, 2).reshape(2, 5, 6, 4) / heads)
    torch.testing.assert_close(acc.mean("pos"), torch.stack(per_call).mean(0))
    torch.testing.assert_close(acc.step_means("pos")[1], torch.stack(per_call[2:4]).mean(0))
    torch.testing.assert_close(acc.block_means("pos")[0], torch.stack(per_call[0::2]).mean(0))


def test_aggregator_resizes_unet_levels():
    acc = MapAccumulator((8, 6))
    fine = torch.rand(1, 48, 3)
    coarse = torch.rand(1, 12, 3)  # 4x3 level
    acc.add("c", fine, 1)
    acc.add("c", coarse, 1)
    up = torch.nn.functional.interpolate(coarse.transpose(1, 2).reshape(1, 3, 4, 3), size=(8, 6), mode="bilinear")
    ref = (fine.transpose(1, 2).reshape(1, 3, 8, 6) + up) / 2
    torch.testing.assert_close(acc.mean("c"), ref)
    assert level_grid((9, 7), 20) == (5, 4)
    with pytest.raises(ValueError, match="do not form a level"):
        level_grid((8, 6), 13)


def test_aggregator_budget_holds():
    acc = MapAccumulator((16, 16), keep_steps=True, budget_bytes=5 * 256 * 4)  # room for 2.5 maps of 2 rows
    probs = torch.rand(2, 256, 1)
    acc.add("a", probs, 1, step=0)
    acc.add("a", probs, 1, step=0)
    with pytest.raises(BudgetExceeded, match="budget"):
        acc.add("a", probs, 1, step=1)
    assert acc.bytes_used() <= acc.budget_bytes
