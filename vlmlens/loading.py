"""Resolving what ``HookedVLM.from_pretrained`` is asked to load: zoo names, paths, hub ids, dtypes."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from vlmlens.errors import InputError, LoadError

__all__ = ["resolve_checkpoint", "parse_dtype", "DTYPE_NAMES"]

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
"""Accepted dtype names (torch's names and the usual short forms)."""


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """A torch dtype from a dtype, one of :data:`DTYPE_NAMES`, or ``None``.

    Raises:
        InputError: an unknown name or a value of another type.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.removeprefix("torch.")]
    raise InputError(f"dtype {dtype!r} is not a dtype vlmlens knows; use torch.bfloat16 or one of "
                     f"{', '.join(repr(n) for n in DTYPE_NAMES)}")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def resolve_checkpoint(name_or_path: str | Path) -> str:
    """Where to load from: a zoo checkpoint's folder, a local folder, or a hub id (returned as is).

    Raises:
        LoadError: an unknown ``toy-`` name, or a local path that does not exist or holds no
            ``config.json``.
    """
    from vlmlens.zoo import registry

    if not isinstance(name_or_path, (str, Path)):
        raise InputError(f"from_pretrained needs a zoo name, hub id or directory, got {type(name_or_path).__name__}")
    name = str(name_or_path)
    if name in registry.NAMES:
        return str(registry.checkpoint_path(name))
    if name.startswith("toy-"):
        close = difflib.get_close_matches(name, registry.NAMES, n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise LoadError(f"{name!r} is not a zoo model; the zoo has {', '.join(registry.NAMES)}.{hint}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise LoadError(f"{name} has no config.json, so it is not a saved model directory; "
                            "save one with model.save_pretrained(dir) and processor.save_pretrained(dir)")
        return str(path)
    if isinstance(name_or_path, Path) or _looks_like_path(name):
        raise LoadError(f"{name} does not exist (not found as a local directory); check the path")
    return name


def load_error(name: str, err: Exception) -> LoadError:
    """The error for a hub id that could not be loaded."""
    return LoadError(f"could not load {name!r}: it is not a zoo name or a local directory, and the hub copy could "
                     f"not be read ({type(err).__name__}: {str(err).splitlines()[0][:160]}). Without network access, "
                     "pass a local directory with the saved model and processor")
