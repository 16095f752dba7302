"""Hooks that every clone of a patched model or CLIP shares."""

from __future__ import annotations


class SharedByClones:
    """Returns itself on deepcopy. ModelPatcher.clone() deep-copies model_options (and CLIP clones
    their patches), and every clone must report to the same probe, so a hook object is never copied."""

    def __deepcopy__(self, memo: dict) -> SharedByClones:
        return self
