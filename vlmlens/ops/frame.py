"""Where an edit lands in a running activation: its rows, this step's positions, heads, units.

An intervention is compiled once against a prepared batch (an :class:`EditContext`),
then every time its site fires it builds a :class:`Frame` from the model's per-call
context (:mod:`vlmlens.context`): which rows of the running batch it owns (a sweep
condition owns one stacked copy; a plain call owns all rows, including the return
sequences of a generation) and, at text sites, which token positions this forward
covers (the prompt, or one decoding step). Prompt-shaped data (position masks, patch
sources, per-role means) is cut to the step's positions and repeated to the rows here,
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmlens.context import Call, Step
from vlmlens.errors import InterventionError
from vlmlens.layout import TokenLayout
from vlmlens.sites import Point, Site, Tower

__all__ = ["EditContext", "Frame", "seq_axis"]


def seq_axis(site: Site) -> int:
    """Axis of token positions in a text site's activation (the query axis for patterns)."""
    return 2 if site.point.pattern_shaped else 1


@dataclass(frozen=True)
class EditContext:
    """What an intervention is compiled against.

    Attributes:
        model: the HookedVLM.
        layout: the prepared batch's layout (``None`` for raw processor dicts).
        copy: the stacked copy this intervention owns in a sweep (``None``: every row).
    """

    model: Any
    layout: TokenLayout | None
    copy: int | None = None

    def frame(self, site: Site, act: torch.Tensor) -> Frame:
        """The frame of one firing of ``site`` with activation ``act``."""
        stack = self.model._hooks.stack
        call = stack.call.at(site.tower)
        step = stack.step if site.tower is Tower.TEXT else None
        if site.tower is Tower.TEXT and step is None:
            step = Step(0, act.shape[seq_axis(site)])
        if site.tower is Tower.TEXT and self.layout is not None and act.shape[0] != self.layout.batch_size * call.copies:
            raise InterventionError(
                f"these interventions were prepared for a batch of {self.layout.batch_size} sample(s), but {site} "
                f"runs with {act.shape[0]} rows; pass the batch you run to hooks()/applied()"
            )
        return Frame(site=site, act_shape=tuple(act.shape), ctx=self, call=call, step=step)


@dataclass(frozen=True, kw_only=True)
class Frame:
    """One firing of a site, as one intervention sees it.

    Attributes:
        site: the site.
        act_shape: shape of the running activation.
        ctx: the intervention's compile context.
        call: the running call (stacked copies, their order).
        step: at text sites, the positions this forward covers.
    """

    site: Site
    act_shape: tuple[int, ...]
    ctx: EditContext
    call: Call
    step: Step | None

    @property
    def act_rows(self) -> int:
        return self.act_shape[0]

    @property
    def model(self) -> Any:
        return self.ctx.model

    @property
    def samples(self) -> int:
        """Rows of one copy of the prepared batch at this site."""
        if self.site.tower is Tower.TEXT:
            layout = self.ctx.layout
            return layout.batch_size if layout is not None else self.act_rows // self.call.copies
        return self.act_rows // self.call.copies

    def image_index(self) -> int:
        """At a site that fires once per image, which image of the batch is running."""
        if self.call.copies != 1:
            raise InterventionError(
                f"{self.site} runs once per image; editing it from per-image data is supported for a single copy of "
                "the batch (not inside a sweep or with num_return_sequences > 1)")
        return self.model._hooks.stack.image_call[self.site.layer]

    def rows(self) -> torch.Tensor | None:
        """Row indices this intervention owns (``None``: all rows)."""
        if self.ctx.copy is None:
            return None
        if self.site.tower is not Tower.TEXT and not self.model.adapter.vision.batched:
            raise InterventionError(
                f"{self.site}: this family's vision tower packs every image into one sequence without a batch "
                "axis, so a sweep cannot give each condition its own vision-site edit; run these conditions one "
                "by one with run_with_interventions()"
            )
        return self.call.rows_of_copy(self.ctx.copy, self.samples)

    def per_row(self, per_sample: torch.Tensor, what: str) -> torch.Tensor:
        """Align a per-sample tensor (leading axis = samples of the prepared batch) to the owned rows."""
        if per_sample.shape[0] != self.samples:
            raise InterventionError(
                f"{what} for {self.site} has {per_sample.shape[0]} sample(s) on its first axis, the batch has "
                f"{self.samples}; give one entry per sample of the batch (e.g. cache it from a batch of the same size)"
            )
        return per_sample if self.ctx.copy is not None else self.call.expand(per_sample)

    def window(self, prompt: torch.Tensor, axis: int, fill: Any = 0) -> torch.Tensor:
        """Cut a prompt-shaped tensor to this step's positions along ``axis`` (text sites)."""
        return self.step.window(prompt, axis, fill)

    def keys_window(self, prompt: torch.Tensor, axis: int, fill: Any = 0) -> torch.Tensor:
        """Cut a prompt-shaped tensor to the key positions a pattern covers now: ``[0, past + length)``."""
        return Step(0, self.step.past + self.step.length).window(prompt, axis, fill)

    def in_prompt(self) -> torch.Tensor:
        """``rows seq`` mask of this step's positions that belong to the prompt and are not padding."""
        layout = self.ctx.layout
        if layout is None:
            real = torch.ones(self.samples, self.step.past + self.step.length, dtype=torch.bool)
        else:
            real = ~layout.padding
        return self.per_row(self.window(real, 1, fill=False), "the prompt mask")

    def along_seq(self, mask: torch.Tensor, ndim: int) -> torch.Tensor:
        """Reshape a ``rows seq`` mask to broadcast against an activation with ``ndim`` axes."""
        shape = [1] * ndim
        shape[0], shape[seq_axis(self.site)] = mask.shape
        return mask.view(shape)

    def positions_mask(self, positions: Any, ndim: int) -> torch.Tensor | None:
        """Selection of ``positions`` (a Positions spec) in this step, broadcastable to the activation."""
        from vlmlens.ops.positions import resolve_positions

        if positions is None or (isinstance(positions, str) and positions == "all"):
            return None
        if self.site.tower is not Tower.TEXT:
            return self._vision_positions(positions, ndim)
        layout = self.ctx.layout
        seq = layout.seq_len if layout is not None else self.step.past + self.step.length
        mask = resolve_positions(positions, layout, seq)
        if mask.shape[0] != self.samples:
            raise InterventionError(
                f"the position mask for {self.site} has {mask.shape[0]} rows, the batch has {self.samples}"
            )
        return self.along_seq(self.per_row(self.window(mask, 1, fill=False), "positions"), ndim)

    def _vision_positions(self, positions: Any, ndim: int) -> torch.Tensor:
        from vlmlens.ops.positions import ImagePatches, patch_lists
        from vlmlens.ops.vision_positions import vision_patch_mask

        layout = self.ctx.layout
        if not isinstance(positions, ImagePatches) or layout is None:
            raise InterventionError(
                f"{self.site} is a {self.site.tower.value} site: choose its positions with "
                "ImagePatches([[(row, col), ...] per sample]) on a Batch from model.prepare() "
                f"(got positions={positions!r})")
        lists = patch_lists(positions.patches, layout, positions.image)
        per_image = self.model.runs_per_image(self.site)
        image_index = self.image_index() if per_image else None
        seq = self.act_shape[seq_axis(self.site)]
        packed = not per_image and not self.model.adapter.vision.batched
        copies = self.call.copies if packed else 1  # stacked copies follow each other in the packed sequence
        mask = vision_patch_mask(self.model, self.site, layout, lists, positions.image, seq // copies, image_index)
        if packed:
            mask = mask.repeat(1, copies)
        elif not per_image:
            mask = self.per_row(mask, "the patch positions")
        return self.along_seq(mask, ndim)

    def select(self, act: torch.Tensor, heads: Sequence[int] | None, dims: Sequence[int] | None) -> torch.Tensor | None:
        """Selection of heads and units (last axis), broadcastable to ``act``, or ``None`` (all)."""
        where = None
        if heads is not None:
            axis = self.site.point.head_axis
            if axis is None:
                raise InterventionError(
                    f"heads=... applies to q, k, v, z, result and pattern sites, not {self.site}")
            n = act.shape[axis]
            bad = [h for h in heads if not 0 <= h < n]
            if bad:
                raise InterventionError(
                    f"head {bad[0]} is out of range for {self.site} with {n} heads (valid 0..{n - 1})")
            sel = torch.zeros(n, dtype=torch.bool, device=act.device)
            sel[list(heads)] = True
            shape = [1] * act.dim()
            shape[axis] = n
            where = sel.view(shape)
        if dims is not None:
            n = act.shape[-1]
            bad = [d for d in dims if not 0 <= d < n]
            if bad:
                what = "neuron" if self.site.point in (Point.MLP_PRE, Point.MLP_POST) else "dimension"
                raise InterventionError(
                    f"{what} index {bad[0]} is out of range for {self.site} of width {n} (valid 0..{n - 1})")
            sel = torch.zeros(n, dtype=torch.bool, device=act.device)
            sel[list(dims)] = True
            where = sel if where is None else where & sel
        return where
