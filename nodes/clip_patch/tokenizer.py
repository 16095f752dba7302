"""The patched CLIP's tokenizer: the shared one, called as is, plus the text of what it tokenized.

The clone's own attribute: CLIP.clone shares the tokenizer object, which stays as it is. For byte-level
LLM encoders, whose ``(word:w)`` ComfyUI does not parse, weight_mode attention or both parses it here
with ComfyUI's own parser, hands the LLM the prompt without the syntax, and gives the word's tokens the
weight (which then acts in attention only).
"""

from __future__ import annotations

from ..common.clones import SharedByClones
from .encoders import ENCODERS, llm_text, parse_weighted, sub_tokenizer, text_words_of, weigh_tokens
from .probe import ClipProbe


class TextTokenizer(SharedByClones):
    """The shared tokenizer, called as is; its probe remembers the words of what it tokenized."""

    def __init__(self, inner, probe: ClipProbe) -> None:
        self.inner, self.probe = inner, probe

    def __getattr__(self, name):  # everything else is the wrapped tokenizer's (clip_l, untokenize, ...)
        if name in ("inner", "probe"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        disable = bool(kwargs.get("disable_weights", False))
        llms = [e for e in ENCODERS.values() if e.llm and sub_tokenizer(self.inner, e) is not None]
        prompt, spans = text, []
        if llms and isinstance(text, str) and self.probe.weight_mode != "comfy" and not disable:
            prompt, spans = parse_weighted(text)
        out = self.inner.tokenize_with_weights(prompt, return_word_ids, **kwargs)
        if not isinstance(out, dict):
            return out
        for enc in ENCODERS.values():
            chunks, tok = out.get(enc.key), sub_tokenizer(self.inner, enc)
            if not isinstance(chunks, list) or tok is None:
                continue
            if enc.llm:
                info = llm_text(self.inner, tok, enc, chunks, prompt, kwargs)
                if spans and info.text is not None:
                    chunks = out[enc.key] = weigh_tokens(chunks, tok, enc, info, spans)
                    self.probe.attention_only.add(enc.key)
                self.probe.remember_text(chunks, info)
                continue
            words = text_words_of(enc, tok, text, disable)  # CLIP, T5, umT5, Gemma 2: ComfyUI parses weights
            if words is not None:
                self.probe.remember_text(chunks, words)
        return out

    def state_dict(self):
        return self.inner.state_dict()
