"""Batched condition sweeps: N intervention conditions in one stacked forward."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import no_type_check

import torch

from vlmlens.context import Call
from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.ops.interventions import Intervention, applied
from vlmlens.progress import progress_bar

__all__ = ["repeat_batch", "sweep"]


def repeat_batch(batch: Batch, copies: int) -> Batch:
    """``copies`` copies of a batch stacked along the batch axis (copy-major), layout unchanged."""
    inputs = {k: torch.cat([v] * copies) for k, v in batch.inputs.items()}
    return Batch(inputs, batch.layout, batch.questions)


@no_type_check


def sweep(
    model: object,
    batch: Batch,
    conditions: Sequence[Sequence[Intervention]],
    *,
    chunk_size: int = 8,
    reduce: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
    last: bool = False,
    progress: bool | None = None,
) -> torch.Tensor:
    """Run each condition (a list of interventions) on the same inputs.

    Conditions are stacked along the batch axis, ``chunk_size`` at a time, so memory
    is bounded by ``chunk_size * len(batch)`` samples; results equal running the
    conditions one by one.

    Args:
        model: a HookedVLM.
        batch: from ``model.prepare``.
        conditions: one list of interventions per condition (``[]`` = clean run).
        chunk_size: conditions per forward.
        reduce: ``reduce(logits, batch) -> tensor`` applied to each condition's logits on the
            model's device (e.g. a patching metric), so only its result is copied to the CPU.
        last: Compute and return only each sample's last-prompt-position logits
            (``HookedVLM.forward(last=True)``): ``condition batch vocab``.
        progress: a progress bar over the stacked forwards (``None``: when there are at least
            8 of them, e.g. a patching sweep; see :mod:`vlmlens.progress`).

    Returns:
        Logits ``condition batch seq vocab`` (with ``last``: ``condition batch vocab``) on
        the CPU, or with ``reduce`` the stacked reductions ``condition ...``.
    """
    if not isinstance(batch, Batch):
        raise InputError("sweep needs a Batch from model.prepare() (its layout names positions and patches)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if isinstance(conditions, Intervention) or not isinstance(conditions, Sequence) or not conditions:
        raise InputError("sweep needs a non-empty list of conditions, each a list of interventions "
                         "(e.g. [[], [Ablate(...)]]; [] is the clean run)")
    if last and reduce is not None:
        raise InputError("give reduce= or last=True, not both: a reduce metric reads batch seq vocab logits, "
                         "last=True gives batch vocab")
    size = len(batch)
    out = []
    starts = range(0, len(conditions), chunk_size)
    for start in progress_bar(starts, desc=f"sweep: {len(conditions)} conditions", unit="forward", progress=progress,
                              leave=False):
        chunk = conditions[start : start + chunk_size]
        stacked = repeat_batch(batch, len(chunk))
        with contextlib.ExitStack() as stack:
            stack.enter_context(model._hooks.stack.entered(Call(copies=len(chunk), order="copy")))
            for i, condition in enumerate(chunk):
                stack.enter_context(applied(model, condition, batch.layout, copy=i))
            logits = model.forward(stacked, last=last)
        per_condition = logits.view(len(chunk), size, *logits.shape[1:])
        if reduce is not None:
            per_condition = torch.stack([torch.as_tensor(reduce(one, batch)) for one in per_condition])
        out.append(per_condition.cpu())
    return torch.cat(out)
