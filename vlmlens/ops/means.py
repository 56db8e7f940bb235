"""Helpers that feed interventions: dataset means and patch rankings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.sites import Site

__all__ = ["mean_activation", "top_patches"]


def mean_activation(model: Any, batches: Batch | Iterable[Batch], site: Site | str) -> torch.Tensor:
    """Mean of a site's activation over the samples of one or more batches (positions kept).

    Every batch must have the same sequence length (pad to a common length), so the
    mean is per position: with a single one-sample batch it equals that sample's activation.
    """
    from vlmlens.ops.cache import run_with_cache

    site = model.site(site)
    if isinstance(batches, Batch):
        batches = [batches]
    total, count = None, 0
    for batch in batches:
        _, cache = run_with_cache(model, batch, sites=[site])
        act = cache[site]
        if total is not None and act.shape[1:] != total.shape:
            raise InputError(f"batches differ in shape at {site}: {tuple(act.shape[1:])} vs {tuple(total.shape)}")
        total = act.sum(0) if total is None else total + act.sum(0)
        count += act.shape[0]
    if total is None:
        raise InputError("mean_activation got no batches")
    return total / count


def top_patches(scores: torch.Tensor, fraction: float, *, largest: bool = True) -> list[tuple[int, int]]:
    """The ``fraction`` of grid patches with the highest (or lowest) score, as ``(row, col)``.

    Args:
        scores: ``rows cols`` scores (e.g. attention on each patch).
        fraction: share of patches to return, in (0, 1]; at least one patch is returned.
        largest: highest scores first (``False``: lowest).
    """
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    rows, cols = scores.shape
    k = max(1, round(fraction * rows * cols))
    index = torch.topk(scores.flatten().float(), k, largest=largest).indices
    return [(int(i) // cols, int(i) % cols) for i in index]
