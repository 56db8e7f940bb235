"""Position specs, resolved against a TokenLayout into per-sample index tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmlens.errors import InputError, InterventionError
from vlmlens.layout import TokenLayout

__all__ = ["Positions", "Patches", "ImagePatches", "resolve_positions", "patch_lists", "token_mask"]

Patches = Any
"""Image patches: per sample a list of ``(row, col)``, or a ``batch rows cols`` bool tensor."""


@dataclass(frozen=True)
class ImagePatches:
    """Patches ``(row, col)`` of the token grid of one image per sample, as positions at any site.

    The same region is addressed in every part of the model: at text sites, the image's
    tokens; at vision-tower sites, the patch's positions in the vision sequence (after
    CLIP's class token; Qwen2-VL's 2x2 merge window of raw patches); at the projector,
    its input and output rows for that patch.

    Attributes:
        patches: per sample a list of ``(row, col)``, or a ``batch rows cols`` bool mask.
        image: which image of each sample.

    Examples:
        >>> Ablate(site="vision.blocks.3.hook_resid_post", positions=ImagePatches([[(0, 1)], [(2, 2)]]))  # doctest: +SKIP
    """

    patches: Patches
    image: int = 0


Positions = str | int | slice | Sequence[int] | torch.Tensor | ImagePatches | None
"""``None``/``"all"``, ``"last"`` (last prompt token), ``"image"``, ``"question"``, ``"prefix"``,
an int or list of ints (same positions in every sample), a slice, a ``batch seq`` bool mask,
or :class:`ImagePatches` (the same image region at text, vision and projector sites)."""


def resolve_positions(positions: Positions, layout: TokenLayout | None, seq_len: int) -> torch.Tensor | None:
    """A ``batch seq`` bool mask of the chosen positions, or ``None`` for all positions.

    Raises:
        InputError: a named kind needs a layout, a position is out of range, or a
            chosen position is padding.
    """
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if isinstance(positions, ImagePatches):
        if layout is None:
            raise InputError("ImagePatches positions need a TokenLayout; pass a Batch from model.prepare()")
        mask = token_mask(positions.patches, layout, positions.image)
    elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        mask = positions
    elif isinstance(positions, str):
        if layout is None:
            raise InputError(f"positions={positions!r} needs a TokenLayout; pass a Batch from model.prepare()")
        mask = layout.mask(positions)
    else:
        if layout is None:
            raise InputError("explicit positions need a TokenLayout to check padding; pass a Batch from model.prepare()")
        index = torch.arange(seq_len)[positions] if isinstance(positions, slice) else torch.as_tensor(positions)
        index = index.reshape(-1)
        bad = index[(index < -seq_len) | (index >= seq_len)]
        if bad.numel():
            raise InputError(f"position {int(bad[0])} is out of range for sequence length {seq_len}")
        mask = torch.zeros(layout.batch_size, seq_len, dtype=torch.bool)
        mask[:, index % seq_len] = True
    if layout is not None:
        clash = mask & layout.padding.to(mask.device)
        if clash.any():
            b, p = (int(i) for i in torch.nonzero(clash)[0])
            raise InputError(
                f"position {p} of sample {b} is padding; intervening there would change nothing real. "
                "Choose positions from batch.layout (e.g. 'last', 'image', 'question')."
            )
    return mask


def patch_lists(patches: Patches, layout: TokenLayout, image: int) -> list[list[tuple[int, int]]]:
    """Validate patches against the layout; per sample the ``(row, col)`` list."""
    n = layout.batch_size
    if isinstance(patches, torch.Tensor):
        if patches.dtype != torch.bool or patches.dim() != 3 or patches.shape[0] != n:
            raise InterventionError(
                f"a patch mask must be a bool tensor of shape (batch={n}, rows, cols), got {patches.dtype} "
                f"{tuple(patches.shape)}")
        for b in range(n):
            grid = layout.grid(b, image)
            if tuple(patches.shape[1:]) != grid:
                raise InterventionError(f"the patch mask is {tuple(patches.shape[1:])} per sample but image {image} "
                                        f"of sample {b} has a {grid[0]}x{grid[1]} patch grid")
        return [[(int(r), int(c)) for r, c in torch.nonzero(p)] for p in patches]
    if not isinstance(patches, Sequence) or isinstance(patches, str):
        raise InterventionError(f"patches must be per-sample lists of (row, col) or a bool mask, got "
                                f"{type(patches).__name__}")
    lists = [list(p) if isinstance(p, Sequence) else p for p in patches]
    if len(lists) != n:
        raise InterventionError(f"got patch lists for {len(lists)} samples, the batch has {n}: give one list of "
                                "(row, col) per sample, e.g. [[(0, 0)], [(1, 2)]]")
    for b, plist in enumerate(lists):
        if not isinstance(plist, list) or not all(
                isinstance(p, Sequence) and len(p) == 2 and all(isinstance(i, int) for i in p) for p in plist):
            raise InterventionError(f"patches of sample {b} must be a list of (row, col) int pairs, got {plist!r}")
        rows, cols = layout.grid(b, image)
        for r, c in plist:
            if not (0 <= r < rows and 0 <= c < cols):
                raise InterventionError(f"patch ({r}, {c}) of sample {b} is outside image {image}'s "
                                        f"{rows}x{cols} patch grid (rows 0..{rows - 1}, cols 0..{cols - 1})")
    return lists


def token_mask(patches: Patches, layout: TokenLayout, image: int) -> torch.Tensor:
    """``batch seq`` mask of the tokens of the chosen patches."""
    mask = torch.zeros(layout.batch_size, layout.seq_len, dtype=torch.bool)
    for b, plist in enumerate(patch_lists(patches, layout, image)):
        for r, c in plist:
            mask[b, layout.patch_position(b, r, c, image)] = True
    return mask
