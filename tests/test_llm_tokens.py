"""Pure tests of the byte-level BPE layout (no ComfyUI): words by the characters each token covers, chat
template tokens told apart, image embeddings in the template (Qwen-Image Edit), left padding, and a
character split across tokens. The vocabulary is written out here in GPT-2's byte-to-character form."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention.layout import build_layout  # noqa: E402
from attention.streams import Stream  # noqa: E402
from attention.words import split_words  # noqa: E402

SPACE = "Ġ"  # GPT-2's character for byte 0x20
NEWLINE = "Ċ"  # ... and for 0x0A


def stream(pieces: list, **kw) -> Stream:
    """A one-chunk byte-level stream whose token ids are the pieces' indices (a dict: an embedding)."""
    vocab = {i: p for i, p in enumerate(pieces) if isinstance(p, str)}
    chunk = [(i if isinstance(p, str) else p, 1.0) for i, p in enumerate(pieces)]
    return Stream(key="qwen25_7b", chunks=[chunk], pieces=vocab, kind="bytelevel", start=None, end=None, **kw)


TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n"


def test_words_and_template_tokens():
    pieces = ["<|im_start|>", "user", NEWLINE, "a", SPACE + "phot", "oreal", "istic", SPACE + "cat", ",",
              SPACE + "3", ".", "5", "kg", "<|im_end|>", NEWLINE]
    s = stream(pieces, templates=(TEMPLATE,))
    words, template = split_words(s)
    assert words == [("a", [3]), ("photorealistic", [4, 5, 6]), ("cat", [7]), ("3.5kg", [9, 10, 11, 12])]
    assert template == [0, 1, 2, 13, 14]
    # the known text and prompt span give the same answer as the template
    text = TEMPLATE.format("a photorealistic cat, 3.5kg")
    assert split_words(stream(pieces, text=text, prompt=(17, 17 + 27))) == (words, template)
    # the context is the stream's end (Qwen-Image drops the first three tokens): template positions shift
    layout = build_layout([s], len(pieces) - 3, {"qwen25_7b": -3})
    assert layout.words == ("a", "photorealistic", "cat", "3.5kg") and layout.spans[0] == (0,)
    assert layout.template == (10, 11)


def test_an_image_embedding_in_the_template_is_read_as_its_placeholder():
    pieces = ["<|im_start|>", "user", NEWLINE, "<|vision_start|>", {"type": "image"}, "<|vision_end|>", "red",
              SPACE + "cat", "<|im_end|>"]
    tpl = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>"
    # unreadable as text without its placeholder: words from the pieces (the template's plain text, "user",
    # cannot be told from the prompt there), special tokens and the image are template
    assert split_words(stream(pieces, templates=(tpl,))) == ([("user", [1]), ("red", [6]), ("cat", [7])],
                                                            [0, 3, 4, 5, 8])
    words, template = split_words(stream(pieces, templates=(tpl,), embed_piece="<|image_pad|>"))
    assert words == [("red", [6]), ("cat", [7])] and template == [0, 1, 2, 3, 4, 5, 8]


def test_left_padding_and_a_character_split_across_tokens():
    cafe = "café".encode()  # 'é' is two bytes; byte-level BPE may split them across tokens
    to_chars = {b: c for c, b in __import__("attention.streams", fromlist=["BYTE_DECODER"]).BYTE_DECODER.items()}
    first, second = "".join(to_chars[b] for b in cafe[:4]), to_chars[cafe[4]]
    pieces = ["<pad>", "<pad>", "[INST]", first, second, SPACE + "noir", "[/INST]"]
    s = stream(pieces, templates=("[INST]{}[/INST]",), pad=0)
    s = Stream(**{**s.__dict__, "chunks": [[(0, 1.0), (0, 1.0), *s.chunks[0][2:]]]})
    words, template = split_words(s)
    assert words == [("café", [3, 4]), ("noir", [5])] and template == [2, 6]
