"""Which pixel-tensor entries lie under token-grid patches, for every row layout a call runs."""

from __future__ import annotations

import torch

from vlmlens.adapters.base import Adapter
from vlmlens.context import Call
from vlmlens.errors import InterventionError
from vlmlens.layout import TokenLayout

__all__ = ["pixel_mask"]


def _one_copy(adapter: Adapter, layout: TokenLayout, lists: list[list[tuple[int, int]]], image: int,
              pixels: torch.Tensor, rows: int) -> tuple[torch.Tensor, list[int]]:
    """The mask over one copy of the prepared pixels, and each sample's number of rows."""
    spans = [span for sample in layout.images for span in sample]
    counts = [len(sample) for sample in layout.images]
    first = [sum(counts[:b]) for b in range(len(counts))]
    mask = torch.zeros((rows, *pixels.shape[1:]), dtype=torch.bool)
    if pixels.dim() == 4:  # images C H W: one image a row, patch_size pixel blocks
        for b, plist in enumerate(lists):
            cols = spans[first[b] + image].grid[1]
            p = pixels.shape[-1] // cols
            for r, c in plist:
                mask[first[b] + image, :, r * p : (r + 1) * p, c * p : (c + 1) * p] = True
        return mask, counts
    # Qwen2-VL: flattened raw patches, merge x merge of them per token, images in order.
    per_token = adapter.merge**2
    per_image = [s.n_tokens * per_token for s in spans]
    for b, plist in enumerate(lists):
        index = first[b] + image
        cols = spans[index].grid[1]
        for r, c in plist:
            base = sum(per_image[:index]) + (r * cols + c) * per_token
            mask[base : base + per_token] = True
    return mask, [sum(per_image[first[b] : first[b] + counts[b]]) for b in range(len(counts))]


def pixel_mask(adapter: Adapter, layout: TokenLayout, lists: list[list[tuple[int, int]]], image: int,
               pixels: torch.Tensor, call: Call, copy: int | None) -> torch.Tensor:
    """Bool mask of ``pixels`` entries under the chosen patches of every running row.

    Args:
        adapter: the family adapter (Qwen2-VL's merge size).
        layout: the prepared batch's layout.
        lists: per sample the ``(row, col)`` patches.
        image: which image of each sample.
        pixels: the running pixel tensor (all copies of the batch).
        call: the running call (copies and their order).
        copy: the stacked copy the intervention owns, or ``None`` for all rows.
    """
    rows = pixels.shape[0] // call.copies
    mask, chunks = _one_copy(adapter, layout, lists, image, pixels, rows)
    if copy is not None:
        full = torch.zeros(pixels.shape, dtype=torch.bool)
        full[copy * rows : (copy + 1) * rows] = mask  # sweeps stack copies one after another
    elif call.order == "copy":
        full = mask.repeat(call.copies, *([1] * (mask.dim() - 1)))
    else:
        full = torch.cat([part for chunk in mask.split(chunks) for part in [chunk] * call.copies])
    if full.shape != pixels.shape:
        raise InterventionError(f"the pixel mask covers {tuple(full.shape)} but the pixels are {tuple(pixels.shape)}; "
                                "apply MaskPixels with the batch you run")
    return full
