"""Units a circuit search ranks, where they live, and how a set of them is ablated.

A unit is ``(layer, index)`` of one kind, read at the answer position (the last prompt
token) of a text layer:

========== ============================ ==========================
kind        site                         index
========== ============================ ==========================
``neuron``  ``blocks.l.mlp.hook_post``    MLP neuron (d_mlp)
``mlp_out`` ``blocks.l.hook_mlp_out``     MLP-output dim (d_model)
``resid``   ``blocks.l.hook_resid_post``  residual dim (d_model)
``head``    ``blocks.l.attn.hook_z``      attention head
========== ============================ ==========================

Ablations replace the chosen units at the last prompt position only, the position the
units were ranked at: with 0 (``zero``), with their mean over the ranking questions'
last positions (``mean``, the last-position role mean), or with the value the same unit
had on another question about a different image (``resample``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.ops.cache import run_with_cache
from vlmlens.ops.interventions import Ablate, Intervention, Patch
from vlmlens.sites import Point, Site, Tower

__all__ = ["KINDS", "Baseline", "UnitKind", "ablation", "per_unit", "read_units", "unit_site"]

UnitKind = Literal["neuron", "mlp_out", "resid", "head"]
Baseline = Literal["zero", "mean", "resample"]

KINDS: dict[str, Point] = {"neuron": Point.MLP_POST, "mlp_out": Point.MLP_OUT, "resid": Point.RESID_POST,
                           "head": Point.Z}
"""Unit kind -> the point of each text layer it is read at."""


def unit_site(kind: str, layer: int) -> Site:
    """The site of ``kind``'s units in text layer ``layer``."""
    if kind not in KINDS:
        raise InputError(f"unknown unit kind {kind!r}; kinds: {', '.join(KINDS)}")
    return Site(Tower.TEXT, KINDS[kind], layer)


def check_layers(model: Any, layers: Sequence[int] | None) -> tuple[int, ...]:
    """``layers`` (default all text layers), checked against the model's depth."""
    n = model.n_layers
    chosen = tuple(range(n)) if layers is None else tuple(int(l) for l in layers)
    bad = [l for l in chosen if not 0 <= l < n]
    if bad or not chosen:
        raise InputError(f"layers must be text layers 0..{n - 1}, got {list(layers) if layers is not None else []}")
    return chosen


def per_unit(act: Tensor, kind: str) -> Tensor:
    """``batch unit`` from ``batch unit``, or from ``batch head d_head`` for heads (summed over d_head)."""
    return act.sum(-1) if kind == "head" and act.dim() == 3 else act


def read_units(model: Any, batch: Batch, kind: str, layers: Sequence[int],
               interventions: Sequence[Intervention] = ()) -> tuple[Tensor, dict[int, Tensor]]:
    """The logits and each layer's units at the last prompt position.

    Returns:
        Logits ``batch seq vocab`` and, per layer, ``batch unit`` (``batch head d_head`` for heads).
    """
    sites = [unit_site(kind, l) for l in layers]
    logits, cache = run_with_cache(model, batch, sites=sites, positions="last", interventions=interventions)
    return logits, {l: cache[s].float() for l, s in zip(layers, sites, strict=True)}


def _last_rows(batch: Batch, values: Tensor) -> Tensor:
    """A full-prompt source tensor holding ``values`` (``batch ...``) at each sample's last position."""
    layout = batch.layout
    out = torch.zeros(layout.batch_size, layout.seq_len, *values.shape[1:], dtype=values.dtype)
    out[torch.arange(layout.batch_size), torch.as_tensor(layout.last_prompt)] = values.cpu()
    return out


def ablation(kind: str, units: Mapping[int, Sequence[int]], baseline: str, *, batch: Batch,
             means: Mapping[int, Float[Tensor, " ..."]] | None = None,
             donors: Mapping[int, Tensor] | None = None) -> list[Intervention]:
    """Interventions that ablate ``units`` (layer -> indices) at the last prompt position.

    Args:
        kind: the unit kind.
        units: indices to ablate, per layer.
        baseline: ``"zero"``, ``"mean"`` (``means[layer]``: one value per unit) or
            ``"resample"`` (``donors[layer]``: ``batch unit ...``, each sample's replacement).
        batch: the batch the interventions will run on.
    """
    if baseline not in ("zero", "mean", "resample"):
        raise InputError(f"baseline must be 'zero', 'mean' or 'resample', got {baseline!r}")
    out: list[Intervention] = []
    for layer, chosen in units.items():
        if not chosen:
            continue
        idx = tuple(sorted(int(i) for i in chosen))
        where = {"heads": idx} if kind == "head" else {"dims": idx}
        site = unit_site(kind, layer)
        if baseline == "zero":
            out.append(Ablate(site=site, positions="last", **where))
        elif baseline == "mean":
            if means is None or layer not in means:
                raise InputError(f"a mean ablation needs the units' means at layer {layer}")
            out.append(Ablate(site=site, positions="last", mode="mean", mean=means[layer], **where))
        else:
            if donors is None or layer not in donors:
                raise InputError(f"a resample ablation needs donor activations at layer {layer}")
            out.append(Patch(site=site, positions="last", source=_last_rows(batch, donors[layer]), **where))
    return out
