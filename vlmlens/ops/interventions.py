"""Interventions as values: ablate, patch, steer and mask, composable in a list.

Each intervention is a frozen dataclass. :func:`applied` turns a list of them into
PyTorch hooks on the sites' hook points for the duration of one call, and removes
every hook in a ``finally`` block, so nothing outlives the call, even after an error.

Example:
    >>> from vlmlens.ops import Ablate, run_with_interventions
    >>> logits = run_with_interventions(model, batch, [Ablate("text.blocks.0.attn.hook_z", heads=(1,))])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vlmlens.errors import InterventionError
from vlmlens.hooks import input_hook
from vlmlens.layout import TokenLayout
from vlmlens.ops.positions import Positions, resolve_positions
from vlmlens.sites import Point, Site, Tower

__all__ = [
    "Intervention",
    "Ablate",
    "Patch",
    "Steer",
    "MaskPixels",
    "MaskTokens",
    "BlockAttention",
    "Patches",
    "applied",
    "run_with_interventions",
]

Patches = Any
"""Image patches: per sample a list of ``(row, col)``, or a ``batch rows cols`` bool tensor."""

_HEAD_AXIS = {Point.Q: 2, Point.K: 2, Point.V: 2, Point.Z: 2, Point.RESULT: 2, Point.PATTERN: 1}


@dataclass(frozen=True)
class _Context:
    model: Any
    layout: TokenLayout | None
    rows: slice | None = None  # rows of the stacked batch this intervention owns (sweeps)


class Intervention:
    """Base class: an edit of one site's activation (or of the pixels)."""

    def compile(self, ctx: _Context) -> list[tuple[Site | str, Callable[[torch.Tensor], torch.Tensor]]]:
        raise NotImplementedError


def _where(site: Site, act: torch.Tensor, ctx: _Context, positions: Positions,
           heads: Sequence[int] | None, dims: Sequence[int] | None) -> torch.Tensor | None:
    """Boolean selection broadcastable to ``act`` (``None``: everything), or raise."""
    where = None
    if positions is not None and positions != "all":
        if site.tower is not Tower.TEXT:
            raise InterventionError(f"positions apply to text sites; {site} has no token positions")
        axis = 2 if site.point is Point.PATTERN else 1
        seq = ctx.layout.seq_len if ctx.layout is not None else act.shape[axis]
        if act.shape[axis] != seq:
            return torch.zeros((), dtype=torch.bool, device=act.device)  # a decoding step: chosen prompt positions are past
        mask = resolve_positions(positions, ctx.layout, seq).to(act.device)
        if act.shape[0] != mask.shape[0]:
            mask = mask.repeat_interleave(act.shape[0] // mask.shape[0], 0)
        shape = [1] * act.dim()
        shape[0], shape[axis] = mask.shape
        where = mask.view(shape)
    if heads is not None:
        axis = _HEAD_AXIS.get(site.point)
        if axis is None:
            raise InterventionError(f"heads=... applies to q, k, v, z, result and pattern sites, not {site}")
        n = act.shape[axis]
        bad = [h for h in heads if not 0 <= h < n]
        if bad:
            raise InterventionError(f"head {bad[0]} is out of range for {site} with {n} heads (valid 0..{n - 1})")
        sel = torch.zeros(n, dtype=torch.bool, device=act.device)
        sel[list(heads)] = True
        shape = [1] * act.dim()
        shape[axis] = n
        where = sel.view(shape) if where is None else where & sel.view(shape)
    if dims is not None:
        n = act.shape[-1]
        bad = [d for d in dims if not 0 <= d < n]
        if bad:
            what = "neuron" if site.point in (Point.MLP_PRE, Point.MLP_POST) else "dimension"
            raise InterventionError(f"{what} index {bad[0]} is out of range for {site} of width {n} (valid 0..{n - 1})")
        sel = torch.zeros(n, dtype=torch.bool, device=act.device)
        sel[list(dims)] = True
        where = sel if where is None else where & sel
    return where


def _rows(act: torch.Tensor, ctx: _Context, site: Site) -> slice:
    """The rows of ``act`` that belong to this intervention in a stacked sweep batch."""
    if ctx.rows is None or site.tower is Tower.TEXT:
        return slice(None) if ctx.rows is None else ctx.rows
    if not ctx.model.adapter.vision.batched:
        raise InterventionError(
            f"{site}: this family's vision tower has no batch axis, so a sweep cannot give each condition "
            "its own vision-site edit; run these conditions one by one with run_with_interventions()"
        )
    images = sum(len(sample) for sample in ctx.layout.images)
    copy = ctx.rows.start // ctx.layout.batch_size
    return slice(copy * images, (copy + 1) * images)


def _edit(site: Site, ctx: _Context, fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]):
    def apply(act: torch.Tensor) -> torch.Tensor:
        rows = _rows(act, ctx, site)
        part = act[rows]
        new_part = fn(part, None)
        if new_part is part:
            return act
        out = act.clone()
        out[rows] = new_part
        return out

    return apply


@dataclass(frozen=True, kw_only=True)
class _SiteEdit(Intervention):
    site: Site | str
    positions: Positions = None
    heads: tuple[int, ...] | None = None
    dims: tuple[int, ...] | None = None

    def _replacement(self, act: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compile(self, ctx: _Context) -> list[tuple[Site, Callable[[torch.Tensor], torch.Tensor]]]:
        site = ctx.model.site(self.site)

        def fn(act: torch.Tensor, _: Any) -> torch.Tensor:
            where = _where(site, act, ctx, self.positions, self.heads, self.dims)
            new = self._replacement(act).to(act.dtype)
            return new if where is None else torch.where(where, new, act)

        return [(site, _edit(site, ctx, fn))]


@dataclass(frozen=True, kw_only=True)
class Ablate(_SiteEdit):
    """Zero- or mean-ablate a site (optionally only some positions, heads, neurons/dims).

    Attributes:
        mode: ``"zero"`` or ``"mean"``.
        mean: for ``"mean"``: a tensor broadcastable to the activation without its batch
            axis (see :func:`vlmlens.ops.mean_activation`).
    """

    mode: Literal["zero", "mean"] = "zero"
    mean: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise InterventionError(f"Ablate mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean" and self.mean is None:
            raise InterventionError("mode='mean' needs mean=...; compute one with vlmlens.ops.mean_activation()")

    def _replacement(self, act: torch.Tensor) -> torch.Tensor:
        if self.mode == "zero":
            return torch.zeros_like(act)
        return self.mean.to(act.device).expand_as(act)


@dataclass(frozen=True, kw_only=True)
class Patch(_SiteEdit):
    """Replace a site's activation with one from another run (clean -> corrupt patching).

    Attributes:
        source: the source activation, same shape as this run's (e.g. ``cache[site]``
            from ``run_with_cache(..., positions="all")``).
    """

    source: torch.Tensor = field(compare=False)

    def _replacement(self, act: torch.Tensor) -> torch.Tensor:
        src = self.source.to(act.device)
        if src.dim() == act.dim() >= 3 and src.shape[1] != act.shape[1] and act.shape[1] == 1:
            return act  # a decoding step: the source covers the prompt only
        if src.shape != act.shape:
            if src.shape[1:] == act.shape[1:] and act.shape[0] % src.shape[0] == 0:
                return src.repeat_interleave(act.shape[0] // src.shape[0], 0)
            raise InterventionError(f"patch source for {self.site} has shape {tuple(src.shape)}, "
                                    f"the activation has {tuple(act.shape)}; cache the source with positions='all'")
        return src


@dataclass(frozen=True, kw_only=True)
class Steer(_SiteEdit):
    """Add ``scale * vector`` to a site (at chosen positions)."""

    vector: torch.Tensor = field(compare=False)
    scale: float = 1.0

    def _replacement(self, act: torch.Tensor) -> torch.Tensor:
        return act + self.scale * self.vector.to(act.device, act.dtype)


def _patch_lists(patches: Patches, layout: TokenLayout, image: int) -> list[list[tuple[int, int]]]:
    if isinstance(patches, torch.Tensor):
        return [[(int(r), int(c)) for r, c in torch.nonzero(p)] for p in patches]
    lists = [list(p) for p in patches]
    if len(lists) != layout.batch_size:
        raise InterventionError(f"got patch lists for {len(lists)} samples, the batch has {layout.batch_size}")
    for b, plist in enumerate(lists):
        for r, c in plist:
            layout.patch_position(b, r, c, image)  # raises on a patch outside the grid
    return lists


@dataclass(frozen=True, kw_only=True)
class MaskPixels(Intervention):
    """Grey out image patches in pixel space, before the vision encoder.

    The fill is 0 in the processor's normalised space, i.e. the processor's mean
    colour (128 grey for the usual 0.5 mean).

    Attributes:
        patches: per sample the ``(row, col)`` patches of the token grid to grey out.
        image: which image of each sample.
    """

    patches: Patches = field(compare=False)
    image: int = 0

    def compile(self, ctx: _Context) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
        layout = ctx.layout
        if layout is None:
            raise InterventionError("MaskPixels needs a Batch from model.prepare() (its layout names the patches)")
        lists = _patch_lists(self.patches, layout, self.image)
        model = ctx.model
        spans = [span for sample in layout.images for span in sample]
        counts = [len(sample) for sample in layout.images]
        first = [sum(counts[:b]) for b in range(len(counts))]

        copy = 0 if ctx.rows is None else ctx.rows.start // layout.batch_size

        def fn(pixels: torch.Tensor) -> torch.Tensor:
            out = pixels.clone()
            for b, plist in enumerate(lists):
                for r, c in plist:
                    _grey(model, out, spans, copy, first[b] + self.image, r, c)
            return out

        return [("pixels", fn)]


def _grey(model: Any, pixels: torch.Tensor, spans: list, copy: int, image: int, r: int, c: int) -> None:
    """Set the pixels under token-grid patch (r, c) of one image to 0 (the normalised mean)."""
    cols = spans[image].grid[1]
    if pixels.dim() == 4:  # images C H W, patch_size blocks
        p = pixels.shape[-1] // cols
        pixels[copy * len(spans) + image, :, r * p : (r + 1) * p, c * p : (c + 1) * p] = 0
        return
    # Qwen2-VL: flattened raw patches, merge x merge of them per token, images in order.
    per_token = model.adapter.merge**2
    per_image = [s.n_tokens * per_token for s in spans]
    token = r * cols + c
    base = copy * sum(per_image) + sum(per_image[:image]) + token * per_token
    pixels[base : base + per_token] = 0


@dataclass(frozen=True, kw_only=True)
class MaskTokens(Intervention):
    """Replace chosen image-token embeddings after the projector (at ``text.hook_embed``).

    Attributes:
        patches: per sample the ``(row, col)`` patches whose tokens to replace.
        fill: ``"zero"`` or a ``d_model`` vector (e.g. the dataset mean image embedding).
        image: which image of each sample.
    """

    patches: Patches = field(compare=False)
    fill: Literal["zero"] | torch.Tensor = field(default="zero", compare=False)
    image: int = 0

    def compile(self, ctx: _Context) -> list[tuple[Site, Callable[[torch.Tensor], torch.Tensor]]]:
        layout = ctx.layout
        if layout is None:
            raise InterventionError("MaskTokens needs a Batch from model.prepare()")
        lists = _patch_lists(self.patches, layout, self.image)
        mask = torch.zeros(layout.batch_size, layout.seq_len, dtype=torch.bool)
        for b, plist in enumerate(lists):
            for r, c in plist:
                mask[b, layout.patch_position(b, r, c, self.image)] = True
        site = Site(Tower.TEXT, Point.EMBED)
        fill = self.fill

        def fn(act: torch.Tensor, _: Any) -> torch.Tensor:
            if act.shape[1] != layout.seq_len:
                return act
            new = torch.zeros_like(act) if isinstance(fill, str) else fill.to(act.device, act.dtype).expand_as(act)
            return torch.where(mask.to(act.device)[..., None], new, act)

        return [(site, _edit(site, ctx, fn))]


@dataclass(frozen=True, kw_only=True)
class BlockAttention(Intervention):
    """Block attention edges from query positions to image patches in chosen text layers.

    Blocked pattern entries are set to 0 and each row is renormalised, which equals
    masking those scores to -inf before the softmax.

    Attributes:
        layers: text layers to edit.
        patches: per sample the ``(row, col)`` patches that may not be attended.
        queries: query positions (default ``"last"``, the answer-predicting token).
        heads: restrict to these heads (default all).
        image: which image of each sample.
    """

    layers: tuple[int, ...]
    patches: Patches = field(compare=False)
    queries: Positions = "last"
    heads: tuple[int, ...] | None = None
    image: int = 0

    def compile(self, ctx: _Context) -> list[tuple[Site, Callable[[torch.Tensor], torch.Tensor]]]:
        layout = ctx.layout
        if layout is None:
            raise InterventionError("BlockAttention needs a Batch from model.prepare()")
        lists = _patch_lists(self.patches, layout, self.image)
        keys = torch.zeros(layout.batch_size, layout.seq_len, dtype=torch.bool)
        for b, plist in enumerate(lists):
            for r, c in plist:
                keys[b, layout.patch_position(b, r, c, self.image)] = True
        out = []
        for layer in self.layers:
            site = ctx.model.site(Site(Tower.TEXT, Point.PATTERN, layer))

            def fn(act: torch.Tensor, _: Any, site: Site = site) -> torch.Tensor:
                where = _where(site, act, ctx, self.queries, self.heads, None)
                k = keys.to(act.device)
                if act.shape[-1] != k.shape[1]:
                    k = torch.nn.functional.pad(k, (0, act.shape[-1] - k.shape[1]))
                if act.shape[0] != k.shape[0]:
                    k = k.repeat_interleave(act.shape[0] // k.shape[0], 0)
                block = k[:, None, None, :] if where is None else where & k[:, None, None, :]
                kept = act.masked_fill(block, 0.0)
                return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(act.dtype).tiny)

            out.append((site, _edit(site, ctx, fn)))
        return out


@contextlib.contextmanager
def applied(
    model: Any,
    interventions: Sequence[Intervention] | Sequence[tuple[Sequence[Intervention], slice]],
    layout: TokenLayout | None,
    *,
    generation: bool = False,
    rows: slice | None = None,
) -> Iterator[None]:
    """Apply interventions while inside; every hook is removed on exit, error or not.

    Args:
        model: a HookedVLM.
        interventions: a list of interventions, applied in list order at each site.
        layout: the batch layout (names positions and patches).
        generation: whether the call generates (position edits then apply at the prompt step).
        rows: the rows of a stacked batch these interventions own (used by sweeps).
    """
    ctx = _Context(model, layout, rows)
    edits: list[tuple[Site | str, Callable]] = []
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise InterventionError(f"expected Intervention values, got {type(intervention).__name__}")
        edits += intervention.compile(ctx)
    if not edits:
        yield
        return
    handles = []
    results = {(s.tower, s.layer) for s, _ in edits if isinstance(s, Site) and s.point is Point.RESULT}
    try:
        for target, fn in edits:
            if target == "pixels":
                module = model.module(model.adapter.vision.embed)
                handles.append(module.register_forward_pre_hook(input_hook(fn, keys=("pixel_values", "hidden_states")), with_kwargs=True))
            else:
                module = model.module(model.hook_path(target))
                handles.append(module.register_forward_hook(lambda m, a, o, fn=fn: fn(o)))
        if results:
            model._hooks.set_result(True, results)
        yield
    finally:
        for handle in handles:
            handle.remove()
        if results:
            model._hooks.set_result(False)


def run_with_interventions(model: Any, batch: Any, interventions: Sequence[Intervention]) -> torch.Tensor:
    """One forward with the interventions applied; returns logits ``batch seq vocab``."""
    layout = getattr(batch, "layout", None)
    with applied(model, interventions, layout):
        return model.forward(batch)
