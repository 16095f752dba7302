"""The engine against a naive softmax written out plainly here."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_capture_low_precision(dtype):
    q, k, v = rand_qkv(nq=64, nk=80, d=32, dtype=dtype)
    cols = torch.arange(0, 16)
    _, maps = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True,
                     captures=[Capture(slice(0, 2), cols)], query_range=(16, 64))
    ref = naive_probs(q, k)[:, :, 16:64][..., cols].sum(1)
    torch.testing.assert_close(maps[0].double(), ref, atol=2e-2, rtol=0)


def test_capture_is_neutral():
    q, k, v = rand_qkv(nq=50, nk=50, d=16)
    stock = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out, _ = attend(q, k, v, 3, skip_reshape=True, skip_output_reshape=True,
                    captures=[Capture(slice(0, 2), torch.arange(8))])
    assert (out - stock).abs().max().item() <= 1e-6
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
