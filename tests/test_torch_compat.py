"""The pack's calls of torch's private attention ops, against the torch that is installed.

- Schemas: the exact arguments the pack passes to each op (CPU flash, CUDA flash, efficient, cuDNN)
  are bound here against that op's schema as this torch registers it (a CPU build registers the CUDA
  ops too, without kernels). The binder is written out plainly below; the schema is read from torch
  and the arguments from the pack's per-kernel argument functions (``sdpa.KERNEL_OPS``). A torch that
  changed a schema fails here, on the CPU, rather than a user's sampling on a GPU.

``tools/torch_matrix.sh`` runs this file on each torch of the matrix (docs/compat.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import sdpa  # noqa: E402

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
