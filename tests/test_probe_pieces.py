"""The model patch's pieces, each on its own: reading ComfyUI's attention call by name
(`nodes/model_patch/call.py`), the plan of an attention call (`plan.py`), routes and fitted
layouts (`conditionings.py`), the run log (`attention/oncelog.py`), the results store
(`store.py`), and the override's refusal to swallow what it cannot read.

They are loaded as ComfyUI loads the pack (the ``comfy`` fixture), but need no model.
"""

from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture
def pieces(comfy):
    class P:
        call = comfy.submodule("nodes.model_patch.call")
        plan = comfy.submodule("nodes.model_patch.plan")
        routes = comfy.submodule("nodes.model_patch.conditionings")
        run = comfy.submodule("nodes.model_patch.record")
        store = comfy.submodule("nodes.model_patch.store")
        types = comfy.submodule("nodes.model_patch.state")
        tokens = comfy.submodule("attention.layout")
        probe = comfy.submodule("nodes.model_patch.probe")
        override = comfy.submodule("nodes.model_patch.override")

    return P


# --------------------------------------------------------------------------- reading the call


def test_read_call_by_name(pieces):
    q, k, v, m = (torch.zeros(1), torch.ones(1), torch.full((1,), 2.0), torch.full((1,), 3.0))
    read = pieces.call.read_call
    shapes = [
        ((q, k, v, 4), {"transformer_options": {}}),  # UNet
        ((q, k, v), {"heads": 4}),  # MMDiT
        ((q, k, v, 4), {"skip_reshape": True, "mask": m}),  # Flux
        ((q, k, v, 4, m, None, True, False), {}),  # everything by position
        ((), {"query": q, "key": k, "value": v, "heads": 4, "mask": m}),  # sub-quadratic's names
    ]
    for args, kwargs in shapes:
        call = read(args, kwargs)
        assert not isinstance(call, str), (args, kwargs, call)
        assert (call.q is q, call.k is k, call.v is v, call.heads) == (True, True, True, 4)
        q2, k2, v2, m2 = (torch.zeros(2) for _ in range(4))
        a, kw = call.rebuilt(q2, k2, v2, m2)
        again = read(a, kw)
        assert (again.q is q2, again.k is k2, again.v is v2, again.mask is m2) == (True,) * 4
        assert len(a) == len(args), "the call shape changed"
        assert set(kw) == set(kwargs) | ({"mask"} if "mask" not in kwargs and len(args) < 5 else set())
        assert all(kw[n] is kwargs[n] for n in kwargs if n not in ("query", "key", "value", "mask"))
    assert read((q, k, v, 4, m, None, True, False), {}).skip_reshape is True
    assert read((q, k, v, 4), {"attn_precision": torch.float32, "extra": 1}).kwargs["extra"] == 1
    assert "more than the 8 parameters" in read((q, k, v, 4, m, None, False, False, 9), {})
    assert "no heads" in read((q, k, v), {})
    assert "'mask' given both by position and by keyword" in read((q, k, v, 4, m), {"mask": m})
    assert "heads is Tensor" in read((q, k, v, torch.tensor(4)), {})


def test_unreadable_call_runs_as_it_is_and_is_logged_once(pieces, caplog):
    types = pieces.types
    probe = pieces.probe.ModelProbe("unet", 1, types.Geometry((1, 1, 1)), types.ProbeConfig())
    sampling = type("S", (), {"percent_to_sigma": staticmethod(lambda p: 1.0 - p)})()
    probe.begin_run({}, sampling, (1, 4, 8, 8), 1)
    override = pieces.override.AttentionOverride(probe.patch, None)

    def options():
        return {probe.keys.site: types.Site(0, 77, None), probe.keys.call: types.CallState(probe.run, True, 0, (8, 8))}

    to = options()
    seen = []

    def backend(*args, **kwargs):
        seen.append((args, kwargs))
        return "out"

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert override(backend, torch.zeros(1, 4, 8), transformer_options=to) == "out"
    assert len(seen) == 3 and seen[0][0][0].shape == (1, 4, 8)
    said = [r.getMessage() for r in caplog.records if "cannot read the attention call" in r.getMessage()]
    assert said == ["Enfoque: block 0: cannot read the attention call (no k, v, heads in the call); it runs as it "
                    "is, neither captured nor reweighted"]
    probe.end_run(True)
    probe.begin_run({}, sampling, (1, 4, 8, 8), 1)  # a new run says it again
    with caplog.at_level(logging.WARNING):
        override(backend, torch.zeros(1, 4, 8), transformer_options=options())
    assert sum("cannot read the attention call" in r.getMessage() for r in caplog.records) == 2


# --------------------------------------------------------------------------- planning


def route(pieces, role, index, layout, length=None):
    return pieces.types.Route(role, index, layout, layout.positions(), length or layout.context_length)


def test_plan_repeats_columns_and_weights_per_copy(pieces):
    tokens, types = pieces.tokens, pieces.types
    a = tokens.TokenLayout(("red", "cat"), ((2,), (3,)), 5, weights={3: 0.0})
    b = tokens.TokenLayout.positional(10)
    routes = {"a": route(pieces, "positive", 0, a), "b": route(pieces, "negative", 0, b)}
    cfg = types.ProbeConfig(capture_negative=True)
    plan = pieces.plan.build_plan(types.Site(0, 10, None), ["a", "b"], routes, {}, cfg, (4, 4), 16, 10, 4,
                                  torch.device("cpu"), pieces.run.run_log())
    assert plan.keys == [("positive", 0), ("negative", 0)] and plan.copies == [2, 1]
    assert plan.captures[0].columns.tolist() == [2, 3, 7, 8] and plan.captures[0].rows == slice(0, 2)
    assert plan.captures[1].columns.tolist() == list(range(10)) and plan.captures[1].rows == slice(2, 4)
    w = plan.reweight.weights
    assert w[:2, 3].tolist() == [0.0, 0.0] and w[:2, 8].tolist() == [0.0, 0.0]
    assert float(w[:2].sum()) == 2 * 8 and float(w[2:].sum()) == 2 * 10


def test_plan_skips_a_prompt_whose_length_does_not_fit_and_says_so(pieces, caplog):
    tokens, types = pieces.tokens, pieces.types
    a = tokens.TokenLayout(("cat",), ((3,),), 77, weights={3: 2.0})
    routes = {"a": route(pieces, "positive", 0, a)}
    log = pieces.run.run_log()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            plan = pieces.plan.build_plan(types.Site(4, 81, None), ["a"], routes, {}, types.ProbeConfig(), (4, 4),
                                          16, 81, 1, torch.device("cpu"), log)
            assert plan is None
    said = [r.getMessage() for r in caplog.records]
    assert said == ["Enfoque: the positive conditioning #0 has 77 context tokens, but block 4 attends to 81 text "
                    "tokens, no whole number of copies of it; its maps and weights are skipped there"]


def test_plan_of_a_dit_call_with_too_few_queries_says_so(pieces, caplog):
    tokens, types = pieces.tokens, pieces.types
    routes = {"a": route(pieces, "positive", 0, tokens.TokenLayout.positional(8))}
    with caplog.at_level(logging.WARNING):
        plan = pieces.plan.build_plan(types.Site(1, 8, 20), ["a"], routes, {}, types.ProbeConfig(reweight="off"),
                                      (4, 4), 20, 20, 1, torch.device("cpu"), pieces.run.run_log())
    assert plan is None
    assert any("block 1 has 20 queries, fewer than its 8 text and 16 image tokens" in r.getMessage()
               for r in caplog.records)


def test_region_of_an_area(pieces, caplog):
    area_for, log = pieces.plan.area_for, pieces.run.run_log()
    Area = pieces.types.Area
    assert area_for((12, 16, 0, 0), (12, 16), 1, (12, 16), "c", log) is None
    assert area_for((12, 8, 0, 8), (12, 16), 1, (12, 16), "c", log) == Area(0, 8, 12, 8)
    assert area_for((12, 99, 0, 8), (12, 16), 1, (12, 16), "c", log) == Area(0, 8, 12, 8)  # clamped as ComfyUI
    assert area_for((6, 8, 4, 8), (12, 16), 2, (6, 8), "c", log) == Area(2, 4, 3, 4)
    with caplog.at_level(logging.WARNING):
        assert area_for((6, 8, 3, 8), (12, 16), 2, (6, 8), "c", log) == Area(1, 4, 3, 4)
    assert any("not on the 2x2 patch grid" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- routes, layouts, store


def test_fitted_layouts(pieces, caplog):
    tokens = pieces.tokens
    lay = tokens.TokenLayout(("red", "cat"), ((1,), (2,)), 4, weights={2: 1.5}, encoder_spans={"l": [[1], [2]]})
    longer = lay.fitted(6)
    assert longer.words == ("red", "cat", "#4", "#5") and longer.spans[2:] == ((4,), (5,))
    assert longer.weights == {2: 1.5} and longer.encoder_spans["l"] == [[1], [2], [], []]
    assert longer.find("#5") == [3]
    shorter = lay.fitted(2)
    assert shorter.words == ("red",) and shorter.weights == {} and shorter.encoder_spans["l"] == [[1]]
    assert lay.fitted(4) is lay
    conds = {"positive": [{"cross_attn": torch.zeros(1, 6, 2), "uuid": "u", tokens.LAYOUT_KEY: lay},
                          {"cross_attn": torch.zeros(1, 3, 2), "uuid": "s"}],
             "negative": [{"uuid": "n"}]}
    with caplog.at_level(logging.INFO):
        routes = pieces.routes.build_routes(conds, pieces.types.ProbeConfig(), pieces.run.run_log())
    assert routes["u"].length == 6 and routes["u"].columns == [1, 2, 4, 5]
    assert routes["s"].layout.words == ("#0", "#1", "#2") and "n" not in routes
    text = " | ".join(r.getMessage() for r in caplog.records)
    assert "positive conditioning #0 is 6 context tokens long but its words cover the first 4" in text
    assert "negative conditioning #0 has no text context" in text


def test_results_store_knows_each_run_by_the_latent_it_returned(pieces):
    store_mod = pieces.store
    store = store_mod.ResultStore()

    def result(batch, grid, run, out=None, maps=None):
        return store_mod.ProbeResult(maps or {}, {}, {}, {}, grid, [], [], run, batch,
                                     output=None if out is None else torch.full((batch, 4, *grid), float(out)))

    same = [result(1, (4, 4), i, out=i) for i in range(3)]
    for r in same:
        store.add(r)
    # three runs of one shape: each found by its own latent, the newest by any other latent of that shape
    assert [store.find((1, (4, 4)), torch.full((1, 4, 4, 4), float(i))).run for i in range(3)] == [0, 1, 2]
    assert store.find((1, (4, 4)), torch.full((1, 4, 4, 4), 7.0)).run == 2
    assert store.find((1, (4, 4)), torch.full((1, 4, 4, 4), 1.0, dtype=torch.float64)).run == 1  # any dtype
    assert store.find((1, (4, 4))).run == 2 and store.find((1, (6, 6))) is None and store.last.run == 2
    store.add(result(1, (4, 4), 3, out=1))  # the same run again (same latent): it replaces the kept one
    assert [r.run for r in store.results] == [0, 2, 3]
    for i, shape in enumerate([(1, (6, 6)), (2, (4, 4))], start=4):
        store.add(result(shape[0], shape[1], i, out=i))
    # at most MAX_RESULTS = 4 kept, the oldest dropped
    assert store_mod.MAX_RESULTS == 4 and [r.run for r in store.results] == [2, 3, 4, 5]
    assert store.find(None).run == 5
    store.forget()
    assert store.last is None and len(store.results) == 4
    # within a byte budget: the oldest dropped first, the newest always kept
    big = {("positive", 0): torch.zeros(1, 8, 16, 16)}  # 8 KiB of maps (and a 256 B latent)
    budget = store_mod.ResultStore()
    for i in range(3):
        budget.add(result(1, (4, 4), 10 + i, out=i, maps=big), budget_bytes=2 * (8192 + 256) + 10)
    assert [r.run for r in budget.results] == [11, 12] and budget.results[0].nbytes == 8192 + 256
    budget.add(result(1, (4, 4), 13, out=3, maps=big), budget_bytes=100)
    assert [r.run for r in budget.results] == [13]


def test_run_log_says_each_reason_once(pieces, caplog):
    log = pieces.run.run_log()
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            log.once("a", "first %d", 1)
            log.once("b", "second", level=logging.INFO)
    assert [r.getMessage() for r in caplog.records] == ["Enfoque: first 1", "Enfoque: second"]
