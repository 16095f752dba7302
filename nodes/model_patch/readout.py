"""Reading a finished run: the maps Enfoque Attention Maps and Enfoque Image Maps give.

One path for every kind of map. A kind says where its maps are in the run's result and what its
labels are: ``cross`` maps are the prompt's captured token columns, labelled by the prompt's words
(each word the mean of its tokens); ``refined`` maps are the same columns refined through the image's
own attention (`attention.refine`); ``concept`` maps are one column per concept of Enfoque Concepts.
The ``words`` text then selects labels by the pack's one rule (`attention.selection`): each item is the
mean of the maps of the words it selects. The mean over the run, the maps of one kept step or block,
and the frames of each kept step, block and latent frame all go through the same selection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...attention.formats import brief, listed
from ...attention.frames import Frame, FramedMaps
from ...attention.maps import pool_tokens
from ...attention.oncelog import OnceLog
from ...attention.selection import NotAWord, Pick, parse_items, select
from ..common.errors import check_option, not_a_word
from ..names import CONCEPTS, PATCH_CLIP, PATCH_MODEL
from .probe import ModelProbe
from .store import ProbeResult

KINDS = ("cross", "concept", "refined")
READS = OnceLog(logging.getLogger(__name__), prefix="Enfoque: ")
PROMPTS = ("positive", "negative")


@dataclass(frozen=True)
class Source:
    """Where one kind of map is in a run's result: token maps ``[B, T, H, W]`` (mean, per kept step, per
    kept block), one label per word, and per word its token indices (into T)."""

    mean: torch.Tensor
    steps: dict[int, torch.Tensor]
    blocks: dict[int, torch.Tensor]
    labels: list[str]
    spans: list[list[int]]
    meta: dict
    default: int | None = None  # how many of the labels an empty words text selects (None: all)


def _cross(result: ProbeResult, key: tuple[str, int], probe: ModelProbe, node: str, refined: bool = False) -> Source:
    prompt, index = key
    if refined and not result.refined:
        raise ValueError(f"{node}: kind refined needs the refined maps, and this run had refine off on "
                         f"{PATCH_MODEL}; set refine to self-attention there and run again, or set kind to cross.")
    if not result.maps and result.notes:
        raise ValueError(f"{node}: the last sampling run of this {PATCH_MODEL} captured no maps: "
                         f"{brief('; '.join(result.notes), 600)}. Fix what these say and run again.")
    if key not in result.maps:
        have = listed(f"{r} #{i}" for r, i in sorted(result.maps))
        hint = f" To see the negative prompt, turn on capture_negative on {PATCH_MODEL}." if prompt == "negative" else ""
        raise ValueError(f"{node}: no maps of the {prompt} prompt number {index}; recorded: {have}. "
                         f"Set prompt and prompt_number to one of these.{hint}")
    route = result.routes[key]
    labels, positions = route.layout.labelled_spans()
    spans = [route.group_of(s) for s in positions]
    meta = {"token_spans": route.layout.encoder_spans, "labelled": route.layout.labelled,
            "reweight": probe.config.reweight, "frames": result.frames,
            "normalisation": "none (mean attention probability over heads, blocks and steps)",
            "special_share": special_share(result.maps[key], [len(g) for g in route.groups],
                                           labels[len(route.layout.words):], spans[len(route.layout.words):])}
    if refined:
        meta.update(kind="refined", normalisation="each call's map through the image tokens' own attention "
                    "(mean over heads), then the mean over blocks and steps")
        return Source(result.refined_maps[key], result.refined_step_maps.get(key, {}),
                      result.refined_block_maps.get(key, {}), labels, spans, meta, len(route.layout.words))
    return Source(result.maps[key], result.step_maps.get(key, {}), result.block_maps.get(key, {}), labels, spans,
                  meta, len(route.layout.words))


def special_share(token_maps: torch.Tensor, sizes: list[int], labels: list[str],
                  spans: list[list[int]]) -> dict[str, float]:
    """The share of the attention the image gives every captured token of the prompt (words, punctuation
    and the rest) that the start, end, padding and template tokens take (the "attention sinks"), per kind (``<start>``: every encoder's start
    tokens, each context position once), over the whole run and batch. A kept map of ``size`` tokens holds
    their mean."""
    mass = token_maps.double().sum(dim=(0, 2, 3)) * torch.tensor(sizes, dtype=torch.float64)
    total = float(mass.sum())
    kinds: dict[str, set[int]] = {}
    for label, s in zip(labels, spans, strict=True):
        kinds.setdefault(label.split(":")[0].rstrip(">") + ">", set()).update(s)
    return {kind: round(float(mass[sorted(cols)].sum()) / total, 6) if total > 0 else 0.0
            for kind, cols in kinds.items() if cols and kind != "<other>"}


def _concept(result: ProbeResult, key: tuple[str, int], node: str) -> Source:
    prompt, index = key
    if not result.concepts:
        raise ValueError(f"{node}: kind is concept, but {PATCH_MODEL} has no concepts; connect {CONCEPTS} to its "
                         "concepts input (or set kind to cross).")
    if key not in result.concept_maps:
        have = listed(f"{r} #{i}" for r, i in sorted(result.concept_maps))
        raise ValueError(f"{node}: no concept maps of the {prompt} prompt number {index}; recorded: {have}. "
                         "Set prompt and prompt_number to one of these.")
    meta = {"kind": "concept", "concepts": list(result.concepts),
            "normalisation": "softmax over the concepts of image-output . concept-output per block call, "
                             "mean over blocks and steps (ConceptAttention)"}
    return Source(result.concept_maps[key], result.concept_step_maps.get(key, {}), result.concept_block_maps.get(key, {}),
                  list(result.concepts), [[i] for i in range(len(result.concepts))], meta)


def _picks(src: Source, kind: str, words: str, labelled: bool, node: str) -> list[Pick]:
    """What ``words`` selects among the source's labels, keeping only words that have maps."""
    if not parse_items(words):
        return [Pick(label, (i,)) for i, label in enumerate(src.labels[: src.default]) if src.spans[i]]
    captured = [label for label, s in zip(src.labels[: src.default], src.spans, strict=False) if s]
    if kind == "concept":
        field, what, listing, fix = "words", "one of the concepts", "concepts", \
            "Pick concepts from these, or leave words empty for all of them."
    else:
        field, what, listing, fix = "words", "a captured word of the prompt", "captured words", \
            "Pick words from these, or leave words empty for all of them."
    try:
        picks = select(src.labels, words)
    except NotAWord as exc:
        if not labelled and not exc.item.startswith("#"):
            raise ValueError(
                f"{node}: {brief(exc.item)!r} in words: the prompt was encoded by a stock CLIP, so its maps are "
                f"labelled by context position (#0, #1, ...). Put {PATCH_CLIP} before the text encode to "
                "use words, or name positions such as #3."
            ) from None
        raise not_a_word(node, exc.item, field, what, captured, listing, fix) from None
    out = []
    for p in picks:
        kept = tuple(i for i in p.indices if src.spans[i])
        if not kept:
            raise not_a_word(node, p.label, field, what, captured, listing, fix)
        out.append(Pick(p.label, kept))
    return out


def picked_maps(token_maps: torch.Tensor, spans: list[list[int]], picks: list[Pick], labels: list[str]) -> torch.Tensor:
    """``[B, items, H, W]``: each pick the mean of its words' maps, a word's map the mean of its tokens'."""
    needed = list(dict.fromkeys(i for p in picks for i in p.indices))
    at = {i: j for j, i in enumerate(needed)}
    words = pool_tokens(token_maps, [spans[i] for i in needed], words=[labels[i] for i in needed])
    return torch.stack([words[:, [at[i] for i in p.indices]].mean(dim=1) for p in picks], dim=1)


def over_frames(maps: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, words, frames * H, W]`` (a video's maps, frames stacked on the rows) -> the mean over its frames."""
    return maps if frames <= 1 else maps.unflatten(2, (frames, -1)).mean(2)


def _one(node: str, kind: str, index: int, kept: bool, per: dict) -> torch.Tensor:
    """The maps of one step or one block, with errors a user can act on."""
    if not kept:
        raise ValueError(f"{node}: {kind} {index} needs the map of each {kind}; turn on keep_{kind}s on "
                         f"{PATCH_MODEL}, or set {kind} to -1 for the mean.")
    if index not in per:
        raise ValueError(f"{node}: {kind} {index} was not captured; captured {kind}s: {listed(sorted(per))}. "
                         f"Set {kind} to one of them, or -1 for the mean.")
    return per[index]


def find_result(probe, latent, node: str) -> tuple[ProbeResult, tuple[int, ...] | None]:
    """The finished run of ``probe`` whose latent ``latent`` is (and the latent's shape)."""
    if not isinstance(probe, ModelProbe):
        got = f"a probe of {PATCH_CLIP}" if getattr(probe, "kind", None) == "clip" else type(probe).__name__
        raise ValueError(f"{node}: probe is {got}, not the probe of {PATCH_MODEL}; connect the probe output "
                         f"of {PATCH_MODEL}.")
    if not probe.config.capture:
        raise ValueError(f"{node}: capture is off on {PATCH_MODEL}, so nothing was recorded; turn capture on.")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) and samples.ndim >= 3 else None
    result = probe.result_for(shape, samples)
    if result is not None and result.output is not None and not result.returned(samples):
        READS.once((id(probe), result.run), "%s: this latent is not one a kept run of its probe returned (changed "
                   "after sampling?); its maps are those of the newest run of its shape (run %d)", node, result.run)
    if result is None and not probe.results:
        raise ValueError(
            f"{node}: no finished sampling run was recorded by this probe; connect the LATENT output of a "
            f"sampler that uses the MODEL from the same {PATCH_MODEL}, and run it."
        )
    if result is None:
        kept = listed(f"{r.batch} image(s) on a {r.grid[0]}x{r.grid[1]} grid" for r in probe.results)
        gh, gw = probe.geometry.grid(shape)
        raise ValueError(
            f"{node}: no sampling run of this probe matches the latent ({shape[0]} image(s) on a {gh}x{gw} grid); "
            f"recorded runs: {kept}. Connect the LATENT output of the sampler that used the MODEL from this "
            f"{PATCH_MODEL}."
        )
    return result, shape


def read_maps(probe, latent, words: str = "", prompt: str = "positive", cond_index: int = 0, step: int = -1,
              block: int = -1, kind: str = "cross", node: str = "") -> FramedMaps:
    """The maps of a finished run of ``probe``: ``kind`` cross or refined (words) or concept, the ``words`` selected,
    the mean or one ``step`` / ``block``, with the frames of each kept step, block and latent frame.
    Errors name ``node``."""
    check_option(node, "kind", kind, KINDS)
    check_option(node, "prompt", prompt, PROMPTS)
    result, shape = find_result(probe, latent, node)
    step, block, cond_index = int(step), int(block), int(cond_index)
    key = (prompt, cond_index)
    src = _concept(result, key, node) if kind == "concept" else _cross(result, key, probe, node, kind == "refined")
    if step >= 0 and block >= 0:
        raise ValueError(f"{node}: step {step} and block {block} are both set; choose a step or a block, "
                         "and set the other to -1.")
    token_maps, steps, blocks = src.mean, result.active_steps, result.blocks
    if step >= 0:
        token_maps, steps = _one(node, "step", step, probe.config.keep_steps, src.steps), [step]
    if block >= 0:
        token_maps, blocks = _one(node, "block", block, probe.config.keep_blocks, src.blocks), [block]
    labelled = src.meta.get("labelled", True)
    picks = _picks(src, kind, words or "", labelled, node)
    labels = [p.label for p in picks]
    n = result.frames if kind != "concept" else 1

    def pooled(m: torch.Tensor) -> torch.Tensor:
        return picked_maps(m, src.spans, picks, src.labels)

    def framed(per: dict, caption: Callable[[int], str]) -> tuple[Frame, ...]:
        return tuple(Frame(caption(k), over_frames(pooled(per[k]), n)) for k in sorted(per))

    sigmas = result.step_sigmas
    per_pixel = pooled(token_maps)
    video = ()
    if n > 1:
        per_frame = per_pixel.unflatten(2, (n, -1))
        video = tuple(Frame(f"latent frame {t}", per_frame[:, :, t].contiguous()) for t in range(n))
    lh, lw = (shape[-2], shape[-1]) if shape is not None else (result.grid[0] // n, result.grid[1])
    meta = {
        "model_family": probe.family,
        "prompt": prompt,
        "cond_index": cond_index,
        "words": labels,
        "blocks": blocks,
        "steps": steps,
        "step_sigmas": {str(k): v for k, v in sorted(sigmas.items()) if k in steps},
        "sigma_window": [probe.config.start_percent, probe.config.end_percent],
        "grid": [result.grid[0] // n, result.grid[1]],
        "image_size": [int(lh) * probe.downscale, int(lw) * probe.downscale],
        "run": result.run,
        **src.meta,
    }
    if kind != "concept":
        route = result.routes[key]
        meta["context_positions"] = [[route.columns[c] for w in p.indices for g in src.spans[w]
                                      for c in route.groups[g]] for p in picks]
    return FramedMaps(
        maps=over_frames(per_pixel, n), words=labels, meta=meta,
        steps=framed(src.steps, lambda k: f"step {k}" + (f"  sigma {sigmas[k]:.3f}" if k in sigmas else "")),
        blocks=framed(src.blocks, lambda k: f"block {k}"), frames=video,
    )
