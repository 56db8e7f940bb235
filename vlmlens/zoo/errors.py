"""Errors of the zoo."""

from __future__ import annotations

from vlmlens.errors import UnsupportedArchitectureError, VLMLensError

FAMILIES = ("llava", "paligemma", "qwen2_vl")


class ZooError(VLMLensError, ValueError):
    """A zoo model, tokenizer or processor cannot be built, found or trained as asked."""


def check_family(family: object) -> None:
    """Raise UnsupportedArchitectureError unless ``family`` is a zoo family."""
    if family not in FAMILIES:
        raise UnsupportedArchitectureError(
            f"Unknown model family {family!r}; the zoo builds {', '.join(FAMILIES)}."
        )
