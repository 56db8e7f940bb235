"""Interventions as values: ablate, patch, steer and mask, composable in a list.

Each intervention is a frozen dataclass. :func:`applied` turns a list of them into
PyTorch hooks on the sites' hook points for the duration of one call, and removes
every hook in a ``finally`` block, so nothing outlives the call, even after an error.

Positions and prompt-shaped data. An edit restricted with ``positions=`` touches those
prompt positions only. Data shaped like the prompt (a :class:`Patch` source, a
per-role mean, a token or patch mask) covers the prompt's positions; during generation
the positions of generated tokens are left alone by such edits, while an edit without
positions (zero ablation, a steering vector, a per-unit mean) applies at every
position the model processes, generated ones included. This is exactly what the same
edit does when the whole sequence is recomputed without a KV cache at every step.

Examples:
    >>> from vlmlens.ops import Ablate, run_with_interventions
    >>> logits = run_with_interventions(model, batch, [Ablate(site="text.blocks.0.attn.hook_z", heads=(1,))])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, no_type_check

import torch

from vlmlens.errors import InterventionError
from vlmlens.hooks import input_hook
from vlmlens.layout import TokenLayout
from vlmlens.ops.frame import EditContext, Frame, seq_axis
from vlmlens.ops.positions import Patches, Positions, patch_lists, token_mask
from vlmlens.sites import Point, Site, Tower

__all__ = [
    "Ablate",
    "AtSteps",
    "BlockAttention",
    "Hook",
    "HookInfo",
    "Intervention",
    "MaskPixels",
    "MaskTokens",
    "Patch",
    "Patches",
    "Steer",
    "applied",
    "run_with_interventions",
]

logger = logging.getLogger(__name__)

Edit = Callable[[torch.Tensor], torch.Tensor]


class Intervention:
    """Base class: an edit of one site's activation (or of the pixels)."""

    def compile(self, ctx: EditContext) -> list[tuple[Site | str, Edit]]:
        raise NotImplementedError


def _and(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a & b


def _edit(site: Site, ctx: EditContext, fn: Callable[[torch.Tensor, Frame], torch.Tensor]) -> Edit:
    """Apply ``fn`` to the rows of the activation this intervention owns."""

    def apply(act: torch.Tensor) -> torch.Tensor:
        frame = ctx.frame(site, act)
        rows = frame.rows()
        part = act if rows is None else act[rows.to(act.device)]
        new = fn(part, frame)
        if new is part:
            return act
        if rows is None:
            return new
        out = act.clone()
        out[rows.to(act.device)] = new
        return out

    return apply


def _indices(owner: Any, name: str) -> None:
    value = getattr(owner, name)
    if value is None:
        return
    if isinstance(value, int):  # bool is an int too
        raise InterventionError(f"{name}={value!r} must be a tuple of indices, e.g. {name}=({value},)")
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InterventionError(f"{name}={value!r} must be a tuple of int indices, e.g. {name}=(0, 2)")
    if not value:
        raise InterventionError(f"{name}=() selects nothing; leave {name}=None to edit everything")
    object.__setattr__(owner, name, tuple(value))


def _check_site(owner: Any) -> None:
    if not isinstance(owner.site, (str, Site)):
        raise InterventionError(
            f"{type(owner).__name__}.site must be a site name or Site (e.g. 'text.blocks.0.hook_resid_post' or "
            f"model.text.resid_post[0]), got {type(owner.site).__name__}")


def _warn_unused(model: Any, site: Site) -> None:
    if site.tower is Tower.VISION and site.layer is not None and site.layer in model.unused_vision_layers:
        logger.warning("%s: this vision block's output never reaches the language model (the projector reads "
                       "vision layer %d), so editing it changes nothing downstream", site,
                       min(model.unused_vision_layers) - 1)


def _fits(value: torch.Tensor, act: torch.Tensor, what: str, site: Site, hint: str) -> None:
    try:
        ok = torch.broadcast_shapes(value.shape, act.shape[1:]) == act.shape[1:]
    except RuntimeError:
        ok = False
    if not ok:
        raise InterventionError(f"{what} for {site} has shape {tuple(value.shape)}, which does not broadcast to the "
                                f"activation's {tuple(act.shape[1:])} (without its batch axis); {hint}")


@no_type_check
@dataclass(frozen=True, kw_only=True)
class _SiteEdit(Intervention):
    site: Site | str
    positions: Positions = None
    heads: tuple[int, ...] | None = None
    dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_site(self)
        _indices(self, "heads")
        _indices(self, "dims")

    def _replacement(self, act: torch.Tensor, frame: Frame) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The new values and where they are defined (``None``: everywhere)."""
        raise NotImplementedError

    def compile(self, ctx: EditContext) -> list[tuple[Site, Edit]]:
        site = ctx.model.site(self.site)
        _warn_unused(ctx.model, site)

        def fn(act: torch.Tensor, frame: Frame) -> torch.Tensor:
            where = _and(frame.select(act, self.heads, self.dims), frame.positions_mask(self.positions, act.dim()))
            new, defined = self._replacement(act, frame)
            where = _and(where, defined)
            if where is not None and not bool(where.any()):
                return act
            new = new.to(act.device, act.dtype)
            return new if where is None else torch.where(where, new, act)

        return [(site, _edit(site, ctx, fn))]


@no_type_check
@dataclass(frozen=True, kw_only=True)
class Ablate(_SiteEdit):
    """Zero- or mean-ablate a site (optionally only some positions, heads, neurons/dims).

    Attributes:
        mode: ``"zero"`` or ``"mean"``.
        mean: for ``"mean"``: a per-unit tensor broadcastable to the activation without its
            batch and position axes (e.g. ``d_model``), or a :class:`vlmlens.ops.RoleMean`
            from :func:`vlmlens.ops.mean_activation` (the mean of each token role: image
            patch (r, c), question, last position, other prompt tokens).
    """

    mode: Literal["zero", "mean"] = "zero"
    mean: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("zero", "mean"):
            raise InterventionError(f"Ablate mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean" and self.mean is None:
            raise InterventionError("mode='mean' needs mean=...; compute one with vlmlens.ops.mean_activation()")
        if self.mode == "zero" and self.mean is not None:
            raise InterventionError("mean=... is only used with mode='mean'; drop it or set mode='mean'")

    def _replacement(self, act: torch.Tensor, frame: Frame) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "zero":
            return torch.zeros_like(act), None
        from vlmlens.ops.means import RoleMean

        if isinstance(self.mean, RoleMean):
            layout = frame.ctx.layout
            if layout is None:
                raise InterventionError("a per-role mean needs a Batch from model.prepare() (its layout names roles)")
            per_sample = self.mean.expand(frame.site, layout).to(act.device)
            new = frame.per_row(frame.window(per_sample, 1), "the per-role mean")
            return new, frame.along_seq(frame.in_prompt().to(act.device), act.dim())
        if not isinstance(self.mean, torch.Tensor):
            raise InterventionError(f"mean must be a tensor or a RoleMean, got {type(self.mean).__name__}")
        mean = self.mean.to(act.device)
        _fits(mean, act, "the mean", frame.site, "give one value per unit, e.g. a d_model vector")
        return mean.expand_as(act), None


@no_type_check
@dataclass(frozen=True, kw_only=True)
class Patch(_SiteEdit):
    """Replace a site's activation with one from another run (clean -> corrupt patching).

    Attributes:
        source: the source activation over the prompt, with one row per sample of the
            batch (e.g. ``cache[site]`` from ``run_with_cache(..., positions="all")`` on a
            batch of the same size and length).
    """

    source: torch.Tensor = field(compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.source, torch.Tensor):
            raise InterventionError(f"Patch source must be a tensor, got {type(self.source).__name__}")

    def _replacement(self, act: torch.Tensor, frame: Frame) -> tuple[torch.Tensor, torch.Tensor | None]:
        src = self.source.to(act.device)
        site = frame.site
        hint = "cache the source with positions='all' from a batch of the same size and length"
        if frame.model.runs_per_image(site):  # source cached ``image ...``, zero-padded: crop this image's part
            index = frame.image_index()
            crop = src[index : index + 1]
            for axis in ((2, 3) if site.point.pattern_shaped else (1,)):
                crop = crop.narrow(axis, 0, act.shape[axis])
            if index >= src.shape[0] or crop.shape != act.shape:
                raise InterventionError(f"patch source for {site} has shape {tuple(src.shape)}; image {index} of this "
                                        f"run has {tuple(act.shape)}. {hint} (run_with_cache stacks images)")
            return crop, None
        if site.tower is not Tower.TEXT:
            if src.shape[0] != act.shape[0]:
                src = frame.per_row(src, "the patch source")
            if src.shape != act.shape:
                raise InterventionError(f"patch source for {site} has shape {tuple(self.source.shape)}, "
                                        f"the activation has {tuple(act.shape)}; {hint}")
            return src, None
        axis = seq_axis(site)
        seq = frame.ctx.layout.seq_len if frame.ctx.layout is not None else frame.step.past + frame.step.length
        expected = list(act.shape)
        expected[0], expected[axis] = frame.samples, seq
        if site.point.pattern_shaped:
            expected[3] = seq
        if list(src.shape) != expected:
            raise InterventionError(f"patch source for {site} has shape {tuple(src.shape)}, expected "
                                    f"{tuple(expected)} (one row per sample, every prompt position); {hint}")
        new = frame.window(src, axis)
        if site.point.pattern_shaped:
            new = frame.keys_window(new, 3)
        return frame.per_row(new, "the patch source"), frame.along_seq(frame.in_prompt().to(act.device), act.dim())


@no_type_check
@dataclass(frozen=True, kw_only=True)
class Steer(_SiteEdit):
    """Add ``scale * vector`` to a site (at chosen positions)."""

    vector: torch.Tensor = field(compare=False)
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.vector, torch.Tensor):
            raise InterventionError(f"Steer vector must be a tensor, got {type(self.vector).__name__}")

    def _replacement(self, act: torch.Tensor, frame: Frame) -> tuple[torch.Tensor, torch.Tensor | None]:
        vector = self.vector.to(act.device, act.dtype)
        _fits(vector, act, "the steering vector", frame.site, "give one value per unit, e.g. a d_model vector")
        return act + self.scale * vector, None


@dataclass(frozen=True)
class HookInfo:
    """The ``hook`` argument of a TransformerLens-style hook function: its site's name and layer."""

    site: Site

    @property
    def name(self) -> str:
        """The TransformerLens name (``blocks.0.attn.hook_z``; other towers keep their prefix)."""
        return self.site.tl_name

    def layer(self) -> int | None:
        return self.site.layer


@no_type_check
@dataclass(frozen=True, kw_only=True)
class Hook(Intervention):
    """Call ``fn(activation, hook)`` at a site, with TransformerLens's hook-function semantics.

    ``fn`` gets a copy of the activation (as the model computed it, at every firing:
    each decode step in generation, each copy's own rows in a sweep) and a
    :class:`HookInfo`; it returns a new activation of the same shape, or ``None`` to keep
    what it edited in place. Any custom edit can be written this way, without subclassing.

    Examples:
        >>> def double(resid, hook):
        ...     return 2 * resid
        >>> logits = run_with_interventions(model, batch, [Hook(site="blocks.0.hook_resid_post", fn=double)])
    """

    site: Site | str
    fn: Callable[..., Any] = field(compare=False)

    def __post_init__(self) -> None:
        _check_site(self)
        if not callable(self.fn):
            raise InterventionError(f"Hook fn must be callable as fn(activation, hook), got {type(self.fn).__name__}")

    def compile(self, ctx: EditContext) -> list[tuple[Site, Edit]]:
        site = ctx.model.site(self.site)
        _warn_unused(ctx.model, site)
        info = HookInfo(site)

        def fn(act: torch.Tensor, frame: Frame) -> torch.Tensor:
            work = act.clone()
            out = self.fn(work, info)
            if out is None:
                return work
            if not isinstance(out, torch.Tensor) or out.shape != act.shape or out.device != act.device:
                got = (f"{tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor)
                       else type(out).__name__)
                raise InterventionError(f"the hook function at {site.tl_name} returned {got}; return a tensor of the "
                                        f"activation's shape {tuple(act.shape)} on {act.device}, or None after "
                                        "editing it in place")
            return out.to(act.dtype)

        return [(site, _edit(site, ctx, fn))]


@no_type_check
@dataclass(frozen=True, kw_only=True)
class AtSteps(Intervention):
    """Apply interventions at chosen generation steps only.

    Step 0 is the forward over the prompt (and the image: vision, projector and pixel
    edits happen there or not at all); step ``k >= 1`` is the forward that reads the
    ``k``-th generated token to choose the next. An edit wrapped here acts on exactly what
    it would act on unwrapped, in those forwards only. Outside generation a forward is
    step 0.

    Examples:
        >>> steer = Steer(site="text.blocks.1.hook_resid_pre", vector=v)
        >>> out = model.generate(batch, max_new_tokens=5, interventions=[AtSteps(interventions=(steer,), steps=(2, 3))])
    """

    interventions: tuple[Intervention, ...]
    steps: tuple[int, ...]

    def __post_init__(self) -> None:
        inner = self.interventions
        if isinstance(inner, Intervention) or not isinstance(inner, (list, tuple)) or not all(
                isinstance(i, Intervention) for i in inner) or not inner:
            raise InterventionError(f"AtSteps(interventions=...) takes a non-empty tuple of interventions, got {inner!r}")
        object.__setattr__(self, "interventions", tuple(inner))
        _indices(self, "steps")
        bad = [s for s in self.steps if s < 0]
        if bad:
            raise InterventionError(f"generation steps count from 0 (the prompt's forward), got {bad[0]}")

    def compile(self, ctx: EditContext) -> list[tuple[Site | str, Edit]]:
        if ctx.layout is None:
            raise InterventionError("AtSteps needs a Batch from model.prepare() (its prompt length counts the steps)")
        edits = [(site, fn) for inner in self.interventions for site, fn in inner.compile(ctx)]
        image_side = [s for s, _ in edits if not (isinstance(s, Site) and s.tower is Tower.TEXT)]
        if image_side and 0 not in self.steps:
            logger.warning("AtSteps(steps=%s) wraps image-side edits (%s), which act only at step 0 (the image is "
                           "encoded once): they change nothing here", self.steps, image_side[0])
        stack = ctx.model._hooks.stack
        prompt = ctx.layout.seq_len

        def gate(site: Site | str, fn: Edit) -> Edit:
            def apply(act: torch.Tensor) -> torch.Tensor:
                text = isinstance(site, Site) and site.tower is Tower.TEXT
                step = stack.step.generated(prompt) if text else 0
                return fn(act) if step in self.steps else act

            return apply

        return [(site, gate(site, fn)) for site, fn in edits]


@no_type_check
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

    def compile(self, ctx: EditContext) -> list[tuple[str, Edit]]:
        from vlmlens.ops.pixels import pixel_mask

        layout = ctx.layout
        if layout is None:
            raise InterventionError("MaskPixels needs a Batch from model.prepare() (its layout names the patches)")
        lists = patch_lists(self.patches, layout, self.image)
        model = ctx.model

        def fn(pixels: torch.Tensor) -> torch.Tensor:
            stack = model._hooks.stack
            mask = pixel_mask(model.adapter, layout, lists, self.image, pixels, stack.call.at(Tower.VISION), ctx.copy)
            return pixels.masked_fill(mask.to(pixels.device), 0)

        return [("pixels", fn)]


@no_type_check
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

    def __post_init__(self) -> None:
        if isinstance(self.fill, str) and self.fill != "zero" or not isinstance(self.fill, (str, torch.Tensor)):
            raise InterventionError(f"MaskTokens fill must be 'zero' or a d_model tensor, got {self.fill!r}")

    def compile(self, ctx: EditContext) -> list[tuple[Site, Edit]]:
        layout = ctx.layout
        if layout is None:
            raise InterventionError("MaskTokens needs a Batch from model.prepare()")
        mask = token_mask(self.patches, layout, self.image)
        site = Site(Tower.TEXT, Point.EMBED)
        if isinstance(self.fill, torch.Tensor) and tuple(self.fill.shape) != (ctx.model.d_model,):
            raise InterventionError(f"MaskTokens fill has shape {tuple(self.fill.shape)}, expected "
                                    f"(d_model={ctx.model.d_model},)")

        def fn(act: torch.Tensor, frame: Frame) -> torch.Tensor:
            where = frame.along_seq(frame.per_row(frame.window(mask, 1, fill=False), "the token mask"), act.dim())
            if not bool(where.any()):
                return act
            new = torch.zeros_like(act) if isinstance(self.fill, str) else self.fill.to(act.device, act.dtype)
            return torch.where(where.to(act.device), new, act)

        return [(site, _edit(site, ctx, fn))]


@no_type_check
@dataclass(frozen=True, kw_only=True)
class BlockAttention(Intervention):
    """Block attention edges from a query group to a key group in chosen text layers.

    Blocked pattern entries are set to 0 and each row is renormalised, which equals
    masking those scores to -inf before the softmax (attention knockout).

    Attributes:
        layers: text layers to edit.
        patches: per sample the ``(row, col)`` patches that may not be attended; or
        keys: any key positions instead (``"image"``, ``"question"``, ``"last"``, indices,
            a ``batch seq`` mask, ``ImagePatches``): e.g. question -> image with
            ``queries="question", keys="image"``, image -> image with both ``"image"``.
            Exactly one of ``patches`` and ``keys``.
        queries: query positions (default ``"last"``, the answer-predicting token;
            ``None`` for every query, generated tokens included).
        heads: restrict to these heads (default all).
        image: which image of each sample (with ``patches``).
    """

    layers: tuple[int, ...]
    patches: Patches | None = field(default=None, compare=False)
    keys: Positions = field(default=None, compare=False)
    queries: Positions = "last"
    heads: tuple[int, ...] | None = None
    image: int = 0

    def __post_init__(self) -> None:
        _indices(self, "layers")
        _indices(self, "heads")
        if (self.patches is None) == (self.keys is None):
            raise InterventionError("BlockAttention takes exactly one of patches=... (image patches) and keys=... "
                                    "(any key positions, e.g. 'image' or 'question')")

    def compile(self, ctx: EditContext) -> list[tuple[Site, Edit]]:
        from vlmlens.ops.positions import resolve_positions

        layout = ctx.layout
        if layout is None:
            raise InterventionError("BlockAttention needs a Batch from model.prepare()")
        if self.patches is not None:
            keys = token_mask(self.patches, layout, self.image)
        else:
            keys = resolve_positions(self.keys, layout, layout.seq_len)
            if keys is None:  # every key: nothing would be left to attend to
                raise InterventionError("BlockAttention keys='all' would block every key; name a key group")
        out = []
        for layer in self.layers:
            site = ctx.model.site(Site(Tower.TEXT, Point.PATTERN, layer))

            def fn(act: torch.Tensor, frame: Frame) -> torch.Tensor:
                k = frame.per_row(frame.keys_window(keys, 1, fill=False), "the key mask").to(act.device)
                block = k[:, None, None, :]
                block = _and(block, frame.positions_mask(self.queries, act.dim()))
                block = _and(block, frame.select(act, self.heads, None))
                if not bool(block.any()):
                    return act
                kept = act.masked_fill(block, 0.0)
                return kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(act.dtype).tiny)

            out.append((site, _edit(site, ctx, fn)))
        return out


@no_type_check
def compile_all(model: Any, interventions: Sequence[Intervention], layout: TokenLayout | None,
                copy: int | None = None) -> list[tuple[Site | str, Edit]]:
    """Validate and compile a list of interventions against a batch layout."""
    if isinstance(interventions, Intervention):
        raise InterventionError(f"pass a list of interventions, e.g. [{type(interventions).__name__}(...)], "
                                "not a bare intervention")
    if not isinstance(interventions, Sequence) or isinstance(interventions, str):
        raise InterventionError(f"interventions must be a list of Intervention values, got "
                                f"{type(interventions).__name__}")
    ctx = EditContext(model, layout, copy)
    edits: list[tuple[Site | str, Edit]] = []
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise InterventionError(f"expected Intervention values, got {type(intervention).__name__}")
        edits += intervention.compile(ctx)
    return edits


@contextlib.contextmanager
@no_type_check
def applied(
    model: Any,
    interventions: Sequence[Intervention],
    layout: TokenLayout | None,
    *,
    copy: int | None = None,
) -> Iterator[None]:
    """Apply interventions while inside; every hook is removed on exit, error or not.

    Args:
        model: a HookedVLM.
        interventions: a list of interventions, applied in list order at each site.
        layout: the batch layout (names positions and patches).
        copy: the stacked copy of the batch these interventions own (sweep conditions);
            ``None``: every row of whatever runs.
    """
    edits = compile_all(model, interventions, layout, copy)
    if not edits:
        yield
        return
    handles = []
    results = {(s.tower, s.layer) for s, _ in edits if isinstance(s, Site) and s.point is Point.RESULT}
    try:
        for target, fn in edits:
            if target == "pixels":
                module = model.module(model.adapter.vision.embed)
                hook = input_hook(fn, keys=("pixel_values", "hidden_states"))
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                module = model.module(model.hook_path(target))
                handles.append(module.register_forward_hook(lambda m, a, o, fn=fn: fn(o)))
        with model.result_hooks(results) if results else contextlib.nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()


@no_type_check
def run_with_interventions(model: Any, batch: Any, interventions: Sequence[Intervention]) -> torch.Tensor:
    """One forward with the interventions applied; returns logits ``batch seq vocab``."""
    layout = getattr(batch, "layout", None)
    with applied(model, interventions, layout):
        return model.forward(batch)
