"""The toy zoo: names, families and where each shipped checkpoint lives.

Examples:
    >>> from vlmlens.zoo.registry import ZOO, checkpoint_path
    >>> sorted(ZOO)
    ['toy-llava', 'toy-paligemma', 'toy-qwen2vl']
    >>> checkpoint_path("toy-llava").name
    'toy-llava'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlmlens.zoo.errors import ZooError, check_family
from vlmlens.zoo.tokenizer import Family


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    """One shipped model.

    Attributes:
        name: Zoo name, e.g. ``"toy-llava"``.
        family: Model family.
        architecture: The HF model class name.
        description: One line for ``vlmlens zoo list``.
    """

    name: str
    family: Family
    architecture: str
    description: str

    def __post_init__(self) -> None:
        check_family(self.family)
        if not self.name.startswith("toy-"):
            raise ZooError(f"Zoo names start with 'toy-'; got {self.name!r}.")


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="toy-llava",
            family="llava",
            architecture="LlavaForConditionalGeneration",
            description="CLIP tower (pre-trained, frozen) + 2-layer GELU MLP projector + Llama; late fusion",
        ),
        ZooEntry(
            name="toy-paligemma",
            family="paligemma",
            architecture="PaliGemmaForConditionalGeneration",
            description="SigLIP tower + linear projector + Gemma with a bidirectional prefix; end to end",
        ),
        ZooEntry(
            name="toy-qwen2vl",
            family="qwen2_vl",
            architecture="Qwen2VLForConditionalGeneration",
            description="ViT with 2x2 patch merger + Qwen2 with M-RoPE, dynamic resolution; end to end",
        ),
    )
}
"""The zoo's models by name."""

NAME_OF_FAMILY: dict[str, str] = {e.family: e.name for e in ZOO.values()}
"""Zoo name per family."""


def entry(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of a zoo name.

    Raises:
        ZooError: For an unknown name; the message lists the known names.
    """
    try:
        return ZOO[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(ZOO), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ZooError(
            f"Unknown zoo model {name!r}; known: {', '.join(ZOO)}.{hint}"
        ) from None


def checkpoint_path(name: str) -> Path:
    """The folder of a shipped checkpoint (works from an installed package).

    Args:
        name: A zoo name, e.g. ``"toy-llava"``.

    Returns:
        The checkpoint folder.

    Raises:
        ZooError: For an unknown name, or if the checkpoint files are missing from
            this installation.
    """
    entry(name)
    folder = Path(str(resources.files("vlmlens.zoo").joinpath("checkpoints", name)))
    if not (folder / "config.json").is_file():
        raise ZooError(
            f"The checkpoint of {name!r} is missing from this installation ({folder}); "
            f"reinstall vlmlens or train it with `vlmlens zoo train --family {ZOO[name].family} "
            f"--out {folder}`."
        )
    return folder
