"""Enfoque Patch Model and Enfoque Attention Maps: the diffusion model's attention to each word."""

from __future__ import annotations

import math

from comfy_api.latest import io

from ..attention.formats import brief, parse_blocks
from .common.errors import check_option
from .common.notify import notify
from .common.previews import chips, negative_chips
from .model_patch.checks import capture_words as capture_items
from .model_patch.concepts import Concepts
from .model_patch.families import supported
from .model_patch.install import block_count, install
from .model_patch.readout import KINDS, read_maps
from .model_patch.state import REFINE, REWEIGHT, ProbeConfig
from .names import ATTENTION_MAPS, CONCEPTS, PATCH_MODEL
from .sockets import ConceptsType, Maps, ModelProbeType, schema


class EnfoquePatchModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoquePatchModel", inputs=[
                io.Model.Input("model"),
                io.Boolean.Input("capture", default=True, tooltip="Record where the image attends to each prompt word."),
                io.Combo.Input(
                    "reweight", options=list(REWEIGHT), default="bias",
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
                                tooltip="Only capture these words (comma separated, as every words input reads "
                                "them: a phrase, word#2 for its second occurrence); empty = all words."),
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
                io.Combo.Input("refine", options=list(REFINE), default="off", optional=True,
                               tooltip="self-attention: also record refined maps, each attention call's maps "
                               "carried through the image's own attention in that call (sharper, on the objects); "
                               f"read them with {ATTENTION_MAPS}' kind refined. The picture does not change."),
            ],
            outputs=[io.Model.Output(), ModelProbeType.Output(display_name="probe")], more=f"Supports {supported()}.",
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, capture, reweight, blocks, start_percent, end_percent,
                capture_negative=False, capture_words="", budget_mb=1024.0, keep_steps=False,
                keep_blocks=False, concepts=None, refine="off") -> io.NodeOutput:
        node = PATCH_MODEL
        check_option(node, "reweight", reweight, REWEIGHT)
        check_option(node, "refine", refine, REFINE)
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
        if concepts is not None and not isinstance(concepts, Concepts):
            raise ValueError(f"{node}: concepts is {type(concepts).__name__}, not the output of {CONCEPTS}; connect "
                             f"the concepts output of {CONCEPTS}.")
        node_id = cls.hidden.unique_id if cls.hidden else None
        notify(node_id, "")  # a notice of an earlier run no longer holds; this run's sampling says it again
        config = ProbeConfig(capture=bool(capture), reweight=reweight,
                             blocks=parse_blocks(blocks, block_count(model), node),
                             start_percent=float(start_percent), end_percent=float(end_percent),
                             capture_negative=bool(capture_negative), capture_words=capture_items(capture_words or ""),
                             budget_mb=float(budget_mb), keep_steps=bool(keep_steps), keep_blocks=bool(keep_blocks),
                             refine=refine)
        patched, probe = install(model, config, concepts=concepts, node_id=node_id)
        return io.NodeOutput(patched, probe)


class EnfoqueAttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueAttentionMaps", inputs=[
                ModelProbeType.Input("probe", tooltip=f"The probe output of {PATCH_MODEL}."),
                io.Latent.Input("latent", tooltip="The sampler's output: the maps are those of the run that made it."),
                io.String.Input("words", default="", tooltip="Words or phrases, comma separated; empty = every prompt "
                                "word. Case and punctuation at the ends do not matter; a repeated word is all its "
                                "occurrences, word#2 the second one."),
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
                io.Combo.Input("kind", options=list(KINDS), default="cross", optional=True,
                               tooltip="cross: where the image attends to each prompt word (exact). refined: "
                               f"the same maps carried through the image's own attention (needs refine on "
                               f"{PATCH_MODEL}): sharper, on the objects. concept: concept maps (the concepts of "
                               f"{CONCEPTS} connected to {PATCH_MODEL}; words then picks concepts), each "
                               "pixel's share among the concepts."),
            ],
            outputs=[Maps.Output(display_name="maps")],
            # its word chips show its result: an output node is sent its cached result too, so a run whose
            # maps come from the cache still gives the chips
            is_output_node=True,
        )

    @classmethod
    def execute(cls, probe, latent, words, prompt="positive", cond_index=0, step=-1, block=-1,
                kind="cross") -> io.NodeOutput:
        out = read_maps(probe, latent, words, prompt, cond_index, step, block, kind, node=ATTENTION_MAPS)
        payload = chips(out)
        if prompt == "positive" and kind == "cross" and getattr(probe.config, "capture_negative", False):
            try:  # the negative prompt's words beside them, for pointing at the picture
                negative = read_maps(probe, latent, "", "negative", cond_index, step, block, "cross",
                                     node=ATTENTION_MAPS)
                payload["enfoque_negative"] = [negative_chips(negative)]
            except ValueError:  # not recorded (e.g. no negative prompt): nothing to show beside them
                pass
        return io.NodeOutput(out, ui=payload)
