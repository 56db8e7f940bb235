"""Attribution patching (AtP): a first-order estimate of every activation-patching effect.

Exact activation patching runs one forward per patched piece; attribution patching runs
two forwards and one backward for all of them. For a piece ``P`` of a site (positions,
heads, neurons, an image patch's tokens) it estimates the metric after patching the clean
activation into the corrupt run as

    metric(corrupt) + sum over P of (a_clean - a_corrupt) * d metric / d a  (at the corrupt run)

The functions mirror :mod:`vlmlens.ops.patching` (same arguments, same
:class:`PatchingResult` axes and labels, same heatmaps), so an estimate and its exact
counterpart compare cell by cell. The estimate is exact for a metric linear in the site
and degrades where the model is far from linear between the two runs (attention
saturation, cancellation; Kramar et al. 2024), so check the top pieces with exact patching.

Example:
    >>> atp = attribute_residual(model, clean, corrupt, metric, positions="image")  # doctest: +SKIP
    >>> exact = patch_residual(model, clean, corrupt, metric, positions="image")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.ops.cache import run_with_cache
from vlmlens.ops.patching import (
    _HEAD_POINTS,
    Metric,
    PatchingResult,
    _check_layouts,
    _image_patch_sites,
    _layers,
    _position_labels,
    _positions,
    _scalar,
    _single_grid,
)
from vlmlens.ops.positions import Positions, resolve_positions
from vlmlens.sites import Point, Site, as_point

__all__ = ["attribute_residual", "attribute_heads", "attribute_neurons", "attribute_image_patches"]


def _products(model: Any, clean: Batch, corrupt: Batch, metric: Metric,
              sites: list[Site]) -> tuple[dict[Site, Tensor], dict[str, float]]:
    """``(a_clean - a_corrupt) * grad`` at each site, and the clean and corrupt metrics."""
    clean_logits, clean_cache = run_with_cache(model, clean, sites=sites, positions="all", device=None)
    corrupt_logits, corrupt_cache = run_with_cache(model, corrupt, sites=sites, positions="all", device=None,
                                                   grad=metric)
    products = {s: (clean_cache[s] - corrupt_cache[s]).float() * corrupt_cache.grads[s].float() for s in sites}
    ends = {"clean_metric": _scalar(metric(clean_logits, clean)),
            "corrupt_metric": _scalar(metric(corrupt_logits, corrupt))}
    return products, ends


def attribute_residual(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | str | None = None,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_residual`: ``resid_pre`` by layer and position.

    Returns:
        Values ``layer position`` on the metric's scale, labels as ``patch_residual``'s.
    """
    layout = _check_layouts(clean, corrupt)
    sites = [model.text.resid_pre[layer] for layer in _layers(model, layers)]
    chosen = _positions(layout, positions)
    products, ends = _products(model, clean, corrupt, metric, sites)
    base = ends["corrupt_metric"]
    values = torch.tensor([[base + float(products[s][mask.to(products[s].device)].sum()) for mask in chosen]
                           for s in sites])
    sample0 = [int(torch.nonzero(mask[0])[0]) for mask in chosen]
    return PatchingResult(values=values, axes=("layer", "position"),
                          labels=(tuple(s.layer for s in sites), _position_labels(model, clean, sample0)),
                          sites=tuple(sites), **ends)


def attribute_heads(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    point: str | Point = "z",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_heads`: one value per (layer, head).

    Args:
        point: ``"z"`` (default), ``"result"``, ``"q"``, ``"k"``, ``"v"`` or ``"pattern"``.
            For q, k and the pattern the first-order estimate misses attention saturation
            (AtP*'s QK fix is not applied); prefer z or result.
        positions: restrict to these (query) positions, as in ``patch_heads``.

    Returns:
        Values ``layer head``.
    """
    layout = _check_layouts(clean, corrupt)
    p = as_point(point)
    if p not in _HEAD_POINTS:
        raise InputError(f"attribute_heads attributes a per-head point (q, k, v, z, pattern, result), got {p.short!r}")
    sites = [getattr(model.text, p.short)[layer] for layer in _layers(model, layers)]
    products, ends = _products(model, clean, corrupt, metric, sites)
    mask = resolve_positions(positions, layout, layout.seq_len)
    rows = []
    for site in sites:
        x = products[site]
        if p is Point.PATTERN:  # batch head q k
            x = x.sum(-1)  # batch head q
            if mask is not None:
                x = x * mask[:, None, :].to(x.device)
            rows.append(x.sum((0, 2)))
        else:  # batch seq head width
            if mask is not None:
                x = x * mask[:, :, None, None].to(x.device)
            rows.append(x.sum((0, 1, 3)))
    values = ends["corrupt_metric"] + torch.stack(rows).cpu()
    return PatchingResult(values=values, axes=("layer", "head"),
                          labels=(tuple(s.layer for s in sites), tuple(range(values.shape[1]))),
                          sites=tuple(sites), **ends)


def attribute_neurons(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    layer: int,
    neurons: Sequence[int] | None = None,
    positions: Positions = "last",
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_neurons` (``mlp.hook_post`` of one layer).

    Returns:
        Values ``neuron``.
    """
    layout = _check_layouts(clean, corrupt)
    site = model.text.mlp_post[layer]
    products, ends = _products(model, clean, corrupt, metric, [site])
    x = products[site]  # batch seq neuron
    mask = resolve_positions(positions, layout, layout.seq_len)
    if mask is not None:
        x = x * mask[..., None].to(x.device)
    per_neuron = x.sum((0, 1)).cpu()
    width = per_neuron.shape[0]
    chosen = list(range(width)) if neurons is None else [int(n) for n in neurons]
    bad = [n for n in chosen if not 0 <= n < width]
    if bad:
        raise InputError(f"neuron {bad[0]} is out of range for {site} with {width} neurons (valid 0..{width - 1})")
    values = ends["corrupt_metric"] + per_neuron[chosen]
    return PatchingResult(values=values, axes=("neuron",), labels=(tuple(chosen),), sites=(site,), **ends)


def attribute_image_patches(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    image: int = 0,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_image_patches`: each patch's tokens together.

    Returns:
        Values ``row col`` (``text.hook_embed``), or ``layer row col`` (``resid_pre`` of ``layers``).
    """
    layout = _check_layouts(clean, corrupt)
    rows, cols = _single_grid(layout, image)
    sites = _image_patch_sites(model, layers)
    products, ends = _products(model, clean, corrupt, metric, sites)
    per_site = []
    for site in sites:
        per_token = products[site].sum(-1)  # batch seq
        grid = torch.zeros(rows, cols)
        for b in range(layout.batch_size):
            span = layout.images[b][image]
            grid += per_token[b, span.start : span.stop].view(rows, cols).cpu()
        per_site.append(grid)
    values = ends["corrupt_metric"] + torch.stack(per_site)
    if layers is None:
        return PatchingResult(values=values[0], axes=("row", "col"), labels=(tuple(range(rows)), tuple(range(cols))),
                              sites=tuple(sites), **ends)
    return PatchingResult(values=values, axes=("layer", "row", "col"),
                          labels=(tuple(s.layer for s in sites), tuple(range(rows)), tuple(range(cols))),
                          sites=tuple(sites), **ends)
