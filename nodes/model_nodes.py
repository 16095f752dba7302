"""EnfoquePatchModel and EnfoqueAttentionMaps: the diffusion model's attention to each word."""

from __future__ import annotations

import math

import comfy.patcher_extension as patcher_extension
import torch
from comfy_api.latest import io

from ..attention.maps import pool_tokens, share_of_text
from ..attention.tokens import brief, normalise_word, parse_blocks
from .concepts import Concepts
from .model_hooks import SUPPORTED, ModelProbe, ProbeConfig, block_count, install, model_family
from .notices import IgnoredWeightsNotice
from .output_nodes import word_preview_images
from .types import (
    ATTENTION_MAPS,
    CONCEPTS,
    PATCH_CLIP,
    PATCH_MODEL,
    ConceptsType,
    Frame,
    FramedMaps,
    Maps,
    ModelProbeType,
    listed,
)

CATEGORY = "Enfoque"


def word_spans(layout, columns: list[int], query: str, node: str) -> tuple[list[str], list[list[int]]]:
    """Labels and, per label, indices into the captured columns."""
    col = {p: i for i, p in enumerate(columns)}
    if not query.strip():
        labels, spans = [], []
        for w, s in zip(layout.words, layout.spans, strict=True):
            idx = [col[p] for p in s if p in col]
            if idx:
                labels.append(w)
                spans.append(idx)
        return labels, spans
    labels, spans = [], []
    for item in dict.fromkeys(x.strip() for x in query.split(",")):  # a repeated word is one map
        if not item:
            continue
        if not layout.labelled:
            if not item.startswith("#") or not item[1:].isdigit():
                raise ValueError(
                    f"{node}: {brief(item)!r} in words: the prompt was encoded by a stock CLIP, so its maps are "
                    f"labelled by context position (#0, #1, ...). Put {PATCH_CLIP} before the text encode to "
                    "use words, or name positions such as #3."
                )
            hits = [int(item[1:])] if int(item[1:]) < len(layout.words) else []
        else:
            hits = layout.find(item)
        idx = [col[p] for i in hits for p in layout.spans[i] if p in col]
        if not idx:
            captured = [w for w, s in zip(layout.words, layout.spans, strict=True) if any(p in col for p in s)]
            raise ValueError(
                f"{node}: {brief(item)!r} in words is not a captured word of the prompt; captured words: "
                f"{listed(captured)}. Pick words from these, or leave words empty for all of them."
            )
        labels.append(item)
        spans.append(idx)
    return labels, spans


def pick_one(node: str, kind: str, index: int, kept: bool, per: dict):
    """The map of one step or one block, with errors a user can act on."""
    if not kept:
        raise ValueError(f"{node}: {kind} {index} needs the map of each {kind}; turn on keep_{kind}s on "
                         f"{PATCH_MODEL}, or set {kind} to -1 for the mean.")
    if index not in per:
        raise ValueError(f"{node}: {kind} {index} was not captured; captured {kind}s: {listed(sorted(per))}. "
                         f"Set {kind} to one of them, or -1 for the mean.")
    return per[index]


def over_frames(maps: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, words, frames * H, W]`` (a video's maps, frames stacked on the rows) -> the mean over its frames."""
    return maps if frames <= 1 else maps.unflatten(2, (frames, -1)).mean(2)


def frames_of(per: dict, spans: list[list[int]], labels: list[str], caption, frames: int = 1) -> tuple[Frame, ...]:
    """One word-pooled map per kept step or block, in order, each with its caption (a video's: the mean
    over its latent frames)."""
    return tuple(Frame(caption(k), over_frames(pool_tokens(per[k], spans, words=labels), frames))
                 for k in sorted(per))


def chips_ui(out) -> dict:
    """For the frontend's word chips (js/enfoque.js): words, shares, one heatmap PNG per word."""
    return {
        "enfoque_words": list(out.words),
        "enfoque_shares": [[round(float(s), 6) for s in row] for row in share_of_text(out).tolist()],
        "enfoque_word_images": word_preview_images(out),
    }


def concept_labels(names: tuple[str, ...], query: str, node: str) -> tuple[list[str], list[list[int]]]:
    """Concept names and their indices; ``query`` (comma separated) picks some, empty = all."""
    if not query.strip():
        return list(names), [[i] for i in range(len(names))]
    low = [normalise_word(n) for n in names]
    labels, spans = [], []
    for item in dict.fromkeys(x.strip() for x in query.split(",")):
        if not item:
            continue
        if normalise_word(item) not in low:
            raise ValueError(f"{node}: {brief(item)!r} in words is not one of the concepts: {listed(names)}. Pick "
                             "concepts from these, or leave words empty for all of them.")
        labels.append(item)
        spans.append([low.index(normalise_word(item))])
    return labels, spans


def concept_output(node: str, probe, res, key, words: str, prompt: str, cond_index: int, step: int, block: int,
                   shape) -> FramedMaps:
    """EnfoqueAttentionMaps with kind = concept."""
    if not res.concepts:
        raise ValueError(f"{node}: kind is concept, but {PATCH_MODEL} has no concepts; connect {CONCEPTS} to its "
                         "concepts input (or set kind to cross).")
    if key not in res.concept_maps:
        have = listed(f"{r} #{i}" for r, i in sorted(res.concept_maps))
        raise ValueError(f"{node}: no concept maps of the {prompt} prompt number {cond_index}; recorded: {have}. "
                         "Set prompt and prompt_number to one of these.")
    if step >= 0 and block >= 0:
        raise ValueError(f"{node}: step {step} and block {block} are both set; choose a step or a block, "
                         "and set the other to -1.")
    maps, steps, blocks = res.concept_maps[key], res.active_steps, res.blocks
    if step >= 0:
        maps = pick_one(node, "step", step, probe.config.keep_steps, res.concept_step_maps.get(key, {}))
        steps = [step]
    if block >= 0:
        maps = pick_one(node, "block", block, probe.config.keep_blocks, res.concept_block_maps.get(key, {}))
        blocks = [block]
    labels, spans = concept_labels(res.concepts, words, node)
    sigmas = res.step_sigmas
    step_frames = frames_of(res.concept_step_maps.get(key, {}), spans, labels,
                            lambda k: f"step {k}" + (f"  sigma {sigmas[k]:.3f}" if k in sigmas else ""))
    block_frames = frames_of(res.concept_block_maps.get(key, {}), spans, labels, lambda k: f"block {k}")
    lh, lw = (shape[-2], shape[-1]) if shape is not None else res.grid
    meta = {
        "kind": "concept",
        "model_family": probe.family,
        "prompt": prompt,
        "cond_index": cond_index,
        "words": labels,
        "concepts": list(res.concepts),
        "blocks": blocks,
        "steps": steps,
        "step_sigmas": {str(k): v for k, v in sorted(sigmas.items()) if k in steps},
        "sigma_window": [probe.config.start_percent, probe.config.end_percent],
        "grid": list(res.grid),
        "image_size": [int(lh) * probe.downscale, int(lw) * probe.downscale],
        "normalisation": "softmax over the concepts of image-output . concept-output per block call, "
                         "mean over blocks and steps (ConceptAttention)",
        "run": res.run,
    }
    out = FramedMaps(maps=pool_tokens(maps, spans, words=labels), words=labels, meta=meta, steps=step_frames,
                     blocks=block_frames)
    return out


class EnfoquePatchModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoquePatchModel",
            display_name=PATCH_MODEL,
            category=CATEGORY,
            description="Instruments the diffusion model's attention: exact per-word attention maps (read them "
            f"with {ATTENTION_MAPS}) and word weights that act inside attention (from the prompt's (word:1.2) "
            f"or from Enfoque Token Weights). Supports {SUPPORTED}.",
            inputs=[
                io.Model.Input("model"),
                io.Boolean.Input("capture", default=True, tooltip="Record where the image attends to each prompt word."),
                io.Combo.Input(
                    "reweight", options=["off", "bias", "scale"], default="bias",
                    tooltip="How word weights act inside attention. bias: a weight changes the word's share of "
                    "the attention and the other words make room (0 removes the word). scale: the word's "
                    "attention is multiplied, nothing else changes (as Prompt-to-Prompt). off: weights are "
                    "ignored (a notice says so when the prompt has some).",
                ),
                io.String.Input("blocks", default="all", tooltip="Blocks to capture and reweight: 'all', '8-16' or '0,3,5'. "
                                "Flux numbers double blocks first, then single blocks."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Start of the step window, as in ComfyUI's own nodes."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="End of the step window, as in ComfyUI's own nodes."),
                io.Boolean.Input("capture_negative", default=False, optional=True,
                                 tooltip="Also record the negative prompt's maps."),
                io.String.Input("capture_words", default="", optional=True,
                                tooltip="Only capture these words (comma separated); empty = all words."),
                io.Float.Input("budget_mb", default=1024.0, min=1.0, max=65536.0, step=1.0, optional=True,
                               tooltip="Most memory, in MB, the captured maps may take."),
                io.Boolean.Input("keep_steps", default=False, optional=True,
                                 tooltip=f"Also keep one map per sampling step ({ATTENTION_MAPS}' step input, "
                                 "Enfoque Heatmaps' over: steps); each step costs as much memory as the mean, "
                                 "within budget_mb."),
                io.Boolean.Input("keep_blocks", default=False, optional=True,
                                 tooltip=f"Also keep one map per block ({ATTENTION_MAPS}' block input, "
                                 "Enfoque Heatmaps' over: blocks); each block costs as much memory as the mean, "
                                 "within budget_mb."),
                ConceptsType.Input("concepts", optional=True,
                                   tooltip=f"Concepts from {CONCEPTS}: they run through the joint blocks beside "
                                   f"the prompt and give concept maps ({ATTENTION_MAPS} with kind concept); the "
                                   "picture does not change. SD3 / SD3.5 and Flux.1."),
            ],
            outputs=[io.Model.Output(), ModelProbeType.Output(display_name="probe")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, capture, reweight, blocks, start_percent, end_percent,
                capture_negative=False, capture_words="", budget_mb=1024.0, keep_steps=False,
                keep_blocks=False, concepts=None) -> io.NodeOutput:
        node = PATCH_MODEL
        if reweight not in ("off", "bias", "scale"):
            raise ValueError(f"{node}: reweight {brief(reweight)!r} is not an option; options: off, bias, scale. "
                             "Pick one of them.")
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent), ("budget_mb", budget_mb)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{node}: {name} {brief(value)!r} is not a number; set it to a number in its range.")
        if budget_mb <= 0:
            raise ValueError(f"{node}: budget_mb {budget_mb} is not positive; set the megabytes the maps may take, "
                             "e.g. 1024.")
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError(
                f"{node}: start_percent {start_percent} is after end_percent {end_percent}; set start_percent to "
                "at most end_percent (both between 0 and 1)."
            )
        family, dm = model_family(model)
        selected = parse_blocks(blocks, block_count(family, dm), node)
        words = tuple(w.strip() for w in (capture_words or "").split(",") if w.strip())
        config = ProbeConfig(capture=bool(capture), reweight=reweight, blocks=selected,
                             start_percent=float(start_percent), end_percent=float(end_percent),
                             capture_negative=bool(capture_negative), capture_words=words,
                             budget_mb=float(budget_mb), keep_steps=bool(keep_steps),
                             keep_blocks=bool(keep_blocks))
        if concepts is not None and not isinstance(concepts, Concepts):
            raise ValueError(f"{node}: concepts is {type(concepts).__name__}, not the output of {CONCEPTS}; connect "
                             f"the concepts output of {CONCEPTS}.")
        patched, probe = install(model, config, concepts=concepts)
        # with reweight off, weights on the prompt do nothing: say so at each sampling run (and clear it otherwise)
        patched.add_wrapper_with_key(
            patcher_extension.WrappersMP.OUTER_SAMPLE, probe.key + "_notice",
            IgnoredWeightsNotice(cls.hidden.unique_id if cls.hidden else None, active=reweight == "off"),
        )
        return io.NodeOutput(patched, probe)


class EnfoqueAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EnfoqueAttentionMaps",
            display_name=ATTENTION_MAPS,
            category=CATEGORY,
            description=f"Per-word attention maps of the last sampling run of a model patched by {PATCH_MODEL}.",
            inputs=[
                ModelProbeType.Input("probe", tooltip=f"The probe output of {PATCH_MODEL}."),
                io.Latent.Input("latent", tooltip="The sampler's output; it only makes this node run after sampling."),
                io.String.Input("words", default="", tooltip="Words or phrases, comma separated; empty = every prompt word."),
                io.Combo.Input("prompt", options=["positive", "negative"], default="positive", optional=True,
                               tooltip="Whose maps: the positive prompt's, or the negative's (needs capture_negative "
                               f"on {PATCH_MODEL})."),
                io.Int.Input("cond_index", display_name="prompt_number", default=0, min=0, max=64, optional=True,
                             tooltip="Which prompt, when several conditionings were combined (Conditioning "
                             "(Combine)): 0 = the first."),
                io.Int.Input("step", default=-1, min=-1, max=10000, optional=True,
                             tooltip="-1 = mean over the step window; k = the map of sampling step k "
                             f"(needs keep_steps on {PATCH_MODEL})."),
                io.Int.Input("block", default=-1, min=-1, max=1000, optional=True,
                             tooltip="-1 = mean over the blocks; k = the map of block k alone "
                             f"(needs keep_blocks on {PATCH_MODEL}; not together with step)."),
                io.Combo.Input("kind", options=["cross", "concept"], default="cross", optional=True,
                               tooltip="cross: where the image attends to each prompt word. concept: concept maps "
                               f"(the concepts of {CONCEPTS} connected to {PATCH_MODEL}; words then picks "
                               "concepts), each pixel's share among the concepts."),
            ],
            outputs=[Maps.Output(display_name="maps")],
        )

    @classmethod
    def execute(cls, probe, latent, words, prompt="positive", cond_index=0, step=-1, block=-1,
                kind="cross") -> io.NodeOutput:
        out = cls.read(probe, latent, words, prompt, cond_index, step, block, kind)
        return io.NodeOutput(out, ui=chips_ui(out))

    @staticmethod
    def read(probe, latent, words, prompt="positive", cond_index=0, step=-1, block=-1, kind="cross",
             node: str = ATTENTION_MAPS) -> FramedMaps:
        """The maps, without the node's previews; errors in ``node``'s name (Enfoque Image Maps reads
        its runs' maps here too)."""
        if kind not in ("cross", "concept"):
            raise ValueError(f"{node}: kind {brief(kind)!r} is not an option; options: cross, concept. "
                             "Pick one of them.")
        if not isinstance(probe, ModelProbe):
            got = f"a probe of {PATCH_CLIP}" if getattr(probe, "kind", None) == "clip" else type(probe).__name__
            raise ValueError(f"{node}: probe is {got}, not the probe of {PATCH_MODEL}; connect the probe output "
                             f"of {PATCH_MODEL}.")
        if prompt not in ("positive", "negative"):
            raise ValueError(f"{node}: prompt {brief(prompt)!r} is not an option; options: positive, negative. "
                             "Pick one of them.")
        if not probe.config.capture:
            raise ValueError(f"{node}: capture is off on {PATCH_MODEL}, so nothing was recorded; turn capture on.")
        samples = latent.get("samples") if isinstance(latent, dict) else None
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) and samples.ndim >= 3 else None
        res = probe.result_for(shape)
        if res is None and not probe.results:
            raise ValueError(
                f"{node}: no finished sampling run was recorded by this probe; connect the LATENT output of a "
                f"sampler that uses the MODEL from the same {PATCH_MODEL}, and run it."
            )
        if res is None:
            kept = listed(f"{r.batch} image(s) on a {r.grid[0]}x{r.grid[1]} grid" for r in probe.results)
            gh, gw = probe.grid_of(shape)
            raise ValueError(
                f"{node}: no sampling run of this probe matches the latent ({shape[0]} image(s) on a {gh}x{gw} grid); "
                f"recorded runs: {kept}. Connect the LATENT output of the sampler that used the MODEL from this "
                f"{PATCH_MODEL}."
            )
        key = (prompt, int(cond_index))
        if kind == "concept":
            return concept_output(node, probe, res, key, words, prompt, int(cond_index), int(step), int(block),
                                  shape)
        if not res.maps and res.notes:
            raise ValueError(f"{node}: the last sampling run of this {PATCH_MODEL} captured no maps: "
                             f"{brief('; '.join(res.notes), 600)}. Fix what these say and run again.")
        if key not in res.maps:
            have = listed(f"{r} #{i}" for r, i in sorted(res.maps))
            hint = f" To see the negative prompt, turn on capture_negative on {PATCH_MODEL}." if prompt == "negative" else ""
            raise ValueError(f"{node}: no maps of the {prompt} prompt number {cond_index}; recorded: {have}. "
                             f"Set prompt and prompt_number to one of these.{hint}")
        route = res.routes[key]
        token_maps = res.maps[key]
        steps = res.active_steps
        if int(step) >= 0 and int(block) >= 0:
            raise ValueError(f"{node}: step {step} and block {block} are both set; choose a step or a block, "
                             "and set the other to -1.")
        if int(step) >= 0:
            per_step = res.step_maps.get(key, {})
            token_maps, steps = pick_one(node, "step", int(step), probe.config.keep_steps, per_step), [int(step)]
        blocks = res.blocks
        if int(block) >= 0:
            per_block = res.block_maps.get(key, {})
            token_maps, blocks = pick_one(node, "block", int(block), probe.config.keep_blocks, per_block), [int(block)]
        labels, spans = word_spans(route.layout, route.columns, words, node)
        n = res.frames
        maps = over_frames(pool_tokens(token_maps, spans, words=labels), n)
        sigmas = res.step_sigmas
        step_frames = frames_of(
            res.step_maps.get(key, {}), spans, labels,
            lambda k: f"step {k}" + (f"  sigma {sigmas[k]:.3f}" if k in sigmas else ""), n,
        )
        block_frames = frames_of(res.block_maps.get(key, {}), spans, labels, lambda k: f"block {k}", n)
        video_frames = ()
        if n > 1:
            per_frame = pool_tokens(token_maps, spans, words=labels).unflatten(2, (n, -1))
            video_frames = tuple(Frame(f"latent frame {t}", per_frame[:, :, t].contiguous()) for t in range(n))
        lh, lw = (shape[-2], shape[-1]) if shape is not None else (res.grid[0] // n, res.grid[1])
        scale = probe.downscale
        meta = {
            "model_family": probe.family,
            "prompt": prompt,
            "cond_index": int(cond_index),
            "words": labels,
            "context_positions": [[route.columns[i] for i in s] for s in spans],
            "token_spans": route.layout.encoder_spans,
            "labelled": route.layout.labelled,
            "blocks": blocks,
            "steps": steps,
            "step_sigmas": {str(k): v for k, v in sorted(sigmas.items()) if k in steps},
            "sigma_window": [probe.config.start_percent, probe.config.end_percent],
            "reweight": probe.config.reweight,
            "grid": [res.grid[0] // n, res.grid[1]],
            "frames": n,
            "image_size": [int(lh) * scale, int(lw) * scale],
            "normalisation": "none (mean attention probability over heads, blocks and steps)",
            "run": res.run,
        }
        out = FramedMaps(maps=maps, words=labels, meta=meta, steps=step_frames, blocks=block_frames,
                         frames=video_frames)
        return out
