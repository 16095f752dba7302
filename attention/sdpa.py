"""The kernel ``F.scaled_dot_product_attention`` would run, called through its
log-sum-exp-returning op. Pure torch.

SDPA picks one of several kernels for given q, k, v, mask and dtype (flash,
memory-efficient, cuDNN, math; on the CPU a flash kernel or math), in an order
that depends on the card, the cuDNN version and the ``sdpa_kernel`` context in
force. ``torch._fused_sdp_choice`` is that very choice. For each kernel that can
return the log-sum-exp (LSE) of every query row we call its op exactly as
SDPA's own dispatcher does (aten ``scaled_dot_product_attention`` in
``native/transformers/attention.cpp``):

=========  =====================================================================
kernel     the call, as SDPA makes it
=========  =====================================================================
cpu flash  ``_scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=m)``,
           LSE ``[B, H, Nq]`` in the accumulation type (fp32 for half types)
flash      head dim padded to a multiple of 8, scale from the unpadded dim,
           ``_scaled_dot_product_flash_attention``; no mask (SDPA never picks it
           with one); output sliced back, LSE ``[B, H, Nq]`` fp32
efficient  mask padded so its strides are multiples of 8 (``preprocess_mask``)
           and expanded to ``[B, H, Nq, Nk]``;
           ``_scaled_dot_product_efficient_attention(..., compute_log_sumexp)``;
           LSE ``[B, H, Nq]`` padded to a multiple of 32 (trimmed here)
cudnn      bool masks become ``-65504`` (SDPA's cuDNN workaround), others as
           given; ``_scaled_dot_product_cudnn_attention(..., compute_log_sumexp)``;
           LSE ``[B, H, Nq, 1]`` fp32 (reshaped here)
=========  =====================================================================

The only difference from SDPA's own call is ``compute_log_sumexp=True`` where
the op has that switch. Whether that leaves the output bit-identical is not
something to assume for every kernel, card and library version, so the first
call for each combination of kernel, dtype, shapes and strides is checked: the
op's output against ``F.scaled_dot_product_attention`` with ``torch.equal``,
and its LSE against a direct fp32 log-sum-exp of three query rows. What was
found is kept (``route``) and decides every later call with that combination:

- ``fused``: one call gives the stock output and the LSE;
- ``sdpa+lse``: the op's output differs from stock in some bits, so the output
  comes from SDPA and the LSE from a second call of the op;
- ``chunked``: no usable LSE (math kernel, an unknown kernel or device, or an
  LSE that failed the check): the output comes from SDPA and the caller
  computes the normaliser itself (``engine.capture_probs``' exact chunked route).

Every route other than ``fused`` is logged once (per reason, until
``reset_fallback_log``).

These ops are private: their schemas, defaults and kernels have moved between
torch releases. Each op's arguments come from one function per kernel
(``KERNEL_OPS``), which ``tests/test_torch_compat.py`` binds against the schema
the installed torch registers (CPU builds register the CUDA ops too). The first
call of a combination also catches an error about the call itself (a schema or
argument mismatch, no kernel for the device; ``is_call_error``): that
combination then takes the chunked route, said once with the torch version and
the error, where stock SDPA would still have worked. Nothing else is caught:
out-of-memory and CUDA errors reach the caller as they are, on the first call
and every later one.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .oncelog import OnceLog

log = logging.getLogger(__name__)

# torch.nn.attention.SDPBackend values (the ints torch._fused_sdp_choice returns)
MATH, FLASH, EFFICIENT, CUDNN = 0, 1, 2, 3
KERNEL_NAMES = {-1: "error", MATH: "math", FLASH: "flash", EFFICIENT: "efficient", CUDNN: "cudnn", 4: "overrideable"}
LSE_KERNELS = {"cpu": (FLASH,), "cuda": (FLASH, EFFICIENT, CUDNN)}

MEM_EFF_ALIGNMENT = 8  # aten preprocess_mask: mem_eff_alignment
CUDNN_BOOL_MASK_FILL = -65504.0  # aten convert_boolean_attn_mask_cudnn
LSE_CHECK_ATOL, LSE_CHECK_RTOL = 1e-3, 1e-4  # a sanity check of meaning (ln, scale, layout), not of precision

FUSED, SDPA_PLUS_LSE, CHUNKED = "fused", "sdpa+lse", "chunked"
TESTED_TORCH = "2.5 to 2.15"  # the matrix of tools/torch_matrix.sh (docs/compat.md)
_ROUTES: OrderedDict[Hashable, str] = OrderedDict()
_MAX_ROUTES = 1024


FALLBACKS = OnceLog(log)  # the engine's fallbacks, once per reason until a sampling run resets them


def reset_fallback_log() -> None:
    """Let every fallback be logged again (the hooks call this at the start of a sampling run)."""
    FALLBACKS.reset()


def reset_routes() -> None:
    """Forget the checked routes (tests; a changed ``sdpa_kernel`` context needs no reset: it is in the key)."""
    _ROUTES.clear()


# -- the choice and the masks ---------------------------------------------------------------


def sdp_choice(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> int | None:
    """The kernel SDPA would run for these inputs (an ``SDPBackend`` int), or None where torch cannot say."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None or q.device.type not in LSE_KERNELS:
        return None
    return int(choose(q, k, v, attn_mask, 0.0, False))


def kernel_name(choice: int | None) -> str:
    return "none" if choice is None else KERNEL_NAMES.get(choice, f"unknown({choice})")


def additive_mask(attn_mask: Tensor | None, dtype: torch.dtype, choice: int | None = None) -> Tensor | None:
    """A bool mask as SDPA turns it into an additive one for ``choice`` (``-65504`` for cuDNN, else
    ``-inf``, in the query dtype); float masks are returned as they are (the same tensor)."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    fill = CUDNN_BOOL_MASK_FILL if choice == CUDNN else -math.inf
    zero = torch.zeros((), dtype=dtype, device=attn_mask.device)
    return torch.where(attn_mask, zero, torch.full((), fill, dtype=dtype, device=attn_mask.device))


def _aligned(t: Tensor, alignment: int) -> bool:
    return all(t.stride(i) % alignment == 0 for i in range(t.ndim - 1)) and t.stride(-1) == 1


def align_mask_like_sdpa(mask: Tensor, alignment: int = MEM_EFF_ALIGNMENT) -> Tensor:
    """aten ``preprocess_mask`` before the memory-efficient kernel, without the final expand: a mask
    whose strides are not multiples of ``alignment`` is copied into a buffer padded by
    ``alignment - n % alignment`` columns and sliced back (same values, aligned strides)."""
    if _aligned(mask, alignment):
        return mask
    n = mask.shape[-1]
    padded = torch.nn.functional.pad(mask, (0, alignment - n % alignment))
    return padded[..., :n]


# -- the LSE-returning ops, called as SDPA calls them --------------------------------------------

_aten = torch.ops.aten  # one name for the ops, so that tests can stand in for CUDA ones on the CPU

OpArgs = tuple[tuple[object, ...], dict[str, object]]
ArgsFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], OpArgs]


def cpu_flash_args(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> OpArgs:
    """``_scaled_dot_product_flash_attention_for_cpu``'s arguments as SDPA passes them."""
    return (q, k, v), {"attn_mask": mask}


def cuda_flash_args(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> OpArgs:
    """``_scaled_dot_product_flash_attention``'s arguments: head dim padded to a multiple of 8, the scale
    from the unpadded dim (``sdp::calculate_scale``); no mask (SDPA never picks flash with one)."""
    d = q.shape[-1]
    pad = (8 - d % 8) % 8
    if pad:
        q, k, v = (torch.nn.functional.pad(t, (0, pad)) for t in (q, k, v))
    return (q, k, v, 0.0, False, False), {"scale": 1.0 / math.sqrt(d)}


def cuda_efficient_args(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> OpArgs:
    """``_scaled_dot_product_efficient_attention``'s arguments: the (aligned) mask expanded to
    ``[B, H, Nq, Nk]``, and ``compute_log_sumexp``."""
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return (q, k, v, mask, True), {}


def cuda_cudnn_args(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> OpArgs:
    """``_scaled_dot_product_cudnn_attention``'s arguments: the additive mask, and ``compute_log_sumexp``."""
    return (q, k, v, mask, True), {}


# kernel -> (the aten op it calls, the function that makes that op's arguments): the kernel calls
# below and the schema test both use these.
KERNEL_OPS: dict[tuple[str, int], tuple[str, ArgsFn]] = {
    ("cpu", FLASH): ("_scaled_dot_product_flash_attention_for_cpu", cpu_flash_args),
    ("cuda", FLASH): ("_scaled_dot_product_flash_attention", cuda_flash_args),
    ("cuda", EFFICIENT): ("_scaled_dot_product_efficient_attention", cuda_efficient_args),
    ("cuda", CUDNN): ("_scaled_dot_product_cudnn_attention", cuda_cudnn_args),
}


def _cpu_flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    args, kwargs = cpu_flash_args(q, k, v, mask)
    out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(*args, **kwargs)[:2]
    return out, lse


def _cuda_flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    args, kwargs = cuda_flash_args(q, k, v, mask)
    res = _aten._scaled_dot_product_flash_attention.default(*args, **kwargs)
    d = q.shape[-1]
    out = res[0] if res[0].shape[-1] == d else res[0][..., :d]
    return out, res[1]


def _cuda_efficient(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    args, kwargs = cuda_efficient_args(q, k, v, mask)
    res = _aten._scaled_dot_product_efficient_attention(*args, **kwargs)
    return res[0], res[1]


def _cuda_cudnn(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    args, kwargs = cuda_cudnn_args(q, k, v, mask)
    res = _aten._scaled_dot_product_cudnn_attention(*args, **kwargs)
    return res[0], res[1]


KERNELS = {
    ("cpu", FLASH): _cpu_flash,
    ("cuda", FLASH): _cuda_flash,
    ("cuda", EFFICIENT): _cuda_efficient,
    ("cuda", CUDNN): _cuda_cudnn,
}


def kernel_mask(mask: Tensor | None, choice: int) -> Tensor | None:
    """The additive mask in the memory layout the kernel is given (efficient: aligned as SDPA aligns it)."""
    if mask is not None and choice == EFFICIENT:
        return align_mask_like_sdpa(mask)
    return mask


def run_lse_kernel(choice: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Output ``[B, H, Nq, Dv]`` and LSE ``[B, H, Nq]`` from ``choice``'s op; ``mask`` additive, already in
    kernel layout (``kernel_mask``)."""
    out, lse = KERNELS[(q.device.type, choice)](q, k, v, mask)
    b, h, n = q.shape[:3]
    if lse.ndim == 4:  # cuDNN: [B, H, Nq, 1]
        lse = lse.reshape(b, h, -1)
    return out, lse[..., :n]


# -- checking what a kernel gives ------------------------------------------------------------


@contextmanager
def ieee_fp32(device: torch.device):
    """fp32 matrix products in full fp32 on CUDA, even where TF32 was allowed globally."""
    if device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32; fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def lse_agrees(q: Tensor, k: Tensor, mask: Tensor | None, lse: Tensor) -> bool:
    """The kernel's LSE is the natural-log log-sum-exp of ``q.k*scale + mask`` for the first, middle and
    last query rows, within a loose tolerance: it checks meaning (log base, scale, row layout,
    padding), the tests check precision. Rows without any attendable key are not compared."""
    n = q.shape[2]
    idx = torch.tensor(sorted({0, n // 2, n - 1}), device=q.device)
    acc = accumulation_dtype(q.dtype)
    with ieee_fp32(q.device):
        logits = torch.matmul(q.index_select(2, idx).to(acc), k.to(acc).transpose(-1, -2))
    logits.mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        logits = logits + (mask.index_select(2, idx) if mask.shape[2] > 1 else mask).to(acc)
    ref = torch.logsumexp(logits, dim=-1)
    got = lse.index_select(2, idx).to(acc).expand_as(ref)
    live = torch.isfinite(ref)
    return bool(torch.allclose(got[live], ref[live], atol=LSE_CHECK_ATOL, rtol=LSE_CHECK_RTOL))


def _key(choice: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Hashable:
    m = None if mask is None else (tuple(mask.shape), tuple(mask.stride()), mask.dtype)
    return (q.device, choice, q.dtype, tuple(q.shape), tuple(k.shape), tuple(v.shape),
            tuple(q.stride()), tuple(k.stride()), tuple(v.stride()), m)


def _remember(key: Hashable, route: str) -> None:
    _ROUTES[key] = route
    while len(_ROUTES) > _MAX_ROUTES:
        _ROUTES.popitem(last=False)


def _shapes(q: Tensor, k: Tensor) -> str:
    return f"{q.dtype} q{tuple(q.shape)} k{tuple(k.shape)}"


def _note_lse_mismatch(key: Hashable, name: str, q: Tensor, k: Tensor) -> None:
    FALLBACKS.once(
        ("lse-check", key),
        "Enfoque: the %s kernel's log-sum-exp does not match a direct computation (%s); the maps take "
        "the exact chunked route for these shapes.",
        name, _shapes(q, k),
    )


# An error of a first call whose message says the op cannot be called as we call it here: another
# schema, a missing or unknown argument, no overload or no kernel for the device.
_CALL_ERROR_WORDS = ("expected a value of type", "argument", "schema", "overload", "could not run")
# What running a kernel meets (stock SDPA would meet it too): never caught, whatever else the message says.
_RUN_ERROR_WORDS = ("out of memory", "cuda error", "cudnn error", "cublas", "cudnn_status", "hip error",
                    "device-side assert")


def is_call_error(e: BaseException) -> bool:
    """Whether ``e`` says the op cannot be called as we call it on this torch (a schema or argument
    mismatch, no kernel for the device), where stock SDPA still works; never an out-of-memory or a
    CUDA runtime error."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    accelerator = getattr(torch, "AcceleratorError", None)  # newer torch only (2.9 has it, 2.7 not)
    if isinstance(e, oom) or (accelerator is not None and isinstance(e, accelerator)):
        return False
    msg = str(e).lower()
    if any(w in msg for w in _RUN_ERROR_WORDS):
        return False
    if isinstance(e, (TypeError, NotImplementedError)):
        return True
    return isinstance(e, RuntimeError) and any(w in msg for w in _CALL_ERROR_WORDS)


def _first_call(
    key: Hashable, choice: int, q: Tensor, k: Tensor, v: Tensor, kmask: Tensor | None
) -> tuple[Tensor, Tensor] | None:
    """The first (checked) call of a combination: the op's output and LSE, or None where the op cannot be
    called as we call it on this torch (``is_call_error``); that combination is then remembered as
    chunked and the reason said once. Every other error reaches the caller."""
    try:
        return run_lse_kernel(choice, q, k, v, kmask)
    except (TypeError, RuntimeError) as e:
        if not is_call_error(e):
            raise
        _remember(key, CHUNKED)
        FALLBACKS.once(
            ("call-error", q.device.type, choice, type(e).__name__),
            "Enfoque: on torch %s the %s %s kernel's log-sum-exp op cannot be called as Enfoque calls it "
            "(%s: %s); the output comes from SDPA and the maps take the exact chunked route (slower, same "
            "result). Enfoque is tested on torch %s (docs/compat.md).",
            torch.__version__, q.device.type, kernel_name(choice), type(e).__name__, " ".join(str(e).split())[:600],
            TESTED_TORCH,
        )
        return None


@dataclass(frozen=True)
class Fused:
    """What one attention call gives the capture: the stock output, the LSE (None: compute the
    normaliser another way), the additive mask the kernel used (the same tensor serves the captured
    logits), and how it was obtained."""

    out: Tensor
    lse: Tensor | None
    mask: Tensor | None
    route: str
    kernel: str


def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Fused:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask)`` (torch.equal to it) plus the LSE of every
    query row where the kernel SDPA picks can give it. ``attn_mask`` is what SDPA would be given
    (bool or additive, 4-D)."""
    choice = sdp_choice(q, k, v, attn_mask)
    name = kernel_name(choice)
    mask = additive_mask(attn_mask, q.dtype, choice)
    if choice is None or (q.device.type, choice) not in KERNELS:
        FALLBACKS.once(
            ("no-lse", q.device.type, name),
            "Enfoque: SDPA runs the %s kernel on %s here, which gives no log-sum-exp; the output comes from "
            "SDPA itself and the maps take the exact chunked route (slower, same result).",
            name, q.device.type,
        )
        return Fused(sdpa(q, k, v, attn_mask), None, mask, CHUNKED, name)
    kmask = kernel_mask(mask, choice)
    key = _key(choice, q, k, v, attn_mask)
    route = _ROUTES.get(key)
    if route == CHUNKED:  # this shape's op failed its first call or check: no kernel call to throw away
        return Fused(sdpa(q, k, v, attn_mask), None, kmask, CHUNKED, name)
    if route is None:
        first = _first_call(key, choice, q, k, v, kmask)
        if first is None:
            return Fused(sdpa(q, k, v, attn_mask), None, kmask, CHUNKED, name)
        out, lse = first
        stock = sdpa(q, k, v, attn_mask)
        same = torch.equal(out, stock)
        sane = lse_agrees(q, k, kmask, lse)
        route = FUSED if same and sane else SDPA_PLUS_LSE if sane else CHUNKED
        _remember(key, route)
        if not sane:
            _note_lse_mismatch(key, name, q, k)
        elif not same:
            FALLBACKS.once(
                ("out-differs", key),
                "Enfoque: the %s kernel's log-sum-exp op gives an output that is not bit-identical to SDPA's "
                "(%s); the output comes from SDPA and the log-sum-exp from a second call.",
                name, _shapes(q, k),
            )
        if route != FUSED:
            out = stock
    else:
        out, lse = run_lse_kernel(choice, q, k, v, kmask)
        if route == SDPA_PLUS_LSE:
            out = sdpa(q, k, v, attn_mask)
    return Fused(out, lse if route != CHUNKED else None, kmask, route, name)


def lse_only(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor | None:
    """The LSE of every query row from the fused kernel SDPA picks for these inputs, or None where it
    has none (or it failed its first call or check). For the exact normaliser where the output came from elsewhere
    (another attention backend, another pack's override): one fused call instead of the chunked
    q.k over all keys. ``mask``: additive, 4-D."""
    choice = sdp_choice(q, k, v, mask)
    if choice is None or (q.device.type, choice) not in KERNELS:
        return None
    kmask = kernel_mask(mask, choice)
    key = ("lse-only",) + _key(choice, q, k, v, mask)
    route = _ROUTES.get(key)
    if route == CHUNKED:
        return None
    if route is not None:
        return run_lse_kernel(choice, q, k, v, kmask)[1]
    first = _first_call(key, choice, q, k, v, kmask)
    if first is None:
        return None
    lse = first[1]
    sane = lse_agrees(q, k, kmask, lse)
    _remember(key, SDPA_PLUS_LSE if sane else CHUNKED)
    if not sane:
        _note_lse_mismatch(key, kernel_name(choice), q, k)
        return None
    return lse


def route_of(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> str | None:
    """The route ``attention_with_lse`` settled on for these inputs (None: not called yet, or no LSE kernel)."""
    choice = sdp_choice(q, k, v, attn_mask)
    if choice is None:
        return None
    return _ROUTES.get(_key(choice, q, k, v, attn_mask))
