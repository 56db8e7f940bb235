"""Helpers that feed interventions: dataset means and patch rankings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, no_type_check

import torch

from vlmlens.errors import InputError, InterventionError
from vlmlens.inputs import Batch
from vlmlens.layout import TokenLayout
from vlmlens.sites import Site, Tower

__all__ = ["RoleMean", "mean_activation", "top_patches"]


@dataclass(frozen=True, kw_only=True, eq=False)
class RoleMean:
    """Mean activation of a text site keyed by token role, never counting padding.

    Token positions differ between samples (padding, question length, image size), so a
    per-position mean mixes roles; a per-role mean does not. Use it with
    ``Ablate(mode="mean", mean=role_mean)``: each prompt position is replaced by the mean
    of its role in the batch being run.

    Attributes:
        site: the site averaged.
        image: per image grid ``(rows, cols)``, the mean at each patch: ``rows cols ...``.
        question: mean over question tokens (``None`` if no question was located).
        last: mean at the last prompt position (the answer-predicting token).
        other: mean over the remaining prompt tokens (template, special tokens).
        counts: how many positions each role averaged (``image`` counts images).
    """

    site: Site
    image: dict[tuple[int, int], torch.Tensor]
    question: torch.Tensor | None
    last: torch.Tensor
    other: torch.Tensor | None
    counts: dict[str, int]

    def expand(self, site: Site, layout: TokenLayout) -> torch.Tensor:
        """The mean of each position's role for a batch: ``batch seq ...`` (0 at padding).

        Raises:
            InterventionError: the site differs from the averaged one, or a role of this batch
                (an image grid, a question) has no mean.
        """
        if site != self.site:
            raise InterventionError(f"this mean was computed at {self.site}, not {site}; "
                                    "compute one with mean_activation() at the site you ablate")
        out = torch.zeros(layout.batch_size, layout.seq_len, *self.last.shape, dtype=self.last.dtype)
        for b in range(layout.batch_size):
            real = ~layout.padding[b]
            if self.other is not None:
                out[b, real] = self.other
            span = layout.question[b]
            if span is not None:
                if self.question is None:
                    raise InterventionError("the batch has question tokens but the mean saw none")
                out[b, span[0] : span[1]] = self.question
            for s in layout.images[b]:
                if s.grid not in self.image:
                    raise InterventionError(f"no image mean for a {s.grid[0]}x{s.grid[1]} patch grid (the mean saw "
                                            f"grids {sorted(self.image)}); average over images of this size")
                out[b, s.start : s.stop] = self.image[s.grid].flatten(0, 1)
            out[b, layout.last_prompt[b]] = self.last
        return out


def _role_masks(layout: TokenLayout) -> dict[str, torch.Tensor]:
    last = layout.mask("last")
    image = layout.mask("image")
    question = torch.zeros_like(last)
    for b, span in enumerate(layout.question):
        if span is not None:
            question[b, span[0] : span[1]] = True
    question &= ~image & ~last
    other = ~layout.padding & ~image & ~question & ~last
    return {"last": last, "question": question, "other": other}


@no_type_check


def mean_activation(model: Any, batches: Batch | Iterable[Batch], site: Site | str) -> RoleMean | torch.Tensor:
    """Mean of a site's activation over a data set, keyed by token role at text sites.

    Args:
        model: a HookedVLM.
        batches: one or more batches from ``model.prepare`` (lengths may differ).
        site: the site.

    Returns:
        At text sites with a position axis, a :class:`RoleMean` (padding never counted).
        At vision and projector sites, and for attention patterns, the mean over rows
        (images) with every other axis kept.

    Raises:
        InputError: no batches, or rows of different shapes at a site without roles.
    """
    from vlmlens.ops.cache import run_with_cache

    site = model.site(site)
    if isinstance(batches, Batch):
        batches = [batches]
    by_role = site.tower is Tower.TEXT and not site.point.pattern_shaped
    sums: dict[Any, torch.Tensor] = {}
    counts: dict[Any, int] = {}

    def add(key: Any, total: torch.Tensor, n: int) -> None:
        sums[key] = sums[key] + total if key in sums else total
        counts[key] = counts.get(key, 0) + n

    seen = 0
    for batch in batches:
        if not isinstance(batch, Batch):
            raise InputError(f"mean_activation needs Batch values from model.prepare(), got {type(batch).__name__}")
        _, cache = run_with_cache(model, batch, sites=[site])
        act = cache[site].double()
        seen += 1
        if not by_role:
            if "rows" in sums and act.shape[1:] != sums["rows"].shape:
                raise InputError(f"batches differ in shape at {site}: {tuple(act.shape[1:])} vs "
                                 f"{tuple(sums['rows'].shape)}")
            add("rows", act.sum(0), act.shape[0])
            continue
        for role, mask in _role_masks(batch.layout).items():
            if mask.any():
                add(role, act[mask.to(act.device)].sum(0), int(mask.sum()))
        for b, spans in enumerate(batch.layout.images):
            for s in spans:
                add(s.grid, act[b, s.start : s.stop].unflatten(0, s.grid), 1)
    if not seen:
        raise InputError("mean_activation got no batches")
    dtype = torch.float32

    def mean(key: Any) -> torch.Tensor | None:
        return (sums[key] / counts[key]).to(dtype) if key in sums else None

    if not by_role:
        return mean("rows")
    grids = {key: mean(key) for key in sums if isinstance(key, tuple)}
    return RoleMean(site=site, image=grids, question=mean("question"), last=mean("last"), other=mean("other"),
                    counts={"image": sum(counts[k] for k in grids), **{r: counts.get(r, 0)
                                                                        for r in ("question", "last", "other")}})


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
