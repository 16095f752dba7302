"""Step 13's DiT families (Flux 2, Qwen-Image, Z-Image, Chroma, Wan, Lumina 2) on tiny real models
sampled by ComfyUI's KSampler, with their real text-encoder classes and tokenizers.

The cases are `family_cases.CASES`; the README's support table is rendered from them
(`tools/support_table.py`). References here never call the pack: they read q/k/v in a test-only
attention override set before the pack's, or the text encoder's own weights, and compute the softmax
in float64; where the text sits in each family's attention comes from ComfyUI's model code, written
out in `TextPlace`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import pytest
import tiny_models
import torch
from family_cases import CASES, TEXT_ENCODER_TESTED
from helpers import patch, released
from weight_checks import check_weight_on_column, with_layout

pytestmark = pytest.mark.host

PROMPT = "a red cat on a blue chair"
WORDS = ["a", "red", "cat", "on", "a", "blue", "chair"]
MULTI = "a photorealistic red cat, 3.5kg on a chair"  # words of several pieces in every vocabulary
MULTI_WORDS = ["a", "photorealistic", "red", "cat", "3.5kg", "on", "a", "chair"]
_models: dict = {}

_release_models = released(_models)


@dataclass
class Fam:
    name: str
    model: object
    clip: object  # the family's text encoder (stock)
    pos: list  # the prompt encoded through Enfoque Patch CLIP (attention mode): it carries its words
    neg: list
    stock_pos: list  # the prompt encoded by the stock CLIP (no layout: positions #0, #1, ...)
    stock_neg: list
    latent: dict


def fam(comfy, tiny_dir, name) -> Fam:
    if name not in _models:
        case = CASES[name]
        model = getattr(tiny_models, case.model)(tiny_dir, name=f"fam_{name}").model
        clip = getattr(tiny_models, case.clip)()
        pc, _ = comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode="attention", capture=False)
        enc = lambda c, t: comfy.run("CLIPTextEncode", clip=c, text=t)[0]  # noqa: E731
        latent = comfy.run(case.latent, **case.latent_args)[0]
        _models[name] = Fam(name, model, clip, enc(pc, PROMPT), enc(pc, "blurry"), enc(clip, PROMPT),
                            enc(clip, "blurry"), latent)
    return _models[name]


def ksample(comfy, f: Fam, model, pos=None, neg=None, steps=2, seed=3):
    return comfy.run("KSampler", model=model, seed=seed, steps=steps, cfg=CASES[f.name].cfg, sampler_name="euler",
                     scheduler="simple", positive=pos if pos is not None else f.pos,
                     negative=neg if neg is not None else f.neg, latent_image=f.latent, denoise=1.0)[0]


def grid_cells(f: Fam) -> tuple[int, int, int]:
    """(frames, rows, columns) of image tokens: the latent, patched 2 x 2 (Flux 2: 1 x 1)."""
    s = f.latent["samples"].shape
    p = 1 if f.name == "flux2" else 2
    frames = s[2] if len(s) == 5 else 1
    return frames, math.ceil(s[-2] / p), math.ceil(s[-1] / p)


@dataclass
class TextPlace:
    """Where a conditioning of L tokens sits in the family's attention, as ComfyUI's model code puts it:
    the key columns of its tokens, the query rows of the image tokens, and the key/query lengths that
    tell the text attention apart."""

    cols: list[int]
    q0: int
    n_img: int
    k_len: int
    q_len: int | None  # None: any (checked by k_len alone)


def text_place(f: Fam, L: int) -> TextPlace:
    frames, h, w = grid_cells(f)
    n = frames * h * w
    if f.name == "flux2":  # model_base.Flux2.extra_conds pads the context on the left to 512 tokens
        T = max(L, 512)
        return TextPlace(list(range(T - L, T)), T, n, T + n, T + n)
    if f.name in ("qwen_image", "chroma"):  # [text, image]
        return TextPlace(list(range(L)), L, n, L + n, L + n)
    if f.name in ("z_image", "lumina2"):  # NextDiT: [text, image], each padded to pad_tokens_multiple
        m = 32 if f.name == "z_image" else 1
        cap, img = math.ceil(L / m) * m, math.ceil(n / m) * m
        return TextPlace(list(range(L)), cap, n, cap + img, cap + img)
    if f.name == "wan":  # cross-attention: image queries, text keys
        return TextPlace(list(range(L)), 0, n, L, n)
    raise AssertionError(f.name)


class NaiveReference:
    """A test-only override set before the pack's: for each attention call whose shape is the family's
    text attention (`TextPlace`), softmax(q k^T / sqrt(d)) in float64, image queries x the prompt's key
    columns, cond rows, head mean. Then it calls the backend as given."""

    def __init__(self, place: TextPlace):
        self.place = place
        self.maps: list[torch.Tensor] = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        skip = kwargs.get("skip_reshape", False)
        to = kwargs.get("transformer_options", {})
        qh, kh = (t if skip else t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
        pl = self.place
        cond_rows = 0 in to.get("cond_or_uncond", [])  # a batch of the negative prompt alone: not recorded
        if cond_rows and kh.shape[2] == pl.k_len and (pl.q_len is None or qh.shape[2] == pl.q_len):
            mask = kwargs.get("mask")
            logits = qh.double() @ kh.double().transpose(-1, -2) / qh.shape[-1] ** 0.5
            if mask is not None:
                logits = logits + mask.double()
            p = torch.softmax(logits, dim=-1)[:, :, pl.q0:pl.q0 + pl.n_img][..., pl.cols]
            rows = p.shape[0] // len(to["cond_or_uncond"])
            i = to["cond_or_uncond"].index(0)
            self.maps.append(p[i * rows:(i + 1) * rows].mean(1))
        return func(q, k, v, heads, *args, **kwargs)


def layout_of(cond):
    return cond[0][1]["enfoque_layout"]


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", list(CASES))
def test_capture_is_neutral_and_maps_have_the_words(comfy, tiny_dir, name):
    f = fam(comfy, tiny_dir, name)
    stock = ksample(comfy, f, f.model)["samples"]
    patched, probe = patch(comfy, f.model, capture_negative=True)
    out = ksample(comfy, f, patched)
    assert torch.equal(out["samples"], stock), "capture changed the sampled latent"
    assert torch.equal(ksample(comfy, f, f.model)["samples"], stock), "the original model changed"
    res = probe.result
    assert set(res.maps) == {("positive", 0), ("negative", 0)}
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]
    assert maps.words == WORDS
    frames, h, w = grid_cells(f)
    assert maps.maps.shape == (1, len(WORDS), h, w) and maps.meta["frames"] == frames
    assert maps.meta["model_family"] == name and torch.isfinite(maps.maps).all() and maps.maps.sum() > 0
    assert len(res.blocks) == probe.n_blocks


@pytest.mark.parametrize("name", list(CASES))
def test_maps_equal_naive_reference(comfy, tiny_dir, name):
    """Stock-encoded prompts (every context position captured, labelled #p) against a float64 softmax
    over the keys where ComfyUI's model code puts the text."""
    f = fam(comfy, tiny_dir, name)
    L = f.stock_pos[0][0].shape[1]
    ref = NaiveReference(text_place(f, L))
    m = f.model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = ref
    patched, probe = patch(comfy, m)
    ksample(comfy, f, patched, f.stock_pos, f.stock_neg)
    res = probe.result
    assert len(ref.maps) == len(res.active_steps) * len(res.blocks) > 0
    expected = torch.stack(ref.maps).mean(0)  # [rows, image tokens, L]
    got = res.maps[("positive", 0)].flatten(2).transpose(1, 2)  # frames stacked on rows: token order
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["bias", "scale"])
@pytest.mark.parametrize("name", list(CASES))
def test_weights_act_on_the_captured_columns(comfy, tiny_dir, name, mode):
    """A weight on context position j moves exactly column j of the maps (whose place the reference test
    checks): 2 raises it, 0 removes it; bias renormalises the others, scale leaves them; the negative
    prompt's rows do not move."""
    f = fam(comfy, tiny_dir, name)
    j = 2

    def run(weights):
        patched, probe = patch(comfy, f.model, reweight=mode, capture_negative=True, blocks="0")
        pos = with_layout(comfy, f.stock_pos, weights) if weights is not None else f.stock_pos
        ksample(comfy, f, patched, pos, f.stock_neg, steps=1)
        return probe.result

    L = f.stock_pos[0][0].shape[1]
    check_weight_on_column(run(None), run({j: 2.0}), run({j: 0.0}), j, mode, [i for i in range(min(L, 12)) if i != j])


def test_token_weights_on_an_llm_prompt_reach_the_model(comfy, tiny_dir):
    """Enfoque Token Weights names words of a Qwen-Image prompt; the model's reweighting takes them."""
    f = fam(comfy, tiny_dir, "qwen_image")
    out = comfy.run("EnfoqueTokenWeights", conditioning=f.pos, weights="cat:3")[0]
    lay = layout_of(out)
    assert {lay.weights[p] for p in lay.spans[lay.words.index("cat")]} == {3.0}

    def run(cond):
        patched, probe = patch(comfy, f.model, blocks="0")
        lat = ksample(comfy, f, patched, cond, steps=1)
        return comfy.run("EnfoqueAttentionMaps", probe=probe, latent=lat, words="")[0]

    base, up = run(f.pos), run(out)
    i = base.words.index("cat")
    assert up.maps[:, i].sum() > 1.5 * base.maps[:, i].sum()


def test_wan_maps_have_one_frame_per_latent_frame(comfy, tiny_dir):
    f = fam(comfy, tiny_dir, "wan")
    patched, probe = patch(comfy, f.model, keep_steps=True)
    out = ksample(comfy, f, patched)
    maps = comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="cat, chair")[0]
    frames, h, w = grid_cells(f)
    assert frames == 2 and len(maps.frames) == frames
    per = torch.stack([fr.maps for fr in maps.frames])  # [frames, 1, words, h, w]
    torch.testing.assert_close(per.mean(0), maps.maps)
    assert (per[0] - per[1]).abs().max() > 1e-6, "two frames, one map"
    token = probe.result.maps[("positive", 0)]  # [1, tokens, frames * h, w]
    cat = layout_of(f.pos).spans[WORDS.index("cat")]
    col = [probe.result.routes[("positive", 0)].columns.index(p) for p in cat]
    torch.testing.assert_close(maps.frames[1].maps[0, 0], token[0, col, h:].mean(0))
    pictures = comfy.run("EnfoqueHeatmaps", maps=maps, colormap="viridis", opacity=0.6, normalisation="minmax",
                         columns=0, over="frames")[0]
    assert pictures.shape[0] == frames
    image = "chroma"  # an image model's maps have no frames
    g = fam(comfy, tiny_dir, image)
    p2, probe2 = patch(comfy, g.model)
    lat = ksample(comfy, g, p2)
    still = comfy.run("EnfoqueAttentionMaps", probe=probe2, latent=lat, words="")[0]
    with pytest.raises(ValueError, match="over 'frames' needs the maps of each latent frame"):
        comfy.run("EnfoqueHeatmaps", maps=still, colormap="viridis", opacity=0.6, normalisation="minmax",
                  columns=0, over="frames")


def test_a_known_family_that_records_nothing_says_why(comfy, tiny_dir, caplog):
    """Wan with its prompt on an area: not captured on a video latent; the run logs it and the maps node
    raises with the reason, never silence."""
    f = fam(comfy, tiny_dir, "wan")
    area = comfy.run("ConditioningSetArea", conditioning=f.pos, width=32, height=32, x=0, y=0, strength=1.0)[0]
    patched, probe = patch(comfy, f.model)
    with caplog.at_level(logging.WARNING):
        out = ksample(comfy, f, patched, area)
    assert any("area (ConditioningSetArea) on a video latent" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="captured no maps: .*area .*video latent"):
        comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")


def test_unknown_family_is_refused(comfy, tiny_dir):
    """A model ComfyUI loads but Enfoque does not instrument (AuraFlow) keeps the clear refusal."""
    import importlib

    supported = importlib.import_module("comfy.supported_models")  # (the fixture is named comfy)
    cfg = {"max_seq": 64, "cond_seq_dim": 64, "patch_size": 2, "in_channels": 4, "out_channels": 4, "n_layers": 2,
           "n_double_layers": 1, "n_heads": 2, "dim": 64, "global_conddim": 64}
    net = tiny_models._build_net(supported.AuraFlow(cfg), 0)
    sd = {k: v.detach() for k, v in net.state_dict().items()}
    model = tiny_models._wrap(supported.AuraFlow(cfg), sd)
    with pytest.raises(ValueError, match=r"Enfoque Patch Model: the model MMDiT is not supported yet; supported "
                                         r"families: Flux 2, Qwen-Image, Z-Image, Chroma, Wan"):
        patch(comfy, model)


# ---------------------------------------------------------------------------------------- token layout


def _spiece(tok):
    return getattr(tok.tokenizer, "tokenizer", None)


def expected_layout(f: Fam, text: str) -> tuple[list[str], list[list[int]], list[int], int]:
    """Words, their token indices and the template tokens of ``text`` as ComfyUI's own tokenizer gives them,
    read with the tokenizer library's offsets (never the pack's code): a token is a word's when its
    characters overlap the word's letters, a template token when it lies wholly outside the prompt."""
    tokens = f.clip.tokenize(text)
    (key, chunks), = [(k, v) for k, v in tokens.items() if k != "byt5"]
    sub = [getattr(f.clip.tokenizer, a) for a in vars(f.clip.tokenizer) if hasattr(getattr(f.clip.tokenizer, a), "inv_vocab")][0]
    ids = [t for t, *_ in chunks[0]]
    template = getattr(f.clip.tokenizer, "llama_template", "{}")
    full = template.format(text)
    a0 = template.index("{}")
    # the prompt's words: its whitespace pieces less punctuation at their ends ("cat," is "cat")
    words = []
    for m in re.finditer(r"\S+", text):
        lead = len(m.group(0)) - len(m.group(0).lstrip(",.()"))
        words.append((m.group(0).strip(",.()"), a0 + m.start() + lead))
    start = 1 if sub.start_token is not None else 0
    if _spiece(sub) is not None:  # ComfyUI's SPieceTokenizer: each word tokenized alone (sentencepiece
        spans, at = [], start     # marks every word start, so a word's pieces are the same in context)
        for w, _ in words:
            alone = sub.tokenizer(w)["input_ids"][start:]
            if sub.end_token is not None:
                alone = alone[:-1]
            while ids[at:at + len(alone)] != alone:
                at += 1
                assert at < len(ids), w
            spans.append(list(range(at, at + len(alone))))
            at += len(alone)
        return [w for w, _ in words], spans, [], len(ids)
    enc = sub.tokenizer(full, return_offsets_mapping=True, add_special_tokens=False)
    offsets, got = list(enc["offset_mapping"]), list(enc["input_ids"])
    assert ids[start:start + len(got)] == got, "the stream is not the tokenizer's own tokenization"
    spans = []
    for w, s in words:
        e = s + len(w)
        spans.append([start + i for i, (a, b) in enumerate(offsets) if a < e and s < b and b > a])
    lo, hi = a0, a0 + len(text)
    tpl = [start + i for i, (a, b) in enumerate(offsets) if (b <= lo or a >= hi) and not (a == b == lo)]
    return [w for w, _ in words], spans, tpl, len(ids)


@pytest.mark.parametrize("name", list(CASES))
def test_layout_matches_comfy_tokenizer_ids(comfy, tiny_dir, name):
    f = fam(comfy, tiny_dir, name)
    pc, _ = comfy.run("EnfoquePatchCLIP", clip=f.clip, weight_mode="attention", capture=False)
    cond = comfy.run("CLIPTextEncode", clip=pc, text=MULTI)[0]
    lay = layout_of(cond)
    words, spans, tpl, n_stream = expected_layout(f, MULTI)
    drop = n_stream - cond[0][0].shape[1]  # Qwen-Image's encoder drops the template's first tokens
    assert drop == (34 if name == "qwen_image" else 0)
    assert list(lay.words) == words == MULTI_WORDS
    for w, got, want in zip(words, lay.spans, spans, strict=True):
        assert list(got) == [i - drop for i in want], w
    assert any(len(s) > 1 for s in lay.spans), "no word of several pieces"
    assert list(lay.template) == [i - drop for i in tpl if i >= drop]
    if name in ("qwen_image", "z_image", "flux2"):
        assert lay.template, "the chat template's tokens are kept"
    # the maps and weights leave the template out; the word list never has template words
    assert not {p for s in lay.spans for p in s} & set(lay.template)
    # the template's tokens are captured under their own label only (<template>: their maps on request,
    # their share of the attention in the maps' metadata), never as part of a word
    route, _ = comfy.submodule("nodes.model_patch.conditionings").capture_columns(lay, ())
    labels, spans = lay.labelled_spans()
    assert set(route) >= set(lay.template) and labels[len(lay.words):].count("<template>") == (1 if lay.template else 0)
    assert not {p for s in spans[: len(lay.words)] for p in s} & set(lay.template)


@pytest.mark.parametrize("name", ["flux2", "qwen_image", "z_image"])
def test_prompt_weights_on_llm_encoders(comfy, tiny_dir, name):
    """ComfyUI turns its (word:w) parsing off for these LLM encoders: the syntax reaches the LLM as text
    (weight_mode comfy keeps that, as stock). attention: the LLM gets the prompt without the syntax and
    the word's tokens carry the weight, for the encoder's attention and the diffusion model's."""
    f = fam(comfy, tiny_dir, name)
    stock = comfy.run("CLIPTextEncode", clip=f.clip, text="a (red:1.5) cat")[0]
    cc, _ = comfy.run("EnfoquePatchCLIP", clip=f.clip, weight_mode="comfy", capture=False)
    comfy_mode = comfy.run("CLIPTextEncode", clip=cc, text="a (red:1.5) cat")[0]
    assert torch.equal(comfy_mode[0][0], stock[0][0]) and layout_of(comfy_mode).weights == {}
    ca, _ = comfy.run("EnfoquePatchCLIP", clip=f.clip, weight_mode="attention", capture=False)
    weighted = comfy.run("CLIPTextEncode", clip=ca, text="a (red:1.5) cat")[0]
    plain = comfy.run("CLIPTextEncode", clip=ca, text="a red cat")[0]
    lay = layout_of(weighted)
    assert list(lay.words) == ["a", "red", "cat"] and lay.words == layout_of(plain).words
    assert lay.spans == layout_of(plain).spans
    assert lay.weights == {p: 1.5 for p in lay.spans[1]}
    assert torch.equal(plain[0][0], comfy.run("CLIPTextEncode", clip=f.clip, text="a red cat")[0][0][0])
    # causal LLM: the weight changes the states from "red" on, never before
    first = min(lay.spans[1])
    diff = (weighted[0][0] - plain[0][0]).abs().amax(-1)[0]
    assert diff[:first].max().item() <= 1e-6
    assert diff[first:].max().item() > 1e-4


class EncoderReference:
    """Forward pre-hooks on the LLM's attention modules (test-only): softmax(q k^T / sqrt(d) + mask) in
    float64 from the module's own projections, norms and ComfyUI's rope, head mean."""

    def __init__(self, modules):
        import comfy.text_encoders.llama as llama

        self.llama = llama
        self.maps: list[torch.Tensor] = []
        self.handles = [m.register_forward_pre_hook(self.hook, with_kwargs=True) for m in modules]

    def hook(self, mod, args, kwargs):
        x = kwargs["hidden_states"]
        b, n, _ = x.shape
        q = mod.q_proj(x).view(b, n, mod.num_heads, mod.head_dim).transpose(1, 2)
        k = mod.k_proj(x).view(b, n, mod.num_kv_heads, mod.head_dim).transpose(1, 2)
        if mod.q_norm is not None:
            q = mod.q_norm(q)
        if mod.k_norm is not None:
            k = mod.k_norm(k)
        q, k = self.llama.apply_rope(q, k, freqs_cis=kwargs["freqs_cis"])
        k = k.repeat_interleave(mod.num_heads // mod.num_kv_heads, dim=1)
        logits = q.double() @ k.double().transpose(-1, -2) / mod.head_dim ** 0.5 + kwargs["attention_mask"].double()
        self.maps.append(torch.softmax(logits, -1).mean(1)[:1])

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("name", TEXT_ENCODER_TESTED)
def test_patch_clip_on_llm_encoders_captures_exact_maps(comfy, tiny_dir, name):
    f = fam(comfy, tiny_dir, name)
    encoders = comfy.submodule("nodes.clip_patch.encoders").ENCODERS
    install = comfy.submodule("nodes.clip_patch.install")
    pc, probe = comfy.run("EnfoquePatchCLIP", clip=f.clip, weight_mode="attention", capture=True)
    key = next(e.key for e in encoders.values()
               if e.key not in ("l", "g", "t5xxl") and getattr(f.clip.cond_stage_model, e.attr, None) is not None)
    mods = [m for m in getattr(f.clip.cond_stage_model, encoders[key].attr).modules() if install.is_self_attention(m)]
    assert mods and len(mods) == probe.layers[key]
    ref = EncoderReference(mods)
    try:
        cond = comfy.run("CLIPTextEncode", clip=pc, text=PROMPT)[0]
    finally:
        ref.close()
    rec = probe.records[cond[0][1]["enfoque_text_record"]]
    got = rec.maps[key].layers
    assert len(got) == len(ref.maps) == len(mods)
    for g, r in zip(got, ref.maps, strict=True):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=0)
    maps, _ = comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond, encoder=key)
    assert maps.words == WORDS
    tokens, _ = comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond, encoder=key, level="tokens")
    if name != "lumina2":
        assert any(w.startswith("[") for w in tokens.words), "template tokens are labelled as such"


def test_lumina2_system_prompt_is_template(comfy, tiny_dir):
    """CLIPTextEncodeLumina2 puts its system prompt and "<Prompt Start>" before the prompt: template tokens,
    not words; the prompt's words sit where ComfyUI's tokenizer puts them."""
    f = fam(comfy, tiny_dir, "lumina2")
    pc, _ = comfy.run("EnfoquePatchCLIP", clip=f.clip, weight_mode="attention", capture=False)
    cond = comfy.run("CLIPTextEncodeLumina2", clip=pc, system_prompt="superior", user_prompt=PROMPT)[0]
    lay = layout_of(cond)
    assert list(lay.words) == WORDS
    node = comfy.node("CLIPTextEncodeLumina2")
    text = f"{node.SYSTEM_PROMPT['superior']} <Prompt Start> {PROMPT}"
    ids = [t for t, *_ in f.clip.tokenize(text)["gemma2_2b"][0]]
    sub = f.clip.tokenizer.gemma2_2b
    head = sub.tokenizer(f"{node.SYSTEM_PROMPT['superior']} <Prompt Start>")["input_ids"]
    n_tpl = len(head) - 1  # without the start token ComfyUI adds itself
    assert list(lay.template) == list(range(1, 1 + n_tpl))
    assert min(lay.spans[0]) == 1 + n_tpl
    assert [ids[p] for p in lay.spans[WORDS.index("chair")]] == sub.tokenizer("chair")["input_ids"][1:]


# the tokenizer /enfoque/tokenize names: ComfyUI's bundled one, or "text" where the tokenizer comes in the
# text-encoder file and the route reads words from the text
TOKENIZER = {"flux2": "text", "wan": "text", "lumina2": "text", "chroma": "t5xxl", "qwen_image": "qwen25_7b",
             "z_image": "qwen3_4b"}


@pytest.mark.parametrize("name", list(CASES))
def test_tokenize_route_gives_the_layout_words(comfy, tiny_dir, name):
    """/enfoque/tokenize answers, per family, the words an encode through Enfoque Patch CLIP (attention)
    gives the layout; Flux 2, Wan and Lumina 2 carry their tokenizer in the text-encoder file, and the
    route's words from the text agree with the layout of the real tokenizer's tokens."""
    routes = comfy.submodule("nodes.routes")
    f = fam(comfy, tiny_dir, name)
    pc, _ = comfy.run("EnfoquePatchCLIP", clip=f.clip, weight_mode="attention", capture=False)
    for text in (MULTI, "a (red:1.5) cat, [on] a chair", ""):
        lay = layout_of(comfy.run("CLIPTextEncode", clip=pc, text=text)[0])
        got = routes.prompt_words(text, routes.family_name(name))
        assert got["words"] == list(lay.words), (name, text)
        assert got["tokenizer"] == TOKENIZER[name], (name, got["tokenizer"])


class WanPairs(NaiveReference):
    """Wan with as many video tokens as text tokens: self- and cross-attention calls have the same shapes,
    so this reference takes, as ``WanAttentionBlock.forward`` runs them, every second call of a block."""

    def __init__(self, place: TextPlace):
        super().__init__(place)
        self.seen = 0

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        if q.shape[1] == self.place.n_img:
            self.seen += 1
            if self.seen % 2 == 1:  # the block's self-attention
                return func(q, k, v, heads, *args, **kwargs)
        return super().__call__(func, q, k, v, heads, *args, **kwargs)


def test_wan_cross_attention_told_from_self_attention_of_the_same_shape(comfy, tiny_dir):
    f = fam(comfy, tiny_dir, "wan")
    latent = comfy.run("EmptyHunyuanLatentVideo", width=256, height=256, length=5, batch_size=1)[0]
    g = Fam(f.name, f.model, f.clip, f.pos, f.neg, f.stock_pos, f.stock_neg, latent)
    L = g.stock_pos[0][0].shape[1]
    place = text_place(g, L)
    assert place.n_img == L == 512, "the video has as many tokens as the text"
    ref = WanPairs(place)
    m = g.model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = ref
    patched, probe = patch(comfy, m)
    ksample(comfy, g, patched, g.stock_pos, g.stock_neg, steps=1)
    res = probe.result
    assert len(ref.maps) == len(res.blocks) > 0
    got = res.maps[("positive", 0)].flatten(2).transpose(1, 2)
    torch.testing.assert_close(got.double(), torch.stack(ref.maps).mean(0), atol=1e-5, rtol=0)
