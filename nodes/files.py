"""Enfoque Save Attention Maps and Enfoque Load Attention Maps: maps to files and back.

Files go through ComfyUI's own path helpers, so a prefix cannot escape the output folder and names
never collide; the formats and the atomic writing are `attention.export`'s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..attention import export
from ..attention.formats import brief
from ..attention.mapfiles import EXTENSIONS, FORMAT, FORMATS
from .common.errors import check_option, engine_message, in_node
from .names import LOAD_MAPS, SAVE_MAPS
from .sockets import MAPS_FROM, Maps, check_maps, schema

log = logging.getLogger(__name__)

_SAVE_RETRIES = 100


class EnfoqueSaveAttentionMaps(io.ComfyNode):
    """Writes the maps to ComfyUI's output folder for analysis outside ComfyUI."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueSaveAttentionMaps", inputs=[
                Maps.Input("maps", tooltip=MAPS_FROM),
                io.String.Input("filename_prefix", default="enfoque/maps",
                                tooltip="Inside the output folder; a counter is appended, e.g. "
                                "enfoque/maps_00001_.safetensors. %date% style variables work as in SaveImage."),
                io.Combo.Input("format", options=list(FORMATS), default="safetensors",
                               tooltip="safetensors / npz: exact float32 with metadata. png: one 16-bit grayscale "
                               "image per word and batch row plus a .json sidecar (load that one back)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, maps, filename_prefix, format) -> io.NodeOutput:
        node = SAVE_MAPS
        maps = check_maps(maps, node)
        check_option(node, "format", format, FORMATS)
        prefix = (filename_prefix or "").strip()
        if not prefix or os.path.basename(os.path.normpath(prefix)) in ("", ".", ".."):
            raise ValueError(
                f"{node}: filename_prefix {brief(filename_prefix)!r} has no file name; use e.g. 'enfoque/maps'."
            )
        output_dir = os.path.abspath(folder_paths.get_output_directory())
        h, w = maps.size
        try:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
                prefix, output_dir, w, h
            )
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise ValueError(
                f"{node}: filename_prefix {brief(filename_prefix)!r} cannot be used as a folder/file name "
                f"({exc.strerror or exc}); use a shorter prefix such as 'enfoque/maps'."
            ) from exc
        except Exception as exc:  # ComfyUI raises a bare Exception for paths outside the output folder
            raise ValueError(
                f"{node}: filename_prefix {brief(filename_prefix)!r} points outside the output folder; "
                "use a relative prefix such as 'enfoque/maps'."
            ) from exc

        # another save may take the same counter meanwhile: move on to the next, never overwrite
        for _ in range(_SAVE_RETRIES):
            try:
                paths = export.save(maps, folder, f"{filename}_{counter:05}_", format)
                break
            except FileExistsError:
                counter += 1
            except ValueError as exc:
                raise in_node(node, exc) from exc
            except OSError as exc:  # e.g. a file name longer than the file system allows
                raise ValueError(
                    f"{node}: cannot write {brief(filename_prefix)!r} to the output folder "
                    f"({exc.strerror or exc}); use a shorter filename_prefix such as 'enfoque/maps'."
                ) from exc
        else:
            raise ValueError(f"{node}: could not find a free file name for {brief(filename_prefix)!r} in {folder}; "
                             "use another filename_prefix.")

        subfolder = subfolder.replace(os.sep, "/")
        results = [ui.SavedResult(p.name, subfolder, io.FolderType.output) for p in paths]
        log.info(
            "%s: saved %s", node, ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
        )
        payload: dict[str, list] = {"enfoque_files": [dict(r) for r in results[:1]]}
        if format == "png":
            payload["images"] = results[1:]
        return io.NodeOutput(ui=payload)


def list_maps_files() -> list[str]:
    """Enfoque maps files under the input folder (subfolders included), as '/'-separated relative names."""
    base = folder_paths.get_input_directory()
    names, _ = folder_paths.recursive_search(base, excluded_dir_names=[".git"])
    out = []
    for rel in names:
        parts = Path(rel).parts
        if any(p.startswith(".") for p in parts) or Path(rel).suffix.lower() not in EXTENSIONS:
            continue
        if export.is_maps_file(os.path.join(base, rel)):
            out.append(Path(rel).as_posix())
    return sorted(out)


def resolve_file(name: str, node: str) -> Path:
    """The path of `name` in the input folder ('... [output]' also allowed); refuses paths that leave it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"{node}: no file chosen. Put a .safetensors, .npz or PNG-set .json saved by {SAVE_MAPS} "
            "into ComfyUI's input folder, refresh, and pick it."
        )
    rel, base = folder_paths.annotated_filepath(name.strip())
    base = os.path.abspath(base or folder_paths.get_input_directory())
    full = os.path.abspath(os.path.join(base, rel))
    if os.path.commonpath([base, full]) != base:
        raise ValueError(
            f"{node}: file {name!r} is outside ComfyUI's input folder; pick a file from the list."
        )
    path = Path(full)
    if path.suffix.lower() not in EXTENSIONS:
        raise ValueError(
            f"{node}: file {name!r} is not a .safetensors, .npz or PNG-set .json sidecar; pick one of those."
        )
    if not path.is_file():
        raise ValueError(
            f"{node}: file {name!r} was not found in {base}; copy it there (or refresh the list) and pick it again."
        )
    return path


class EnfoqueLoadAttentionMaps(io.ComfyNode):
    """Loads maps saved by EnfoqueSaveAttentionMaps, to draw or mask them again without sampling."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema("EnfoqueLoadAttentionMaps", inputs=[io.Combo.Input("file", options=list_maps_files(),
                                   tooltip="A maps file in the input folder. Copy saved files from output/ to input/.")],
            outputs=[Maps.Output(display_name="maps")],
        )

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        node = LOAD_MAPS
        path = resolve_file(file, node)
        try:
            maps = export.load(path)
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"{node}: cannot load {file!r}: {engine_message(exc)} Save it again with {SAVE_MAPS}, "
                "or pick another file."
            ) from exc
        return io.NodeOutput(maps)

    @classmethod
    def fingerprint_inputs(cls, file) -> str:
        try:
            return export.fingerprint(resolve_file(file, LOAD_MAPS))
        except ValueError as exc:
            return f"invalid: {exc}"

    @classmethod
    def validate_inputs(cls, file) -> bool | str:
        node = LOAD_MAPS
        try:
            path = resolve_file(file, node)
        except ValueError as exc:
            return str(exc)
        if not export.is_maps_file(path):
            return (
                f"{node}: {file!r} is not an Enfoque attention-maps file (no '{FORMAT}' metadata); "
                f"pick a file saved by {SAVE_MAPS}."
            )
        return True

