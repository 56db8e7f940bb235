"""The toy zoo: names, families, versions and where each shipped checkpoint lives.

Every checkpoint has a versioned name (``toy-llava-v1``); the plain family name
(``toy-llava``) is an alias of the default version, :data:`DEFAULT_VERSION`, so the
numbers a document measured on ``toy-llava-v1`` keep naming the same weights when the
default moves.

Examples:
    >>> from vlmlens.zoo.registry import ZOO, canonical, checkpoint_path
    >>> sorted(ZOO)[:3]
    ['toy-llava-v1', 'toy-llava-v2', 'toy-paligemma-v1']
    >>> canonical("toy-llava")
    'toy-llava-v2'
    >>> checkpoint_path("toy-llava").name
    'toy-llava-v2'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlmlens.zoo.errors import ZooError, check_family
from vlmlens.zoo.tokenizer import Family

_VERSIONED = re.compile(r"^(toy-[a-z0-9]+)-v([0-9]+)$")


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    """One shipped model.

    Attributes:
        name: Versioned zoo name, e.g. ``"toy-llava-v1"``; also its checkpoint folder.
        family: Model family.
        architecture: The HF model class name.
        version: Zoo version (1: the shared-recipe toys; 2: the fusion experiment).
        description: One line for ``vlmlens zoo list``.
    """

    name: str
    family: Family
    architecture: str
    version: int
    description: str

    def __post_init__(self) -> None:
        check_family(self.family)
        match = _VERSIONED.match(self.name)
        if match is None or int(match[2]) != self.version:
            raise ZooError(
                f"Zoo names are 'toy-<model>-v<version>' with the entry's version ({self.version}); "
                f"got {self.name!r}."
            )

    @property
    def alias(self) -> str:
        """The name without its version (``"toy-llava"``)."""
        return _VERSIONED.match(self.name)[1]  # the name was checked against it at construction


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="toy-llava-v1",
            family="llava",
            architecture="LlavaForConditionalGeneration",
            version=1,
            description="CLIP tower (pre-trained, frozen) + 2-layer GELU MLP projector + Llama; late fusion",
        ),
        ZooEntry(
            name="toy-paligemma-v1",
            family="paligemma",
            architecture="PaliGemmaForConditionalGeneration",
            version=1,
            description="SigLIP tower + linear projector + Gemma with a bidirectional prefix; end to end",
        ),
        ZooEntry(
            name="toy-qwen2vl-v1",
            family="qwen2_vl",
            architecture="Qwen2VLForConditionalGeneration",
            version=1,
            description="ViT with 2x2 patch merger + Qwen2 with M-RoPE, dynamic resolution; end to end",
        ),
        ZooEntry(
            name="toy-llava-v2",
            family="llava",
            architecture="LlavaForConditionalGeneration",
            version=2,
            description="fusion experiment, late arm: tower pre-trained and frozen, projector, text-first LM, causal",
        ),
        ZooEntry(
            name="toy-paligemma-v2",
            family="paligemma",
            architecture="PaliGemmaForConditionalGeneration",
            version=2,
            description="fusion experiment, early arm: tower, projector and LM trained together, prefix-LM",
        ),
        ZooEntry(
            name="toy-qwen2vl-v2",
            family="qwen2_vl",
            architecture="Qwen2VLForConditionalGeneration",
            version=2,
            description="fusion experiment, native arm: tower + merger aligned, then joint; M-RoPE, dynamic sizes",
        ),
    )
}
"""The zoo's models by versioned name."""

DEFAULT_VERSION = 2
"""The version the plain names (``toy-llava``) load."""

ALIASES: dict[str, str] = {e.alias: e.name for e in ZOO.values() if e.version == DEFAULT_VERSION}
"""Plain name -> versioned name of the default version."""

NAMES: tuple[str, ...] = (*sorted(ALIASES), *sorted(ZOO))
"""Every name the zoo answers to: the plain names, then the versioned ones."""


def canonical(name: str) -> str:
    """The versioned name of a zoo name (a versioned name is returned as is).

    Raises:
        ZooError: For an unknown name; the message lists the known names.
    """
    if isinstance(name, str) and name in ZOO:
        return name
    if isinstance(name, str) and name in ALIASES:
        return ALIASES[name]
    close = difflib.get_close_matches(str(name), list(NAMES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ZooError(f"Unknown zoo model {name!r}; known: {', '.join(NAMES)}.{hint}")


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of a zoo name (plain or versioned).

    Raises:
        ZooError: For an unknown name; the message lists the known names.
    """
    return ZOO[canonical(name)]


def checkpoint_path(name: str) -> Path:
    """The folder of a shipped checkpoint (works from an installed package).

    Args:
        name: A zoo name, e.g. ``"toy-llava"`` or ``"toy-llava-v1"``.

    Returns:
        The checkpoint folder.

    Raises:
        ZooError: For an unknown name, or if the checkpoint files are missing from
            this installation.
    """
    e = entry(name)
    folder = Path(str(resources.files("vlmlens.zoo").joinpath("checkpoints", e.name)))
    if not (folder / "config.json").is_file():
        raise ZooError(
            f"The checkpoint of {name!r} is missing from this installation ({folder}); "
            f"reinstall vlmlens or train it with `vlmlens zoo train --version {e.version} --family {e.family} "
            f"--out {folder}`."
        )
    return folder
