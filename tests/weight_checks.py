"""What a weight on one context position must do to the maps of a run (shared by the model-probe tests).

``base``, ``up`` and ``gone`` are the probe results of one step at the first block with no weight, weight 2
and weight 0 on position ``j`` of the positive prompt (the negative prompt has none): the first block sees
the same input in all three, so only the weight can move the maps.
"""

from __future__ import annotations

import torch


def with_layout(comfy, cond, weights: dict[int, float]):
    """The conditioning with a positional layout carrying weights (what Enfoque Patch CLIP's encode writes)."""
    tokens = comfy.submodule("attention.layout")
    out = []
    for t, d in cond:
        d = dict(d)
        d[tokens.LAYOUT_KEY] = tokens.TokenLayout.positional(t.shape[1]).with_weights(weights)
        out.append([t, d])
    return out


def check_weight_on_column(base, up, gone, j: int, mode: str, others: list[int]) -> None:
    mass = {k: r.maps[("positive", 0)][:, j].sum().item() for k, r in (("base", base), ("up", up), ("gone", gone))}
    assert mass["up"] > mass["base"] * 1.2
    assert mass["gone"] == 0.0
    # other tokens: renormalised upward in bias mode when j is removed, unchanged in scale mode
    b_o = base.maps[("positive", 0)][:, others]
    g_o = gone.maps[("positive", 0)][:, others]
    if mode == "bias":
        assert (g_o.sum() > b_o.sum()).item()
    else:
        torch.testing.assert_close(g_o, b_o, atol=1e-6, rtol=0)
    # the negative prompt's rows are untouched (1 step: same input, so the same maps)
    torch.testing.assert_close(up.maps[("negative", 0)], base.maps[("negative", 0)], atol=1e-6, rtol=0)
