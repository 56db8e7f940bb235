"""Caching activations: ``run_with_cache`` and the ActivationCache it returns."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmlens.errors import InputError, SiteNotFoundError
from vlmlens.inputs import Batch
from vlmlens.ops.positions import Positions, resolve_positions
from vlmlens.sites import Point, Site, Tower, as_point

__all__ = ["ActivationCache", "SiteSpec", "run_with_cache", "select_sites"]

SiteSpec = None | str | Site | Iterable[str | Site] | Callable[[Site], bool]
"""Which sites: ``None`` (all), one name or Site, a list of them, or a predicate on Site."""


def select_sites(model: Any, sites: SiteSpec) -> list[Site]:
    """Resolve a site spec against a model, in forward order."""
    if sites is None:
        chosen = model.sites()
    elif callable(sites) and not isinstance(sites, (str, Site)):
        chosen = [s for s in model.sites() if sites(s)]
    elif isinstance(sites, (str, Site)):
        chosen = [model.site(sites)]
    else:
        chosen = [model.site(s) for s in sites]
    return sorted(set(chosen), key=model.site_order)


def _select(act: torch.Tensor, site: Site, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep chosen text positions: ``batch n ...`` (or ``batch ...`` for one position per sample)."""
    if mask is None or site.tower is not Tower.TEXT:
        return act
    axis = 2 if site.point.pattern_shaped else 1
    counts = mask.sum(1)
    if not bool((counts == counts[0]).all()):
        raise InputError(
            "the chosen positions differ in count between samples; cache them with positions='all' "
            "or choose the same number per sample"
        )
    index = torch.nonzero(mask)[:, 1].view(mask.shape[0], -1).to(act.device)
    rows = torch.arange(index.shape[0], device=act.device)[:, None]
    picked = act.transpose(1, axis)[rows, index].transpose(1, axis)
    return picked.squeeze(axis) if index.shape[1] == 1 else picked


def _to_host(act: torch.Tensor, device: torch.device | str, pending: set[torch.device]) -> torch.Tensor:
    """``act.to(device)``; a GPU tensor bound for the CPU goes to a pinned buffer by a
    non-blocking copy (its device joins ``pending``: synchronise it before reading), so
    caching does not stall the GPU's queue at every hooked site."""
    target = torch.device(device)
    if target.type != "cpu" or act.device.type != "cuda":
        return act.to(target)
    host = torch.empty(act.shape, dtype=act.dtype, pin_memory=True)
    host.copy_(act, non_blocking=True)
    pending.add(act.device)
    return host


@dataclass(frozen=True)
class ActivationCache(Mapping):
    """Activations keyed by :class:`Site`; also indexable by name or ``(short, layer)``.

    Attributes:
        activations: the cached tensors by site.
        positions: the positions spec they were selected with.
        grads: with ``run_with_cache(..., grad=metric)``, the metric's gradients, keyed alike.
        model: the model it came from (for the TransformerLens-style analysis methods).

    Examples:
        >>> cache["text.blocks.0.hook_resid_post"] is cache["resid_post", 0]
        True
    """

    activations: dict[Site, torch.Tensor]
    positions: Any = None
    grads: ActivationCache | None = None
    model: Any = field(default=None, repr=False, compare=False)

    def _key(self, key: Any) -> Site:
        if isinstance(key, tuple):
            short, layer, *tower = key
            return Site(tower[0] if tower else Tower.TEXT, as_point(short), layer)
        return Site.parse(key)

    def __getitem__(self, key: Any) -> torch.Tensor:
        site = self._key(key)
        if site not in self.activations:
            raise SiteNotFoundError(f"{site} was not cached; cached sites: {len(self.activations)} (see cache.keys())")
        return self.activations[site]

    def __iter__(self) -> Iterator[Site]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def stack(self, point: str | Point, tower: Tower | str = Tower.TEXT) -> torch.Tensor:
        """Stack one point over layers: ``layer batch ...``."""
        point = as_point(point)
        sites = sorted((s for s in self.activations if s.point is point and s.tower.value == str(tower)),
                       key=lambda s: s.layer)
        if not sites:
            raise SiteNotFoundError(f"no {tower}.blocks.*.{point.value} sites in this cache")
        return torch.stack([self.activations[s] for s in sites])

    def _model(self, what: str) -> Any:
        if self.model is None:
            raise InputError(f"cache.{what} needs the model; use a cache from run_with_cache, or call "
                             f"vlmlens.ops.{what}(model, cache, ...)")
        return self.model

    def accumulated_resid(self, layer: int | None = None, *, incl_mid: bool = False, apply_ln: bool = False,
                          mlp_input: bool = False, return_labels: bool = False) -> Any:
        """The residual stream accumulated up to the input of ``layer``, stacked (TransformerLens's).

        ``resid_pre`` of layers ``0..layer`` (``incl_mid``: with ``resid_mid`` of each earlier
        layer; ``mlp_input``: and of ``layer``), or for ``layer`` ``None``/``-1``/``n_layers``
        every ``resid_pre`` and ``final_post``. ``apply_ln`` at the final residual applies the
        real final norm to each entry (a logit lens, as TransformerLens 4 recomputes it);
        before a layer it freezes that layer's norm at this run's scale (see
        :func:`~vlmlens.ops.logit_attribution.apply_ln_to_stack`). :func:`~vlmlens.ops.logit_lens`
        unembeds as well, at any positions.

        Returns:
            ``part batch [pos] d_model`` and, with ``return_labels``, labels ``0_pre``, ``0_mid``, ...
        """
        from vlmlens.ops.logit_attribution import _placement, _stop, apply_ln_to_stack

        model = self._model("accumulated_resid")
        n = model.n_layers
        stop = _stop(model, layer)
        parts, labels = [], []
        for l in range(stop + 1):
            if l == n:
                parts.append(self[Site(Tower.TEXT, Point.RESID_POST, n - 1)])
                labels.append("final_post")
                continue
            parts.append(self[Site(Tower.TEXT, Point.RESID_PRE, l)])
            labels.append(f"{l}_pre")
            if (incl_mid and l < stop) or (mlp_input and l == stop):
                parts.append(self[Site(Tower.TEXT, Point.RESID_MID, l)])
                labels.append(f"{l}_mid")
        stack = torch.stack(parts)
        if apply_ln and stop == n:
            norm = model.final_norm
            device, dtype = _placement(model, norm)
            with torch.no_grad():
                stack = torch.stack([norm(part.to(device, dtype)).to(part.device) for part in stack])
        elif apply_ln:
            stack = apply_ln_to_stack(model, self, stack, stop, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def to_transformer_lens(self) -> Any:
        """This cache's text tower as a ``transformer_lens.ActivationCache`` (see :mod:`vlmlens.tl`)."""
        from vlmlens.tl import to_transformer_lens

        return to_transformer_lens(self)

    def decompose_resid(self, layer: int | None = None, **kwargs: Any) -> Any:
        """:func:`vlmlens.ops.decompose_resid` on this cache."""
        from vlmlens.ops.logit_attribution import decompose_resid

        return decompose_resid(self._model("decompose_resid"), self, layer, **kwargs)

    def stack_head_results(self, layer: int | None = None, **kwargs: Any) -> Any:
        """:func:`vlmlens.ops.stack_head_results` on this cache: ``L{l}H{h}`` parts."""
        from vlmlens.ops.logit_attribution import stack_head_results

        return stack_head_results(self._model("stack_head_results"), self, layer, **kwargs)

    def apply_ln_to_stack(self, stack: torch.Tensor, layer: int | None = None, *, mlp_input: bool = False) -> Any:
        """:func:`vlmlens.ops.apply_ln_to_stack` on this cache (the real scale and gain)."""
        from vlmlens.ops.logit_attribution import apply_ln_to_stack

        return apply_ln_to_stack(self._model("apply_ln_to_stack"), self, stack, layer, mlp_input=mlp_input)

    def logit_attrs(self, stack: torch.Tensor, tokens: Any, incorrect_tokens: Any = None, **kwargs: Any) -> Any:
        """:func:`vlmlens.ops.logit_attrs` on this cache."""
        from vlmlens.ops.logit_attribution import logit_attrs

        return logit_attrs(self._model("logit_attrs"), self, stack, tokens, incorrect_tokens, **kwargs)


def run_with_cache(
    model: Any,
    batch: Batch | dict[str, torch.Tensor],
    *,
    sites: SiteSpec = None,
    positions: Positions = "all",
    device: torch.device | str | None = "cpu",
    interventions: Iterable[Any] = (),
    grad: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    last: bool = False,
) -> tuple[torch.Tensor, ActivationCache]:
    """One forward that returns logits and the chosen activations.

    Args:
        model: a HookedVLM.
        batch: from ``model.prepare``.
        sites: which sites (default all; see :data:`SiteSpec`).
        positions: which text positions to keep, selected before anything is copied
            (``"last"`` keeps one vector per sample). Vision and projector sites are kept whole.
            Qwen2-VL's vision q/k/v/pattern (computed once per image) are stacked per image,
            ``image patch head d_head`` and ``image head patch patch``, zero-padded.
        device: where cached tensors go (``None``: leave them where they are).
        interventions: applied during the same forward (see :mod:`vlmlens.ops.interventions`).
        grad: a metric ``metric(logits, batch) -> scalar``; if given, the forward keeps the
            autograd graph and ``cache.grads`` holds d metric / d activation at every cached
            site (same shapes and positions as the activations), with interventions active.
            Only the requested sites' tensors are kept.
        last: Unembed only each sample's last prompt position (``HookedVLM.forward(last=True)``);
            the logits are then ``batch vocab`` (the ``grad`` metric sees those).

    Returns:
        Logits ``batch seq vocab`` (on ``device``) and the cache. With interventions, each
        site holds the value the model actually used: the edited value at an edited site
        and the values downstream of it.
    """
    from vlmlens.ops.interventions import applied

    chosen = select_sites(model, sites)
    if grad is not None and last:
        raise InputError("give grad= or last=True, not both: a grad metric reads batch seq vocab logits")
    if grad is not None and not callable(grad):
        raise InputError(f"grad must be a metric(logits, batch) -> scalar tensor, got {type(grad).__name__}")
    layout = batch.layout if isinstance(batch, Batch) else None
    mask = resolve_positions(positions, layout, model._inputs(batch)["input_ids"].shape[1])
    results = {(s.tower, s.layer) for s in chosen if s.point is Point.RESULT}
    calls: dict[Site, list[torch.Tensor]] = {s: [] for s in chosen}
    per_image = {s for s in chosen if model.runs_per_image(s)}
    pending: set[torch.device] = set()  # devices with copies to the host still in flight

    def select(site: Site, act: torch.Tensor) -> torch.Tensor:
        act = act.detach() if site in per_image else _select(act.detach(), site, mask)
        return _to_host(act, device, pending) if device is not None else act

    def keep(site: Site, act: torch.Tensor) -> None:
        if grad is None:  # positions are selected, and copied off the device, as each site fires
            calls[site].append(select(site, act))
            return
        if not act.requires_grad:
            act.requires_grad_(True)  # outside any graph (e.g. all weights frozen): make it a leaf to differentiate
        calls[site].append(act)

    with model.result_hooks(results), applied(model, interventions, layout):
        # Registered after the interventions' hooks, so each site is cached as the model used it (post-edit).
        handles = [model.module(model.hook_path(s)).register_forward_hook(lambda m, a, o, s=s: keep(s, o))
                   for s in chosen]
        try:
            with torch.set_grad_enabled(grad is not None):
                logits = model._logits(batch, last=last)
                grads = _gradients(grad, logits, batch, calls) if grad is not None else None
        finally:
            for handle in handles:
                handle.remove()

    def settle() -> None:  # the host copies in flight have landed
        for gpu in pending:
            torch.cuda.synchronize(gpu)
        pending.clear()

    def finish(parts_of: dict[Site, list[torch.Tensor]], selected: bool) -> dict[Site, torch.Tensor]:
        out = {}
        for site, parts in parts_of.items():
            parts = parts if selected else [select(site, p) for p in parts]
            if site in per_image:
                settle()  # joining reads the host buffers
                out[site] = _join(site, parts)
            else:
                out[site] = parts[0]
        return out

    grad_cache = ActivationCache(finish(grads, selected=False), positions, model=model) if grads is not None else None
    logits = logits.detach()
    logits = _to_host(logits, device, pending) if device is not None else logits
    activations = finish(calls, selected=grad is None)
    settle()
    return logits, ActivationCache(activations, positions, grad_cache, model)


def _gradients(metric: Callable, logits: torch.Tensor, batch: Any,
               calls: dict[Site, list[torch.Tensor]]) -> dict[Site, list[torch.Tensor]]:
    """d metric / d activation for every cached call (zeros where the metric does not depend on it)."""
    value = torch.as_tensor(metric(logits, batch))
    if value.numel() != 1 or not value.requires_grad:
        raise InputError(f"grad=... must return a scalar that depends on the logits, got shape {tuple(value.shape)}"
                         f"{'' if value.requires_grad else ' with no gradient'}; e.g. logit_diff(yes_id, no_id)")
    flat = [(site, i, t) for site, parts in calls.items() for i, t in enumerate(parts)]
    found = torch.autograd.grad(value.reshape(()), [t for _, _, t in flat], allow_unused=True)
    out: dict[Site, list[torch.Tensor]] = {site: [] for site in calls}
    for (site, _, t), g in zip(flat, found, strict=True):
        out[site].append(torch.zeros_like(t) if g is None else g)
    return out


def _join(site: Site, parts: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-image calls into ``image ...``, zero-padding images with fewer patches.

    q/k/v calls ``1 n_i head d_head`` become ``image patch head d_head``; pattern calls
    ``1 head n_i n_i`` become ``image head patch patch`` (entries past an image's own
    patch count are 0; images never attend to each other).
    """
    axes = (2, 3) if site.point.pattern_shaped else (1,)
    longest = max(p.shape[axes[0]] for p in parts)
    padded = []
    for part in parts:
        pad: list[int] = []
        for axis in range(part.dim() - 1, 0, -1):
            pad += [0, longest - part.shape[axis] if axis in axes else 0]
        padded.append(torch.nn.functional.pad(part, pad))
    return torch.cat(padded)
