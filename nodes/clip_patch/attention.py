"""The object patch for a text encoder's self-attention ``forward``: it wraps the attention function
ComfyUI passes down, so the encode's weights act on the keys (``bias``, causal mask kept) and its
token x token maps are captured, through the same engine as the diffusion model's."""

from __future__ import annotations

import inspect

import torch

from ...attention.engine import Capture, attend
from ..common.clones import SharedByClones
from ..common.sdpa import fused_route, is_stock_sdpa, one_sdpa_call
from .probe import ClipProbe, EncodeState


class AttentionForward(SharedByClones):
    """Object patch for a CLIP/T5 self-attention module's ``forward``: wraps the attention function."""

    def __init__(self, probe: ClipProbe, module: torch.nn.Module, key: str) -> None:
        self.probe, self.module, self.key = probe, module, key
        self.forward = type(module).forward
        params = list(inspect.signature(self.forward).parameters)
        self.arg_index = params.index("optimized_attention") - 1  # without self

    def __call__(self, *args, **kwargs):
        state = self.probe.state
        if state is None or (self.key not in state.weights and not state.capture):
            return self.forward(self.module, *args, **kwargs)
        if "optimized_attention" in kwargs:
            kwargs["optimized_attention"] = self._wrap(kwargs["optimized_attention"], state)
        else:
            args = list(args)
            args[self.arg_index] = self._wrap(args[self.arg_index], state)
        return self.forward(self.module, *args, **kwargs)

    def _wrap(self, func, state: EncodeState):
        def attention(q, k, v, heads, mask=None, **kw):
            rows = q.shape[0]
            skip = bool(kw.get("skip_reshape", False))  # the LLMs hand q/k/v as [B, heads, tokens, dim]
            n_k, n_q = (k.shape[2], q.shape[2]) if skip else (k.shape[1], q.shape[1])
            reweight = state.reweight(self.key, rows, n_k, q.device)
            capture = state.wants_capture(self.key, n_k, self.probe.layers.get(self.key, 1))
            caps = [Capture(slice(0, 1), torch.arange(n_k, device=q.device))] if capture else []

            def compute_out(q_, k_, v_, m_):
                return func(q_, k_, v_, heads, m_, **kw)

            # ComfyUI's SDPA backend in one call: the engine makes that call itself, as ComfyUI does
            fused = is_stock_sdpa(func) and bool(caps) and one_sdpa_call(rows)
            with fused_route(fused):
                out, maps = attend(q, k, v, heads, mask=mask, skip_reshape=skip,
                                   skip_output_reshape=bool(kw.get("skip_output_reshape", False)),
                                   reweight=reweight, captures=caps, query_range=(0, n_q),
                                   compute_out=None if fused else compute_out)
            if maps:
                state.maps[self.key].layers.append(maps[0] / heads)
            return out

        return attention
