"""EnfoquePatchCLIP, EnfoqueTokenWeights, EnfoqueTextAttentionMaps with ComfyUI's real
tokenizers and small-config encoders."""

from __future__ import annotations

import math

import pytest
import tiny_models
import torch

pytestmark = pytest.mark.host

LONG = ", ".join(["a small red cat sitting on a blue wooden chair in the sunny garden"] * 9)  # ~120 tokens


def encode(comfy, clip, text):
    return comfy.run("CLIPTextEncode", clip=clip, text=text)[0]


def patched(comfy, clip, mode="attention", capture=True):
    return comfy.run("EnfoquePatchCLIP", clip=clip, weight_mode=mode, capture=capture)


@pytest.mark.parametrize("factory", [tiny_models.clip_sd3, tiny_models.clip_flux, tiny_models.clip_sdxl],
                         ids=["sd3", "flux", "sdxl"])
def test_comfy_mode_and_unit_weights_are_stock(comfy, factory):
    clip = factory()
    weighted, plain = "a (red:1.4) cat on a [mat]", "a red cat on a mat"
    stock_w, stock_p = encode(comfy, clip, weighted), encode(comfy, clip, plain)
    c_comfy, _ = patched(comfy, clip, "comfy")
    assert torch.equal(encode(comfy, c_comfy, weighted)[0][0], stock_w[0][0])
    c_att, _ = patched(comfy, clip, "attention")
    out = encode(comfy, c_att, plain)
    assert torch.equal(out[0][0], stock_p[0][0])
    assert torch.equal(out[0][1]["pooled_output"], stock_p[0][1]["pooled_output"])
    # the original CLIP still encodes as before once the patched clone has run
    assert torch.equal(encode(comfy, clip, weighted)[0][0], stock_w[0][0])


def test_attention_weight_acts_from_the_word_on(comfy):
    clip = tiny_models.clip_sd3()
    c, probe = patched(comfy, clip, "attention")
    base = encode(comfy, c, "a photo of a cat on a mat")
    up = encode(comfy, c, "a photo of a (cat:2) on a mat")
    layout = up[0][1]["enfoque_layout"]
    cat = layout.spans[layout.words.index("cat")]
    clip_pos = [p for p in cat if p < 77]
    assert clip_pos == [5]
    assert layout.weights == {p: 2.0 for p in cat}
    diff = (up[0][0] - base[0][0]).abs().amax(-1)[0]
    # CLIP is causal: nothing before "cat" changes, everything from it on does
    assert diff[:5].max().item() == 0.0
    assert (diff[5:9] > 1e-4).all()
    # the tokens that can see "cat" attend more to it (layer 0 sees the same input in both encodes)
    maps = {}
    for name, cond in (("base", base), ("up", up)):
        rec = probe.records[cond[0][1]["enfoque_text_record"]]
        maps[name] = rec.maps["l"].layers[0][0]
    col_b, col_u = maps["base"][:, 5], maps["up"][:, 5]
    assert (col_u[5:] > col_b[5:]).all()
    assert torch.equal(col_u[:5], col_b[:5])  # causal: earlier tokens cannot see "cat" (zero either way)
    assert col_b[:5].abs().max() == 0


def _clip_tokens(tok, word):
    ids = tok.tokenizer(word)["input_ids"]
    return ids[tok.tokens_start:-1] if tok.end_token is not None else ids[tok.tokens_start:]


@pytest.mark.parametrize("text", ["a red cat BREAK a blue dog", LONG, "photograph of an astronaut riding a horse"])
def test_layout_positions_match_comfy_tokenizers_sd3(comfy, text):
    clip = tiny_models.clip_sd3()
    c, _ = patched(comfy, clip)
    cond = encode(comfy, c, text)
    layout = cond[0][1]["enfoque_layout"]
    tokens = clip.tokenize(text)
    n_clip = 77 * len(tokens["l"])
    assert cond[0][0].shape[1] == n_clip + sum(len(x) for x in tokens["t5xxl"])
    flat_l = [t for chunk in tokens["l"] for t, *_ in chunk]
    flat_t5 = [t for chunk in tokens["t5xxl"] for t, *_ in chunk]
    words = [w.strip(",") for w in text.split()]
    assert [w.lower() for w in layout.words] == [w.lower() for w in words]
    for word, span in zip(words, layout.spans, strict=True):
        in_clip = [p for p in span if p < n_clip]
        in_t5 = [p - n_clip for p in span if p >= n_clip]
        assert [flat_l[p] for p in in_clip] == _clip_tokens(clip.tokenizer.clip_l, word), word
        assert [flat_t5[p] for p in in_t5] == _clip_tokens(clip.tokenizer.t5xxl, word), word
    if text == LONG:
        assert max(layout.spans[-1]) >= n_clip and max(p for s in layout.spans for p in s if p < n_clip) >= 77


def test_layout_positions_match_comfy_tokenizers_flux(comfy):
    clip = tiny_models.clip_flux()
    c, _ = patched(comfy, clip)
    text = "a red cat BREAK sitting on a chair"
    cond = encode(comfy, c, text)
    layout = cond[0][1]["enfoque_layout"]
    tokens = clip.tokenize(text)
    flat = [t for chunk in tokens["t5xxl"] for t, *_ in chunk]
    assert cond[0][0].shape[1] == len(flat)
    assert [w.lower() for w in layout.words] == text.lower().split()
    for word, span in zip(text.split(), layout.spans, strict=True):
        assert [flat[p] for p in span] == _clip_tokens(clip.tokenizer.t5xxl, word), word


def test_empty_prompt_and_escaped_parentheses(comfy):
    clip = tiny_models.clip_sd3()
    c, _ = patched(comfy, clip)
    empty = encode(comfy, c, "")[0][1]["enfoque_layout"]
    specials = {p for kinds in empty.specials.values() for ps in kinds.values() for p in ps}
    assert empty.words == () and specials == set(range(empty.context_length))
    nested = encode(comfy, c, r"a ((big:1.2) \(red\) cat:1.5)")[0][1]["enfoque_layout"]
    assert [w for w in nested.words] == ["a", "big", "red", "cat"]
    big = nested.spans[1]
    assert all(abs(nested.weights[p] - 1.2) < 1e-6 for p in big)  # ComfyUI: the inner weight wins
    assert all(abs(nested.weights[p] - 1.5) < 1e-6 for p in nested.spans[3])
    assert not any(p in nested.weights for p in nested.spans[0])


def test_token_weights_node(comfy):
    clip = tiny_models.clip_sd3()
    c, _ = patched(comfy, clip)
    cond = encode(comfy, c, "a red fur cat")
    out = comfy.run("EnfoqueTokenWeights", conditioning=cond, weights="cat:1.5, red fur:0.5")[0]
    lay = out[0][1]["enfoque_layout"]
    for w, expect in (("cat", 1.5), ("red", 0.5), ("fur", 0.5)):
        assert {lay.weights[p] for p in lay.spans[lay.words.index(w)]} == {expect}
    assert cond[0][1]["enfoque_layout"].weights == {}, "the input conditioning was changed"
    with pytest.raises(ValueError, match="'dog'.* is not a word of the prompt; its words: a, red, fur, cat"):
        comfy.run("EnfoqueTokenWeights", conditioning=cond, weights="dog:2")
    with pytest.raises(ValueError, match="cannot read 'cat=2'"):
        comfy.run("EnfoqueTokenWeights", conditioning=cond, weights="cat=2")
    stock = encode(comfy, clip, "a red cat")
    with pytest.raises(ValueError, match="Put Enfoque Patch CLIP before the text encode"):
        comfy.run("EnfoqueTokenWeights", conditioning=stock, weights="cat:2")


def test_text_attention_maps_node(comfy):
    c, probe = patched(comfy, tiny_models.clip_sd3())
    cond = encode(comfy, c, "a red cat")
    maps, image = comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond)
    assert maps.words == ["a", "red", "cat"] and maps.maps.shape == (1, 3, 1, 3)
    assert image.shape[0] == 1 and image.shape[-1] == 3
    rec = probe.records[cond[0][1]["enfoque_text_record"]]
    ref = torch.stack(rec.maps["l"].layers).mean(0)[0]  # [77, 77]
    # word x word = mean over sub-tokens; "a red cat" is one CLIP token each at 1, 2, 3
    torch.testing.assert_close(maps.maps[0, :, 0, :], ref[1:4, 1:4])
    t5, _ = comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond, encoder="t5xxl", layer=0,
                      level="tokens")
    assert t5.maps.shape[1] == t5.maps.shape[3] == cond[0][0].shape[1] - 77
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        comfy.run("EnfoqueTextAttentionMaps", probe=probe, conditioning=cond, layer=9)


def test_sd3_graph_words_and_weights_reach_the_model(comfy, tiny_dir):
    model = tiny_models.sd3(tiny_dir, name="text_sd3").model
    c, _ = patched(comfy, tiny_models.clip_sd3())
    pos = encode(comfy, c, "a red cat on a mat")
    neg = encode(comfy, c, "")
    latent = comfy.run("EmptySD3LatentImage", width=128, height=128, batch_size=1)[0]

    def run(cond):
        m, probe = comfy.run("EnfoquePatchModel", model=model, capture=True, reweight="bias", blocks="0",
                             start_percent=0.0, end_percent=1.0)
        out = comfy.run("KSampler", model=m, seed=1, steps=1, cfg=3.0, sampler_name="euler", scheduler="simple",
                        positive=cond, negative=neg, latent_image=latent, denoise=1.0)[0]
        return comfy.run("EnfoqueAttentionMaps", probe=probe, latent=out, words="")[0]

    base = run(pos)
    assert base.words == ["a", "red", "cat", "on", "a", "mat"]
    up = run(comfy.run("EnfoqueTokenWeights", conditioning=pos, weights="cat:3")[0])
    i = base.words.index("cat")
    assert up.maps[:, i].sum() > 1.5 * base.maps[:, i].sum()


def test_negative_prompt_weights_are_refused_where_attention_cannot_apply_them(comfy):
    clip = tiny_models.clip_sd3()
    c_att, _ = patched(comfy, clip, "attention")
    with pytest.raises(ValueError, match="Enfoque Patch CLIP: the prompt weight -0.5 is negative"):
        encode(comfy, c_att, "a (cat:-0.5)")
    c_comfy, _ = patched(comfy, clip, "comfy")
    cond = encode(comfy, c_comfy, "a (cat:-0.5)")  # ComfyUI's own interpolation takes it
    assert torch.equal(cond[0][0], encode(comfy, clip, "a (cat:-0.5)")[0][0])


def _sample(comfy, model, pos, neg, seed=1):
    latent = comfy.run("EmptySD3LatentImage", width=64, height=64, batch_size=1)[0]
    return comfy.run("KSampler", model=model, seed=seed, steps=2, cfg=3.0, sampler_name="euler", scheduler="simple",
                     positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]["samples"]


def test_comfy_mode_weights_act_once(comfy, tiny_dir):
    """weight_mode comfy: ComfyUI's embedding interpolation applies (word:w), and nothing else does; the
    diffusion model's reweighting gets only what EnfoqueTokenWeights sets. attention: the encoder's
    attention and the diffusion model's (the layout carries the weights)."""
    clip = tiny_models.clip_sd3()
    text = "a red (cat:1.5) on a (mat:0.5)"
    model = tiny_models.sd3(tiny_dir, name="comfy_mode_sd3").model
    stock_pos, neg = encode(comfy, clip, text), encode(comfy, clip, "blurry")
    stock = _sample(comfy, model, stock_pos, neg)
    m, _ = comfy.run("EnfoquePatchModel", model=model, capture=True, reweight="bias", blocks="all",
                     start_percent=0.0, end_percent=1.0)

    c_comfy, _ = patched(comfy, clip, "comfy")
    cond = encode(comfy, c_comfy, text)
    assert torch.equal(cond[0][0], stock_pos[0][0]), "comfy mode must encode as ComfyUI does"
    assert cond[0][1]["enfoque_layout"].weights == {}
    assert torch.equal(_sample(comfy, m, cond, neg), stock), "the prompt's weights reached the diffusion model too"

    weighted = comfy.run("EnfoqueTokenWeights", conditioning=cond, weights="cat:1.5")[0]
    lay = weighted[0][1]["enfoque_layout"]
    assert set(lay.weights) == set(lay.spans[lay.words.index("cat")]) and set(lay.weights.values()) == {1.5}
    assert not torch.equal(_sample(comfy, m, weighted, neg), stock)

    c_att, _ = patched(comfy, clip, "attention")
    lay = encode(comfy, c_att, text)[0][1]["enfoque_layout"]
    cat, mat = lay.spans[lay.words.index("cat")], lay.spans[lay.words.index("mat")]
    assert lay.weights == {**{p: 1.5 for p in cat}, **{p: 0.5 for p in mat}}


def test_other_encode_nodes(comfy):
    """CLIPTextEncodeFlux and CLIPTextEncodeSD3 feed each encoder its own text."""
    c, _ = patched(comfy, tiny_models.clip_flux())
    cond = comfy.run("CLIPTextEncodeFlux", clip=c, clip_l="an oil painting", t5xxl="a red cat", guidance=3.5)[0]
    layout = cond[0][1]["enfoque_layout"]
    assert layout.words == ("a", "red", "cat")  # Flux's context is T5 alone
    tok = c.tokenizer.t5xxl
    flat = [t for chunk in c.tokenize("a red cat")["t5xxl"] for t, *_ in chunk]
    assert [flat[p] for p in layout.spans[1]] == _clip_tokens(tok, "red")
    c3, _ = patched(comfy, tiny_models.clip_sd3())
    cond = comfy.run("CLIPTextEncodeSD3", clip=c3, clip_l="a red cat", clip_g="a red cat", t5xxl="a red cat",
                     empty_padding="none")[0]
    layout = cond[0][1]["enfoque_layout"]
    assert layout.words == ("a", "red", "cat")
    n_clip = 77
    assert [p for p in layout.spans[2] if p < n_clip] == [3] and any(p >= n_clip for p in layout.spans[2])


# --------------------------------------------------------------------------- float64 reference


def _t5_buckets(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's relative position buckets (bidirectional), written out from the T5 paper's scheme."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    large = exact + (torch.log(n.double().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    return out + torch.where(n < exact, n, large.clamp(max=half - 1))


def _reference(module, x: torch.Tensor, key: str, log_w: torch.Tensor | None) -> torch.Tensor:
    """softmax attention of one layer in float64 from its own weights and its input x: ``[B, heads-mean T, T]``."""
    x = x.double()
    t = x.shape[1]
    if key == "t5xxl":
        heads = module.num_heads
        q, k = x @ module.q.weight.double().T, x @ module.k.weight.double().T
        q, k = (a.view(a.shape[0], t, heads, -1).transpose(1, 2) for a in (q, k))
        logits = q @ k.transpose(-1, -2)  # T5 does not scale by 1/sqrt(d)
        bias_mod = module.relative_attention_bias
        if bias_mod is not None:
            pos = torch.arange(t)
            buckets = _t5_buckets(pos[None, :] - pos[:, None], module.relative_attention_num_buckets,
                                  module.relative_attention_max_distance)
            logits = logits + bias_mod.weight.double()[buckets].permute(2, 0, 1)[None]
    else:
        heads = module.heads
        q = x @ module.q_proj.weight.double().T + module.q_proj.bias.double()
        k = x @ module.k_proj.weight.double().T + module.k_proj.bias.double()
        q, k = (a.view(a.shape[0], t, heads, -1).transpose(1, 2) for a in (q, k))
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        logits = logits + torch.full((t, t), -math.inf, dtype=torch.float64).triu(1)  # CLIP is causal
    if log_w is not None:
        logits = logits + log_w[:, None, None, :]
    return torch.softmax(logits, dim=-1).mean(1)


@pytest.mark.parametrize("text", ["a photo of a (cat:1.8) on a [mat]", LONG], ids=["weighted", "two-chunks"])
def test_text_maps_equal_a_float64_reference(comfy, text):
    """Every captured layer of CLIP-L, CLIP-G and T5 equals the attention computed here in float64 from the
    layer's own weights and its input (recorded by a forward pre-hook), with the prompt's weights as
    log w on the keys (attention mode), for the first chunk's row."""
    clip = tiny_models.clip_sd3()
    c, probe = patched(comfy, clip, "attention")
    csm = clip.cond_stage_model
    inputs: dict[str, list] = {"l": [], "g": [], "t5xxl": []}
    handles = []
    for key, attr in (("l", "clip_l"), ("g", "clip_g"), ("t5xxl", "t5xxl")):
        for mod in getattr(csm, attr).modules():
            if type(mod).__name__ in ("CLIPAttention", "T5Attention"):
                def pre(m, args, kwargs, key=key):
                    x = args[0] if args else kwargs["x"]
                    inputs[key].append((m, x.detach().clone()))
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        cond = encode(comfy, c, text)
    finally:
        for h in handles:
            h.remove()
    rec = probe.records[cond[0][1]["enfoque_text_record"]]
    tokens = clip.tokenize(text)
    compared = 0
    for key in ("l", "g", "t5xxl"):
        captured = rec.maps[key].layers
        assert len(captured) == len(inputs[key]) > 0, key
        chunk = tokens[key][0]
        w = torch.tensor([float(item[1]) for item in chunk], dtype=torch.float64)
        log_w = torch.log(w)[None] if bool((w != 1).any()) else None
        if text != LONG:
            assert log_w is not None, f"{key}: the prompt's weight should reach the keys"
        for (module, x), got in zip(inputs[key], captured, strict=True):
            ref = _reference(module, x[:1], key, log_w)
            assert got.shape == ref.shape == (1, len(chunk), len(chunk))
            # the encoders run in float32: q.k rounding on logits of a few units is ~1e-6 of probability
            # (measured here: at most 6e-7)
            torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=0)
            compared += 1
    assert compared == 3 + 3 + 1  # tiny configs: CLIP-L and CLIP-G 3 layers each, T5 1


def test_token_labels_keep_a_real_token_equal_to_clip_g_padding(comfy):
    """CLIP-G pads with id 0, which is also CLIP's "!": a "!" in the prompt keeps its label, the padding
    after the end token is labelled padding."""
    c, probe = patched(comfy, tiny_models.clip_sd3())
    cond = encode(comfy, c, "wow!;")
    rec = probe.records[cond[0][1]["enfoque_text_record"]]
    labels = rec.labels["g"]
    tok = c.tokenizer.clip_g
    ids = [t for t, _ in tok.tokenize_with_weights("wow!;")[0]]
    assert tok.pad_token == 0 and 0 in ids[1 : ids.index(tok.end_token)], ids  # the case at stake
    end = ids.index(tok.end_token)
    assert "<pad>" not in labels[:end] and labels[end] == "<end>", labels[: end + 2]
    assert set(labels[end + 1 :]) == {"<pad>"}
