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

``ig_steps=k`` replaces the gradient at the corrupt run by its mean over ``k`` points on
the straight line from the corrupt to the clean input embeddings (``text.hook_embed``, the
LM's merged text and image embeddings; midpoint rule, ``alpha = (i + 0.5) / k``): integrated
gradients along the inputs, as in EAP-IG (Hanna et al. 2024). It costs ``k`` forwards and
backwards instead of one and is far less fooled by saturation. No first-order or path
method can match single-piece patches where pieces are redundant (an object seen in four
patches, any one of which flips the answer: each single patch has the whole effect, and
the four estimates share it), so rank with it and check the top pieces exactly.

Examples:
    >>> atp = attribute_residual(model, clean, corrupt, metric, positions="image")  # doctest: +SKIP
    >>> exact = patch_residual(model, clean, corrupt, metric, positions="image")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, no_type_check

import torch
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.ops.cache import run_with_cache
from vlmlens.ops.interventions import Hook
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
from vlmlens.sites import HEAD_POINTS, Point, Site, Tower, as_point

__all__ = [
    "attribute_heads",
    "attribute_image_patches",
    "attribute_neurons",
    "attribute_residual",
    "embedding_path",
    "graddrop_heads",
    "ig_alphas",
]


def _check_steps(ig_steps: int) -> int:
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 0:
        raise InputError(f"ig_steps must be a whole number >= 0 (0: plain AtP; e.g. 8 for integrated gradients), "
                         f"got {ig_steps!r}")
    return ig_steps


def embedding_path(model: Any, clean: Batch, corrupt: Batch, *,
                   ends: tuple[Tensor, Tensor] | None = None) -> Callable[[float], Hook]:
    """``alpha -> Hook`` that sets the LM's input embeddings to ``corrupt + alpha (clean - corrupt)``.

    Run on the corrupt batch: ``alpha = 0`` is the corrupt run, ``alpha = 1`` the clean one.
    ``ends``: the corrupt and clean ``text.hook_embed`` where the caller has cached them
    already (``positions="all"``); otherwise two forwards read them.
    """
    site = model.text.embed
    if ends is None:
        ends = tuple(run_with_cache(model, b, sites=[site], positions="all", device=None)[1][site]
                     for b in (corrupt, clean))
    start, step = ends[0], ends[1] - ends[0]
    return lambda alpha: Hook(site=site, fn=lambda act, hook: (start + alpha * step).to(act.dtype))


def ig_alphas(steps: int) -> list[float]:
    """The midpoint rule's points on ``[0, 1]``: ``(i + 0.5) / steps``."""
    return [(i + 0.5) / steps for i in range(steps)]


def _products(model: Any, clean: Batch, corrupt: Batch, metric: Metric, sites: list[Site],
              ig_steps: int = 0) -> tuple[dict[Site, Tensor], dict[str, float]]:
    """``(a_clean - a_corrupt) * grad`` at each site, and the clean and corrupt metrics.

    ``grad`` is taken at the corrupt run, or averaged along the input path (``ig_steps``).
    """
    steps = _check_steps(ig_steps)
    embed = model.text.embed
    read = list(dict.fromkeys([*sites, embed])) if steps else sites  # IG's path starts from the embeddings
    clean_logits, clean_cache = run_with_cache(model, clean, sites=read, positions="all", device=None)
    corrupt_logits, corrupt_cache = run_with_cache(model, corrupt, sites=read, positions="all", device=None,
                                                   grad=None if steps else metric)
    if steps:
        path = embedding_path(model, clean, corrupt, ends=(corrupt_cache[embed], clean_cache[embed]))
        grads = {s: 0.0 for s in sites}
        for alpha in ig_alphas(steps):
            _, cache = run_with_cache(model, corrupt, sites=sites, positions="all", device=None, grad=metric,
                                      interventions=[path(alpha)])
            grads = {s: grads[s] + cache.grads[s].float() / steps for s in sites}
    else:
        grads = {s: corrupt_cache.grads[s].float() for s in sites}
    products = {s: (clean_cache[s] - corrupt_cache[s]).float() * grads[s] for s in sites}
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
    ig_steps: int = 0,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_residual`: ``resid_pre`` by layer and position.

    Args:
        ig_steps: 0 for AtP; ``k > 0`` for integrated gradients along the inputs (module docs).

    Returns:
        Values ``layer position`` on the metric's scale, labels as ``patch_residual``'s.
    """
    layout = _check_layouts(clean, corrupt)
    sites = [model.text.resid_pre[layer] for layer in _layers(model, layers)]
    chosen = _positions(layout, positions)
    products, ends = _products(model, clean, corrupt, metric, sites, ig_steps)
    device = products[sites[0]].device if sites else torch.device("cpu")
    masks = torch.stack(chosen).to(device, torch.float64)  # position batch seq
    # layer batch seq, on one device (a device_map may spread the layers over several)
    per_token = torch.stack([products[s].sum(-1).to(device) for s in sites]) if sites else masks[:0]
    # One product (in float64: no TF32 rounding) and one copy to the host for every (layer, position),
    # not a host sync per site.
    values = ends["corrupt_metric"] + torch.einsum("lbs,pbs->lp", per_token.double(), masks).float().cpu()
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
    qk_fix: bool = True,
    ig_steps: int = 0,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_heads`: one value per (layer, head).

    Args:
        point: ``"z"`` (default), ``"result"``, ``"q"``, ``"k"``, ``"v"`` or ``"pattern"``.
        positions: restrict to these positions (queries; keys for ``"k"``), as in ``patch_heads``.
        qk_fix: for ``"q"`` and ``"k"``, AtP*'s fix for attention saturation (Kramar et al.
            2024): the head's pattern after the patch is recomputed exactly (softmax of the
            patched scores, same mask and soft-cap), and only the step from the pattern to
            the metric is linearised. ``False``: the plain first-order estimate.
        ig_steps: 0 for AtP; ``k > 0`` for integrated gradients along the inputs (module
            docs). For ``"q"`` and ``"k"`` it needs ``qk_fix=False`` (the two fixes do not
            compose: the QK fix linearises at the corrupt run).

    Returns:
        Values ``layer head`` (key-value heads for ``"k"`` and ``"v"``).
    """
    layout = _check_layouts(clean, corrupt)
    p = as_point(point)
    if p not in _HEAD_POINTS:
        raise InputError(f"attribute_heads attributes a per-head point ({', '.join(q.short for q in _HEAD_POINTS)}), "
                         f"got {p.short!r}")
    if qk_fix and p in (Point.Q, Point.K):
        if _check_steps(ig_steps):
            raise InputError(f"attribute_heads(point={p.short!r}) takes either the QK fix or ig_steps, not both; "
                             "pass qk_fix=False to integrate the gradient, or ig_steps=0")
        return _qk_fixed(model, clean, corrupt, metric, p, _layers(model, layers),
                         resolve_positions(positions, layout, layout.seq_len))
    sites = [getattr(model.text, p.short)[layer] for layer in _layers(model, layers)]
    products, ends = _products(model, clean, corrupt, metric, sites, ig_steps)
    mask = resolve_positions(positions, layout, layout.seq_len)
    rows = []
    for site in sites:
        x = products[site]
        if p.pattern_shaped:  # batch head q k
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
    ig_steps: int = 0,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_neurons` (``mlp.hook_post`` of one layer).

    Args:
        ig_steps: 0 for AtP; ``k > 0`` for integrated gradients along the inputs (module docs).

    Returns:
        Values ``neuron``.
    """
    layout = _check_layouts(clean, corrupt)
    site = model.text.mlp_post[layer]
    products, ends = _products(model, clean, corrupt, metric, [site], ig_steps)
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
    ig_steps: int = 0,
) -> PatchingResult:
    """AtP estimate of :func:`~vlmlens.ops.patch_image_patches`: each patch's tokens together.

    Args:
        ig_steps: 0 for AtP; ``k > 0`` for integrated gradients along the inputs (module docs).

    Returns:
        Values ``row col`` (``text.hook_embed``), or ``layer row col`` (``resid_pre`` of ``layers``).
    """
    layout = _check_layouts(clean, corrupt)
    rows, cols = _single_grid(layout, image)
    sites = _image_patch_sites(model, layers)
    products, ends = _products(model, clean, corrupt, metric, sites, ig_steps)
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


def _scores(model: Any, layer: int, q: Tensor, k: Tensor) -> Tensor:
    """Attention scores as the kernel computes them before the mask: ``batch head q k``."""
    attn = model.block_module("text", layer, "attn")
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)  # key-value heads shared by query heads
    raw = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * attn.scaling
    cap = getattr(attn, "attn_logit_softcapping", None)
    return raw if cap is None else torch.tanh(raw / cap) * cap


def patched_pattern(model: Any, layer: int, pattern: Tensor, qk: tuple[Tensor, Tensor],
                    patched: tuple[Tensor, Tensor]) -> Tensor:
    """The pattern of a text layer after its q and k change from ``qk`` to ``patched``, exactly.

    ``softmax(log(pattern) + new scores - old scores)``: the mask and each row's normaliser
    cancel, so no mask has to be rebuilt; masked keys (pattern 0) stay 0.
    """
    return _renormalised(pattern, _scores(model, layer, *patched) - _scores(model, layer, *qk))


def _renormalised(pattern: Tensor, shift: Tensor | float = 0.0) -> Tensor:
    """``softmax(log(pattern) + shift)``; masked keys (pattern 0) stay 0."""
    return torch.softmax(pattern.float().log() + shift, dim=-1).nan_to_num(0.0)


def _qk_fixed(model: Any, clean: Batch, corrupt: Batch, metric: Metric, point: Point, layers: list[int],
              mask: Tensor | None) -> PatchingResult:
    """AtP* for q or k: exact pattern after the patch, linear from the pattern to the metric."""
    sites = {(kind, l): getattr(model.text, kind)[l] for kind in ("q", "k", "pattern") for l in layers}
    clean_logits, clean_cache = run_with_cache(model, clean, sites=list(sites.values()), positions="all", device=None)
    corrupt_logits, cache = run_with_cache(model, corrupt, sites=list(sites.values()), positions="all", device=None,
                                           grad=metric)
    rows = []
    for layer in layers:
        q, k = cache[sites["q", layer]], cache[sites["k", layer]]
        chosen = sites[point.short, layer]
        new = clean_cache[chosen].to(q.device)
        if mask is not None:
            old = cache[chosen]
            new = torch.where(mask[:, :, None, None].to(q.device), new, old)
        patched_q, patched_k = (new, k) if point is Point.Q else (q, new)
        pattern = cache[sites["pattern", layer]].float()
        after = patched_pattern(model, layer, pattern, (q, k), (patched_q, patched_k))
        before = _renormalised(pattern)  # the same softmax without a shift: a no-op patch scores 0
        effect = ((after - before) * cache.grads[sites["pattern", layer]].float()).sum((0, 2, 3))  # query heads
        if point is Point.K:
            effect = effect.view(k.shape[2], -1).sum(-1)  # per key-value head: its query heads together
        rows.append(effect.cpu())
    base = _scalar(metric(corrupt_logits, corrupt))
    chosen_sites = tuple(sites[point.short, l] for l in layers)
    values = base + torch.stack(rows)
    return PatchingResult(values=values, axes=("layer", "head"),
                          labels=(tuple(layers), tuple(range(values.shape[1]))), sites=chosen_sites,
                          clean_metric=_scalar(metric(clean_logits, clean)), corrupt_metric=base)


def _detached(act: Tensor, hook: Any) -> Tensor:
    return act.detach()


@no_type_check
def graddrop_heads(model: Any, clean: Batch, corrupt: Batch, metric: Metric, *, point: str | Point = "z",
                   layers: Sequence[int] | None = None) -> Any:
    """AtP*'s GradDrop score per head, against cancellation (Kramar et al. 2024).

    For every text layer ``l``, the AtP estimate of each head is recomputed with the gradient
    through layer ``l``'s residual writes (``hook_attn_out`` and ``hook_mlp_out``) stopped;
    a head's score is the mean over the other ``L - 1`` layers of the estimates' absolute
    values. Paths whose contributions cancel in the plain gradient show up in some of these,
    so a head with a large score and a small AtP estimate is worth patching exactly. The
    score is unsigned and on the metric's scale; it ranks, it does not estimate.

    Returns:
        A :class:`~vlmlens.ops.heads.HeadScores` (``layer head``).
    """
    from vlmlens.ops.heads import HeadScores

    p = as_point(point)
    if p not in HEAD_POINTS:
        raise InputError(f"graddrop_heads scores a per-head vector point (q, k, v, z, result), got {p.short!r}")
    _check_layouts(clean, corrupt)
    chosen = _layers(model, layers)
    sites = [getattr(model.text, p.short)[layer] for layer in chosen]
    _, clean_cache = run_with_cache(model, clean, sites=sites, positions="all", device=None)
    n = model.n_layers
    if n < 2:
        raise InputError("GradDrop needs at least two text layers")
    total = None
    for drop in range(n):
        stop = [Hook(site=Site(Tower.TEXT, q, drop), fn=_detached) for q in (Point.ATTN_OUT, Point.MLP_OUT)]
        _, cache = run_with_cache(model, corrupt, sites=sites, positions="all", device=None, grad=metric,
                                  interventions=stop)
        rows = torch.stack([((clean_cache[s] - cache[s]).float() * cache.grads[s].float()).sum((0, 1, 3)).cpu()
                            for s in sites])  # layer head
        own = torch.tensor([s.layer == drop for s in sites])[:, None]
        rows = rows.abs().masked_fill(own, 0.0)  # a head's own layer is not one of its L - 1
        total = rows if total is None else total + rows
    return HeadScores(total / (n - 1), tuple(chosen), f"GradDrop |AtP| score of {p.short}, mean over {n - 1} layers")
