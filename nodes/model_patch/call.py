"""ComfyUI's attention call, read by parameter name.

``comfy.ldm.modules.attention.wrap_attn`` calls the override as
``override(func, *args, **kwargs)`` with the arguments its caller gave the backend, some
positional and some by keyword: the UNet passes ``(q, k, v, heads, attn_precision=...,
transformer_options=...)``, MMDiT ``(q, k, v, heads=...)``, Flux ``(q, k, v, heads,
skip_reshape=True, mask=..., transformer_options=...)``. Every backend of ComfyUI 0.8.0
and 0.3.64 has the parameters ``(q, k, v, heads, mask=None, attn_precision=None,
skip_reshape=False, skip_output_reshape=False, **kwargs)`` (sub-quadratic attention names
the first three query, key, value). `read_call` binds the call to those names whatever mix
of positions and keywords it uses, and `AttentionCall.rebuilt` hands the backend the same
call shape with new q/k/v/mask: an extra argument is passed on, never a reason to change
route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PARAMS = ("q", "k", "v", "heads", "mask", "attn_precision", "skip_reshape", "skip_output_reshape")
_ALIASES = {"query": "q", "key": "k", "value": "v"}


@dataclass
class AttentionCall:
    args: tuple
    kwargs: dict
    values: dict[str, Any]  # by canonical name
    positions: dict[str, int]  # canonical name -> index in args, for those passed by position

    @property
    def q(self):
        return self.values["q"]

    @property
    def k(self):
        return self.values["k"]

    @property
    def v(self):
        return self.values["v"]

    @property
    def heads(self) -> int:
        return self.values["heads"]

    @property
    def mask(self):
        return self.values.get("mask")

    @property
    def skip_reshape(self) -> bool:
        return bool(self.values.get("skip_reshape", False))

    @property
    def skip_output_reshape(self) -> bool:
        return bool(self.values.get("skip_output_reshape", False))

    def rebuilt(self, q, k, v, mask, transformer_options: dict | None = None) -> tuple[tuple, dict]:
        """(args, kwargs) of the same call with these q/k/v/mask, every other argument as it came."""
        args = list(self.args)
        kwargs = dict(self.kwargs)
        for name, value in (("q", q), ("k", k), ("v", v), ("mask", mask)):
            if name in self.positions:
                args[self.positions[name]] = value
            else:
                key = next((a for a, c in _ALIASES.items() if c == name and a in kwargs), name)
                if value is None and key not in kwargs:
                    continue
                kwargs[key] = value
        if transformer_options is not None:
            kwargs["transformer_options"] = transformer_options
        return tuple(args), kwargs


def read_call(args: tuple, kwargs: dict) -> AttentionCall | str:
    """The call bound to the backend's parameter names, or the reason it cannot be read."""
    if len(args) > len(PARAMS):
        return f"{len(args)} positional arguments, more than the {len(PARAMS)} parameters of ComfyUI's attention"
    values = {name: value for name, value in zip(PARAMS, args, strict=False)}
    positions = {name: i for i, name in enumerate(PARAMS[: len(args)])}
    for key, value in kwargs.items():
        name = _ALIASES.get(key, key)
        if name not in PARAMS:
            continue
        if name in values:
            return f"'{name}' given both by position and by keyword"
        values[name] = value
    missing = [n for n in ("q", "k", "v", "heads") if n not in values]
    if missing:
        return f"no {', '.join(missing)} in the call"
    if not isinstance(values["heads"], int) or isinstance(values["heads"], bool):
        return f"heads is {type(values['heads']).__name__}, not an int"
    return AttentionCall(tuple(args), dict(kwargs), values, positions)
