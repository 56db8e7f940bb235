"""Image patches as positions in the vision tower and the projector.

Token-grid patch ``(r, c)`` of an image is one image token in the language model. In
the vision tower it is one position after the class tokens (CLIP: 1, SigLIP: 0), or, in
Qwen2-VL, a 2x2 merge window of raw patches (consecutive in its packed sequence, which
holds every image of the batch one after another). The projector's input follows the
tower (without LLaVA's class token unless the config selects ``"full"`` features) and
its output follows the image tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmlens.layout import TokenLayout
from vlmlens.sites import Point, Site, Tower

__all__ = ["vision_patch_mask"]


def _per_token(model: Any, site: Site) -> tuple[int, int]:
    """``(offset, width)``: where token ``t`` of an image sits, as ``offset + t * width`` + ``[0, width)``."""
    adapter = model.adapter
    merged = site.tower is Tower.PROJECTOR and site.point is Point.PROJ_OUT
    width = 1 if merged else adapter.merge**2
    if site.tower is Tower.VISION:
        return adapter.vision_cls, width
    if site.tower is Tower.PROJECTOR and site.point is Point.PROJ_IN and adapter.feature_select_attr:
        full = getattr(model.hf_model.config, adapter.feature_select_attr, None) == "full"
        return (adapter.vision_cls if full else 0), width
    return 0, width


def vision_patch_mask(model: Any, site: Site, layout: TokenLayout, lists: list[list[tuple[int, int]]], image: int,
                      seq: int, image_index: int | None) -> torch.Tensor:
    """``rows seq`` mask of the chosen patches at a vision or projector site, for one copy of the batch.

    Args:
        model: the HookedVLM.
        site: a vision or projector site.
        layout: the prepared batch's layout.
        lists: per sample the chosen ``(row, col)`` patches.
        image: which image of each sample.
        seq: length of the site's position axis in this firing.
        image_index: at a site that fires once per image, the image now running.
    """
    spans = [span for sample in layout.images for span in sample]
    first = [sum(len(s) for s in layout.images[:b]) for b in range(layout.batch_size)]
    offset, width = _per_token(model, site)
    chosen = {first[b] + image: plist for b, plist in enumerate(lists)}
    packed = not model.adapter.vision.batched
    if packed and image_index is None:  # one row: every image's patches (or tokens) in order
        mask = torch.zeros(1, seq, dtype=torch.bool)
        base = 0
        for j, span in enumerate(spans):
            for r, c in chosen.get(j, ()):
                start = base + offset + (r * span.grid[1] + c) * width
                mask[0, start : start + width] = True
            base += span.n_tokens * width
        return mask
    rows = [image_index] if image_index is not None else range(len(spans))
    mask = torch.zeros(len(rows), seq, dtype=torch.bool)
    for i, j in enumerate(rows):
        cols = spans[j].grid[1]
        for r, c in chosen.get(j, ()):
            start = offset + (r * cols + c) * width
            mask[i, start : start + width] = True
    return mask
