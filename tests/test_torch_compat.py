"""The pack's calls of torch's private attention ops, against the torch that is installed.

- Schemas: the exact arguments the pack passes to each op (CPU flash, CUDA flash, efficient, cuDNN)
  are bound here against that op's schema as this torch registers it (a CPU build registers the CUDA
  ops too, without kernels). The binder is written out plainly below; the schema is read from torch
  and the arguments from the pack's per-kernel argument functions (``sdpa.KERNEL_OPS``). A torch that
  changed a schema fails here, on the CPU, rather than a user's sampling on a GPU.
- First calls: where an op cannot be called as the pack calls it (another schema, an unknown argument,
  no kernel for the device), the first call of that kernel combination takes the exact chunked route,
  says so once with the torch version and the error, and never retries. Out-of-memory and CUDA errors
  reach the caller on the first call and on every later one.

``tools/torch_matrix.sh`` runs this file on each torch of the matrix (docs/compat.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import sdpa  # noqa: E402
from attention.engine import Capture, attend, capture_probs  # noqa: E402

F = torch.nn.functional

# -- binding arguments to a schema, as the dispatcher does --------------------------------------------


def _type_name(t) -> str:
    return str(t).replace(" ", "")


def value_fits(type_name: str, value: object) -> bool:
    """Whether a Python value is accepted for a schema type: Tensor, optional types, float, bool, int."""
    if type_name.startswith("Optional[") and type_name.endswith("]"):
        return value is None or value_fits(type_name[len("Optional["):-1], value)
    if type_name.endswith("?"):
        return value is None or value_fits(type_name[:-1], value)
    if type_name == "Tensor":
        return isinstance(value, torch.Tensor)
    if type_name == "float":
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name in ("int", "SymInt"):
        return isinstance(value, int) and not isinstance(value, bool)
    raise AssertionError(f"the binder knows no schema type {type_name!r}: teach value_fits about it")


def bind(schema, args: tuple, kwargs: dict) -> dict[str, object]:
    """Positional arguments fill the schema's non-keyword-only parameters in order, keywords go by name,
    and a parameter left out takes its default. Raises AssertionError naming what does not fit."""
    params = list(schema.arguments)
    positional = [p for p in params if not p.kwarg_only]
    if len(args) > len(positional):
        raise AssertionError(f"{len(args)} positional arguments, the schema takes {len(positional)}")
    bound = {p.name: a for p, a in zip(positional, args, strict=False)}
    names = {p.name for p in params}
    for name, value in kwargs.items():
        if name not in names:
            raise AssertionError(f"keyword {name!r} is not in the schema")
        if name in bound:
            raise AssertionError(f"{name!r} is given by position and by keyword")
        bound[name] = value
    for p in params:
        if p.name in bound:
            if not value_fits(_type_name(p.type), bound[p.name]):
                raise AssertionError(
                    f"{p.name!r} is {_type_name(p.type)} in the schema; the pack passes {type(bound[p.name]).__name__}"
                )
        elif p.has_default_value():
            bound[p.name] = p.default_value
        else:
            raise AssertionError(f"{p.name!r} has no default and the pack does not pass it")
    return bound


def schema_of(op_name: str):
    packet = getattr(torch.ops.aten, op_name, None)
    assert packet is not None, f"torch {torch.__version__} registers no aten::{op_name}"
    return packet.default._schema


def qkv(b=2, h=3, nq=37, nk=41, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(b, h, n, d, generator=g) * 1.5).to(dtype) for n in (nq, nk, nk))


def mask_cases(kernel: tuple[str, int]) -> dict[str, torch.Tensor | None]:
    """The masks the pack hands each kernel (flash: none, as SDPA never picks it with one)."""
    if kernel[1] == sdpa.FLASH and kernel[0] == "cuda":
        return {"none": None}
    bias = torch.randn(2, 1, 37, 41)
    return {"none": None, "additive": sdpa.kernel_mask(bias, kernel[1]), "key-bias": torch.zeros(2, 1, 1, 41)}


CASES = [(kernel, m) for kernel in sdpa.KERNEL_OPS for m in mask_cases(kernel)]


def case_id(case) -> str:
    (device, choice), m = case
    return f"{device}-{sdpa.kernel_name(choice)}-{m}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("d", [16, 12], ids=["d16", "d12"])
def test_pack_arguments_bind_to_the_registered_schema(case, d):
    """Every argument the pack passes fits this torch's schema of the op: count, names, keyword-only,
    types; the rest have defaults. The op returns at least the output and the LSE as Tensors."""
    kernel, mask_name = case
    op_name, make_args = sdpa.KERNEL_OPS[kernel]
    q, k, v = qkv(d=d)
    args, kwargs = make_args(q, k, v, mask_cases(kernel)[mask_name])
    schema = schema_of(op_name)
    try:
        bind(schema, args, kwargs)
    except AssertionError as e:
        raise AssertionError(
            f"torch {torch.__version__}: the pack's call of aten::{op_name} does not fit its schema: {e}\n"
            f"schema: {schema}\npositional: {[type(a).__name__ for a in args]}, keywords: {sorted(kwargs)}"
        ) from None
    returns = [_type_name(r.type) for r in schema.returns]
    assert returns[:2] == ["Tensor", "Tensor"], f"aten::{op_name} returns {returns}: the pack reads (out, lse)"


class Recorder:
    """Stands in for ``sdpa._aten``: records which op each kernel calls with which arguments."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name):
        recorder = self

        class Op:
            def __call__(self, *args, **kwargs):
                recorder.calls.append((name, args, kwargs))
                q = args[0]
                return (torch.zeros_like(q), torch.zeros(q.shape[:3]))

            @property
            def default(self):
                return self

        return Op()


def same_argument(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.stride() == b.stride() and a.dtype == b.dtype and torch.equal(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_kernels_call_the_bound_op_with_those_arguments(case, monkeypatch):
    """What the schema test binds is what each kernel passes: the op named in ``KERNEL_OPS``, with the
    arguments its function makes, nothing added."""
    kernel, mask_name = case
    op_name, make_args = sdpa.KERNEL_OPS[kernel]
    rec = Recorder()
    monkeypatch.setattr(sdpa, "_aten", rec)
    q, k, v = qkv(d=12)
    mask = mask_cases(kernel)[mask_name]
    sdpa.KERNELS[kernel](q, k, v, mask)
    args, kwargs = make_args(q, k, v, mask)
    (name, got_args, got_kwargs), = rec.calls
    assert name == op_name
    assert len(got_args) == len(args) and all(same_argument(a, b) for a, b in zip(got_args, args, strict=True))
    assert got_kwargs.keys() == kwargs.keys() and all(same_argument(got_kwargs[n], kwargs[n]) for n in kwargs)


def test_cpu_flash_runs_with_the_bound_arguments():
    """On the CPU the op also runs: its output is SDPA's and its LSE is the log-sum-exp of the logits."""
    q, k, v = qkv()
    bias = torch.randn(2, 1, 37, 41)
    op_name, make_args = sdpa.KERNEL_OPS[("cpu", sdpa.FLASH)]
    args, kwargs = make_args(q, k, v, bias)
    out, lse = getattr(torch.ops.aten, op_name)(*args, **kwargs)[:2]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    ref = torch.logsumexp((q.double() @ k.double().transpose(-1, -2)) * 16 ** -0.5 + bias.double(), dim=-1)
    torch.testing.assert_close(lse.double(), ref, atol=1e-4, rtol=0)


# -- the first call of a kernel combination -----------------------------------------------------------

_LIB = torch.library.Library("enfoque_test", "DEF")  # kept alive: the op lives as long as the library
_LIB.define("efficient(Tensor query, Tensor key, Tensor value, *, Tensor? attn_bias=None, "
            "bool compute_log_sumexp=False) -> (Tensor, Tensor)")


def _other_schema_impl(q, k, v, attn_bias=None, compute_log_sumexp=False):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
    return out, torch.zeros(q.shape[:3])


_LIB.impl("efficient", _other_schema_impl, "CPU")


def other_schema(*args, **kwargs):
    """An efficient-attention op as a torch might register it with another schema (keyword-only mask and
    flag): the pack's positional call fails to bind, with torch's own error."""
    return torch.ops.enfoque_test.efficient(*args, **kwargs)


def unknown_keyword(*args, **kwargs):
    """The real op, given a keyword argument its schema lacks (torch's own error)."""
    return torch.ops.aten._scaled_dot_product_efficient_attention(*args, bogus_kw=1, **kwargs)


def no_device_kernel(*args, **kwargs):
    """The real CUDA op on CPU tensors: "Could not run ... with arguments from the 'CPU' backend"."""
    return torch.ops.aten._scaled_dot_product_efficient_attention(*args, **kwargs)


def working(q, k, v, bias, compute_log_sumexp):
    """The efficient op as a GPU runs it: SDPA's output, the exact LSE padded to 32 rows."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias.double()
    lse = torch.logsumexp(logits, dim=-1).float()
    return out, F.pad(lse, (0, -q.shape[2] % 32), value=float("nan")), None, None


class StandIn:
    """``sdpa._aten`` with the efficient op replaced by ``fn`` (which can be swapped); counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __getattr__(self, name):
        return getattr(torch.ops.aten, name)

    def _scaled_dot_product_efficient_attention(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def efficient_op(monkeypatch):
    """``efficient_op(fn)``: SDPA "picks" the efficient kernel on the CPU, whose op is ``fn``."""
    sdpa.reset_routes()
    sdpa.reset_fallback_log()
    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a, **kw: sdpa.EFFICIENT)
    monkeypatch.setitem(sdpa.KERNELS, ("cpu", sdpa.EFFICIENT), sdpa._cuda_efficient)

    def install(fn):
        standin = StandIn(fn)
        monkeypatch.setattr(sdpa, "_aten", standin)
        return standin

    yield install
    sdpa.reset_routes()
    sdpa.reset_fallback_log()


def sdpa_out(q, k, v, m):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m)


def run(q, k, v, mask, cols, foreign: bool):
    """One attention call with a capture; ``foreign``: the output comes from elsewhere (``lse_only``)."""
    return attend(q, k, v, 3, mask=mask, skip_reshape=True, skip_output_reshape=True,
                  compute_out=sdpa_out if foreign else None, captures=[Capture(slice(0, 2), cols)])


CALL_ERRORS = {"other-schema": (other_schema, "takes 3 positional argument"),
               "unknown-keyword": (unknown_keyword, "bogus_kw"),
               "no-device-kernel": (no_device_kernel, "Could not run")}


@pytest.mark.parametrize("foreign", [False, True], ids=["fused", "normaliser"])
@pytest.mark.parametrize("error", list(CALL_ERRORS))
def test_call_error_on_first_call_takes_the_chunked_route(efficient_op, error, foreign, caplog):
    """An op that cannot be called as the pack calls it: the output is SDPA's and the maps are the
    chunked route's (torch.equal to both), a notice names the torch version and the error once, and
    later calls of the combination never call the op again."""
    fn, text = CALL_ERRORS[error]
    standin = efficient_op(fn)
    q, k, v = qkv()
    mask = torch.randn(2, 1, 37, 41)
    cols = torch.tensor([0, 3, 40])
    tried = []
    with caplog.at_level("WARNING", logger="attention.sdpa"):
        for _ in range(3):
            out, maps = run(q, k, v, mask, cols, foreign)
            tried.append(standin.calls)
            assert torch.equal(out, sdpa_out(q, k, v, mask))
            chunked = capture_probs(q, k, mask, None, Capture(slice(0, 2), cols), (0, 37))
            assert torch.equal(maps[0], chunked)
    # the first run tries the op once per combination: the output's (fused) and the normaliser's
    assert tried == [1 if foreign else 2] * 3, f"ops called after each run: {tried}; a failed combination was retried"
    if not foreign:
        assert sdpa.route_of(q, k, v, mask) == sdpa.CHUNKED
    notes = [r.getMessage() for r in caplog.records if "cannot be called" in r.getMessage()]
    assert len(notes) == 1, notes
    assert torch.__version__ in notes[0] and text in notes[0]


def out_of_memory():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


RUN_ERRORS = {
    "oom": out_of_memory,
    # by its class, whatever the message says
    "oom-any-message": lambda: torch.OutOfMemoryError("Tried to allocate 2.00 GiB for argument 'attn_bias'"),
    "cuda-error": lambda: RuntimeError("CUDA error: invalid argument\nCUDA kernel errors might be "
                                       "asynchronously reported at some other API call"),
    "cudnn-error": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear "
                                        "if you passed in a non-contiguous input."),
}
if hasattr(torch, "AcceleratorError"):
    RUN_ERRORS["accelerator"] = lambda: torch.AcceleratorError("an illegal memory access was encountered")


def settle(q, k, v, foreign: bool):
    """One kernel call at the sdpa level: the output's (``attention_with_lse``) or the normaliser's
    (``lse_only``), so that an error is seen where it happened (``attend`` tries the normaliser after
    a failed output call)."""
    return sdpa.lse_only(q, k, v, None) if foreign else sdpa.attention_with_lse(q, k, v, None)


@pytest.mark.parametrize("foreign", [False, True], ids=["fused", "normaliser"])
@pytest.mark.parametrize("error", list(RUN_ERRORS))
def test_run_errors_reach_the_caller_on_first_and_later_calls(efficient_op, error, foreign):
    """Out-of-memory and CUDA errors are not about the call: they propagate on the first call (which
    settles no route) and again on a later call of a combination that worked."""
    make = RUN_ERRORS[error]

    def raising(*args, **kwargs):
        raise make()

    standin = efficient_op(raising)
    q, k, v = qkv()
    cols = torch.tensor([1, 2])
    first_calls = [lambda: run(q, k, v, None, cols, foreign), lambda: settle(q, k, v, foreign)]
    for call in first_calls * 2:
        with pytest.raises(type(make())) as info:
            call()
        assert str(info.value) == str(make())
    assert standin.calls == 4, "a first call that met an out-of-memory or CUDA error settled a route"
    assert sdpa.route_of(q, k, v, None) is None

    standin.fn = working
    assert settle(q, k, v, foreign) is not None
    out, maps = run(q, k, v, None, cols, foreign)
    assert torch.equal(out, sdpa_out(q, k, v, None))
    if not foreign:
        assert sdpa.route_of(q, k, v, None) == sdpa.FUSED
    standin.fn = raising
    before = standin.calls
    with pytest.raises(type(make())):
        settle(q, k, v, foreign)
    assert standin.calls == before + 1
    with pytest.raises(type(make())):
        run(q, k, v, None, cols, foreign)


@pytest.mark.parametrize("make, expected", [
    (lambda: TypeError("_scaled_dot_product_efficient_attention() got an unexpected keyword argument"), True),
    (lambda: RuntimeError("Expected a value of type 'bool' for argument 'compute_log_sumexp'"), True),
    (lambda: RuntimeError("Overloaded torch operator invoked from Python failed to match any schema"), True),
    (lambda: NotImplementedError("Could not run 'aten::_efficient_attention_forward' with arguments from "
                                 "the 'CUDA' backend"), True),
    (out_of_memory, False),
    (lambda: torch.OutOfMemoryError("Tried to allocate 2.00 GiB for argument 'attn_bias'"), False),
    (lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), False),
    (lambda: RuntimeError("CUDA error: invalid argument"), False),
    (lambda: RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"), False),
    (lambda: RuntimeError("attn_bias is not correctly aligned"), False),
    (lambda: ValueError("something else"), False),
], ids=["type-error", "expected-type", "no-schema", "no-kernel", "oom", "oom-class", "oom-message", "cuda-error",
        "cudnn-error", "kernel-refusal", "other"])
def test_which_errors_are_about_the_call(make, expected):
    assert sdpa.is_call_error(make()) is expected
