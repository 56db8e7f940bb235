"""Rank the units behind a behaviour by one of four methods, behind one interface.

:func:`localize` scores every unit of the chosen kind and layers on a ranking set of
questions and keeps the top ``k``. Scores are signed, on one scale per method: positive
units support the behaviour (answering correctly), negative ones work against it; units
are ranked by the absolute score (a unit that consistently pushes towards the wrong answer
is as much part of the mechanism):

* ``"probe"``: the L1 path of a logistic probe over all chosen layers' units at once
  (standardised), predicting whether the model answers correctly (``target="correct"``)
  or what it answers (``target="answer"``); a unit's score is how early it enters the
  path (:func:`~vlmlens.circuits.probe.l1_path`). Exactly ``k`` units are chosen, never 0.
* ``"dla"``: direct logit attribution onto the true answer (true minus other answer's
  unembedding), through the final norm frozen at its real scale; mean over questions.
  Neurons go through ``W_down``, heads through ``W_O`` (``stack_head_results``).
* ``"atp"``: attribution patching of the ablation: ``(baseline - a) * d margin / d a`` at
  the last prompt position, the estimated change of the truth margin, negated; mean.
* ``"exact"``: each unit ablated alone at the last prompt position (stacked sweeps);
  the drop of the truth margin, mean over questions. One forward per unit and batch.

Examples:
    >>> from vlmlens.testing import tiny_vlm
    >>> from vlmlens.data import synth_pope
    >>> model = tiny_vlm("llava")
    >>> behaviour = Behaviour.from_dataset(synth_pope("adversarial", n_images=2, seed=0))
    >>> found = localize(model, behaviour, kind="neuron", method="dla", k=5)
    >>> len(found.chosen), found.scores.shape[0] == model.n_layers
    (5, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, no_type_check

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.circuits.behaviour import AnswerIds, Behaviour
from vlmlens.circuits.probe import l1_path
from vlmlens.circuits.units import (
    KINDS,
    ablation,
    check_layers,
    per_unit,
    read_units,
    unit_site,
)
from vlmlens.errors import InputError
from vlmlens.ops.cache import run_with_cache
from vlmlens.ops.logit_attribution import (
    frozen_norm,
    logit_attrs,
    neuron_logit_attrs,
    stack_head_results,
    token_directions,
)
from vlmlens.ops.sweep import sweep
from vlmlens.sites import Point, Site, Tower

__all__ = ["METHODS", "Localization", "localize", "unit_means"]

Method = Literal["probe", "dla", "atp", "exact"]
METHODS = ("probe", "dla", "atp", "exact")


@dataclass(frozen=True, kw_only=True)
class Localization:
    """Scores of every unit and the ``k`` chosen, with what produced them.

    Attributes:
        kind: the unit kind (``neuron``, ``mlp_out``, ``resid``, ``head``).
        method: ``probe``, ``dla``, ``atp`` or ``exact``.
        layers: the text layers scored.
        scores: ``layer unit``, signed (positive: supports the behaviour), method-specific scale.
        chosen: the top ``k`` units ``(layer, index)`` by absolute score, largest first.
        n_layers: the model's text depth (for normalised depth).
        baseline: the ablation the ``atp`` / ``exact`` scores estimate or measure.
        provenance: the model, the ranking questions (source, n, images), target and settings.
        by_image: the per-question scores summed per image (``provenance["images"]`` order),
            so that statistics of the scores can be bootstrapped by image; ``None`` for the probe.
        image_counts: questions per image, in the same order.
    """

    kind: str
    method: str
    layers: tuple[int, ...]
    scores: Float[Tensor, "layer unit"]
    chosen: tuple[tuple[int, int], ...]
    n_layers: int
    baseline: str = "zero"
    provenance: dict[str, Any] = field(default_factory=dict)
    by_image: Float[Tensor, "image layer unit"] | None = field(default=None, repr=False)
    image_counts: tuple[int, ...] = ()

    def ranked(self, layer: int | None = None) -> list[tuple[int, int]]:
        """All units ``(layer, index)`` by absolute score, largest first (of one layer, or all)."""
        rows = range(len(self.layers)) if layer is None else [self._row(layer)]
        units = [(self.layers[r], int(i), float(self.scores[r, i])) for r in rows for i in range(self.scores.shape[1])]
        units = [u for u in units if not np.isnan(u[2])]
        units.sort(key=lambda u: (-abs(u[2]), u[0], u[1]))
        return [(l, i) for l, i, _ in units]

    def top(self, k: int, layer: int | None = None) -> list[tuple[int, int]]:
        """The ``k`` best units (of one layer, or of all scored layers)."""
        return self.ranked(layer)[:k]

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not scored; scored layers: {list(self.layers)}")
        return self.layers.index(layer)

    def depth(self, units: Sequence[tuple[int, int]] | None = None) -> Float[np.ndarray, " unit"]:
        """Normalised depth ``layer / (n_layers - 1)`` of ``units`` (default: the chosen ones)."""
        picked = self.chosen if units is None else units
        return np.array([l / max(1, self.n_layers - 1) for l, _ in picked])

    def to_frame(self) -> pd.DataFrame:
        """One row per unit: layer, index, score, rank, chosen."""
        ranked = {u: r for r, u in enumerate(self.ranked())}
        rows = [{"layer": l, "index": i, "score": float(self.scores[r, i]), "rank": ranked.get((l, i)),
                 "chosen": (l, i) in self.chosen}
                for r, l in enumerate(self.layers) for i in range(self.scores.shape[1])]
        return pd.DataFrame(rows)


def _signs(behaviour: Behaviour, rows: range) -> Tensor:
    return behaviour.truth_sign[list(rows)]


def unit_means(model: Any, behaviour: Behaviour, kind: str, layers: Sequence[int], *,
               batch_size: int = 8) -> dict[int, Tensor]:
    """Each unit's mean over the questions' last prompt positions (the ``mean`` baseline)."""
    sums: dict[int, Tensor] = {}
    for _, batch in behaviour.batches(model, batch_size):
        for layer, act in read_units(model, batch, kind, layers)[1].items():
            sums[layer] = sums.get(layer, 0) + act.sum(0)
    return {layer: total / len(behaviour) for layer, total in sums.items()}


def _truth_ids(answers: AnswerIds, logits: Tensor, batch: Any, signs: Tensor) -> tuple[Tensor, Tensor]:
    """Per question, the true answer's and the other answer's dominant spelling (token ids)."""
    rows = answers.last_logits(logits, batch)
    yes = torch.tensor(answers.yes)[rows[:, list(answers.yes)].argmax(-1).cpu()]
    no = torch.tensor(answers.no)[rows[:, list(answers.no)].argmax(-1).cpu()]
    true_yes = signs > 0
    return torch.where(true_yes, yes, no), torch.where(true_yes, no, yes)


class _ByImage:
    """Per-image sums of per-question unit scores: ``image layer unit``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.images = tuple(sorted(set(behaviour.groups)))
        where = {g: i for i, g in enumerate(self.images)}
        self.index = torch.tensor([where[g] for g in behaviour.groups])
        self.sums: Tensor | None = None

    def add(self, rows: range, block: Float[Tensor, "batch layer unit"], layers: slice = slice(None)) -> None:
        """Add each question's scores to its image (``layers``: the rows of the sums it fills)."""
        block = block.detach().float().cpu()
        if self.sums is None:
            self.sums = torch.zeros(len(self.images), *block.shape[1:])
        self.sums[:, layers].index_add_(0, self.index[list(rows)], block)

    def start(self, n_layers: int, width: int) -> None:
        """Allocate the sums up front (when layers are filled one at a time)."""
        self.sums = torch.zeros(len(self.images), n_layers, width)


def _dla(model: Any, behaviour: Behaviour, kind: str, layers: Sequence[int], answers: AnswerIds,
         batch_size: int, out: _ByImage) -> None:
    final_site = Site(Tower.TEXT, Point.RESID_POST, model.n_layers - 1)  # the final norm's real input
    if kind == "head":  # every head's write up to the deepest layer scored (stack_head_results reads them all)
        sites = [Site(Tower.TEXT, Point.RESULT, l) for l in range(max(layers) + 1)]
    else:
        sites = [unit_site(kind, l) for l in layers]
    for rows, batch in behaviour.batches(model, batch_size):
        logits, cache = run_with_cache(model, batch, sites=[*sites, final_site], positions="last")
        true, other = _truth_ids(answers, logits, batch, _signs(behaviour, rows))
        if kind == "head":
            heads = stack_head_results(model, cache, layer=max(layers) + 1)  # (layer head) batch d_model
            per_head = logit_attrs(model, cache, heads, true, other).view(max(layers) + 1, model.n_heads, -1)
            block = per_head[list(layers)].permute(2, 0, 1)  # batch layer head
        elif kind == "neuron":
            block = torch.stack([neuron_logit_attrs(model, cache, l, true, other) for l in layers], 1)
        else:
            final = frozen_norm(model, cache)
            direction = token_directions(model, true, other).to(final.scale.device)
            block = torch.stack([final(cache[unit_site(kind, l)]) * direction for l in layers], 1)  # batch layer d
        out.add(rows, block)


def _atp(model: Any, behaviour: Behaviour, kind: str, layers: Sequence[int], answers: AnswerIds,
         means: dict[int, Tensor] | None, batch_size: int, out: _ByImage) -> None:
    sites = [unit_site(kind, l) for l in layers]
    for rows, batch in behaviour.batches(model, batch_size):
        signs = _signs(behaviour, rows)

        def truth_margin(logits: Tensor, b: Any, signs: Tensor = signs) -> Tensor:
            return (answers.margin(logits, b) * signs.to(logits.device)).sum()

        _, cache = run_with_cache(model, batch, sites=sites, positions="last", grad=truth_margin)
        per_layer = []
        for layer, site in zip(layers, sites, strict=True):
            act, grad = cache[site].float(), cache.grads[site].float()
            base = torch.zeros_like(act) if means is None else means[layer].to(act.device).expand_as(act)
            per_layer.append(-per_unit((base - act) * grad, kind))
        out.add(rows, torch.stack(per_layer, 1))


def _exact(model: Any, behaviour: Behaviour, kind: str, layers: Sequence[int], answers: AnswerIds,
           baseline: str, means: dict[int, Tensor] | None, batch_size: int, chunk_size: int, out: _ByImage) -> None:
    first = next(behaviour.batches(model, 1))[1]
    widths = {l: per_unit(a, kind).shape[-1] for l, a in read_units(model, first, kind, layers)[1].items()}
    out.start(len(layers), max(widths.values()))
    for row, layer in enumerate(layers):
        width = widths[layer]
        for rows, batch in behaviour.batches(model, batch_size):
            conditions = [[]] + [ablation(kind, {layer: [u]}, baseline, batch=batch, means=means) for u in range(width)]
            margins = sweep(model, batch, conditions, chunk_size=chunk_size, progress=False,
                            reduce=lambda logits, b: answers.margin(logits, b))  # condition batch
            truth = margins * _signs(behaviour, rows)
            out.add(rows, (truth[0] - truth[1:]).T[:, None], slice(row, row + 1))  # batch 1 unit


@no_type_check
def localize(model: Any, behaviour: Behaviour, *, kind: str = "neuron", method: Method = "dla", k: int = 5,
             layers: Sequence[int] | None = None, target: str = "correct", baseline: str = "zero",
             batch_size: int = 8, chunk_size: int = 16, seed: int = 0) -> Localization:
    """Score every unit of ``kind`` in ``layers`` for the behaviour and choose the top ``k``.

    Args:
        model: a HookedVLM.
        behaviour: the ranking questions (keep the evaluation questions apart: ``split``).
        kind: ``"neuron"``, ``"mlp_out"``, ``"resid"`` or ``"head"``.
        method: ``"probe"``, ``"dla"``, ``"atp"`` or ``"exact"`` (module docs).
        k: how many units to choose.
        layers: text layers to score (default all).
        target: the probe's target, ``"correct"`` or ``"answer"``.
        baseline: the ablation ``atp`` and ``exact`` score: ``"zero"`` or ``"mean"``.
        batch_size: questions per forward.
        chunk_size: ablations per stacked forward (``exact``).
        seed: the probe's solver seed.

    Returns:
        A :class:`Localization`.

    Raises:
        InputError: an unknown kind, method, target or baseline; layers out of range; a
            probe target with a single class; a k larger than the units scored.
    """
    if kind not in KINDS:
        raise InputError(f"unknown unit kind {kind!r}; kinds: {', '.join(KINDS)}")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if target not in ("correct", "answer"):
        raise InputError(f"target must be 'correct' or 'answer', got {target!r}")
    if baseline not in ("zero", "mean"):
        raise InputError(f"localize scores 'zero' or 'mean' ablations, got baseline={baseline!r}")
    chosen_layers = check_layers(model, layers)
    answers = AnswerIds.of(model)
    means = unit_means(model, behaviour, kind, chosen_layers, batch_size=batch_size) if baseline == "mean" else None
    name = getattr(model.hf_model.config, "_name_or_path", "") or type(model.hf_model).__name__
    provenance: dict[str, Any] = {"model": name,
                                  "family": model.family, "behaviour": behaviour.source, "n_questions": len(behaviour),
                                  "n_images": len(set(behaviour.groups)), "images": tuple(sorted(set(behaviour.groups))),
                                  "read_at": "last prompt position"}
    by_image = _ByImage(behaviour)
    with torch.no_grad() if method != "atp" else torch.enable_grad():
        if method == "probe":
            scores, extra = _probe_scores(model, behaviour, kind, chosen_layers, answers, target, k, batch_size, seed)
            provenance |= extra
        else:
            if method == "dla":
                _dla(model, behaviour, kind, chosen_layers, answers, batch_size, by_image)
            elif method == "atp":
                _atp(model, behaviour, kind, chosen_layers, answers, means, batch_size, by_image)
            else:
                _exact(model, behaviour, kind, chosen_layers, answers, baseline, means, batch_size, chunk_size,
                       by_image)
            scores = by_image.sums.sum(0) / len(behaviour)
    width = scores.shape[1]
    if not 1 <= k <= width * len(chosen_layers):
        raise InputError(f"k must be in 1..{width * len(chosen_layers)} (units scored), got {k}")
    per_image = None if method == "probe" else by_image.sums
    counts = tuple(int((by_image.index == i).sum()) for i in range(len(by_image.images)))
    found = Localization(kind=kind, method=method, layers=chosen_layers, scores=scores.float(), chosen=(),
                         n_layers=model.n_layers, baseline=baseline, provenance=provenance)
    return Localization(kind=kind, method=method, layers=chosen_layers, scores=scores.float(),
                        chosen=tuple(found.top(k)), n_layers=model.n_layers, baseline=baseline, provenance=provenance,
                        by_image=per_image, image_counts=counts)


def _probe_scores(model: Any, behaviour: Behaviour, kind: str, layers: Sequence[int], answers: AnswerIds,
                  target: str, k: int, batch_size: int, seed: int) -> tuple[Tensor, dict[str, Any]]:
    features, ys = [], []
    for rows, batch in behaviour.batches(model, batch_size):
        logits, acts = read_units(model, batch, kind, layers)
        margin = answers.margin(logits, batch).cpu()
        truth = margin * _signs(behaviour, rows)
        ys.append((truth > 0) if target == "correct" else (margin > 0))
        features.append(torch.cat([acts[l].flatten(1) for l in layers], 1))
    x = torch.cat(features).numpy()
    y = torch.cat(ys).numpy().astype(int)
    per_layer = x.shape[1] // len(layers)
    sub = per_layer // model.n_heads if kind == "head" else 1  # a head's d_head columns are one unit
    path = l1_path(x, y, k, groups=np.arange(x.shape[1]) // sub, seed=seed)
    entry = path.entry.reshape(len(layers), -1)
    position = np.empty(len(path.order))
    position[path.order] = np.arange(len(path.order))
    never = position.reshape(len(layers), -1)  # units that never entered: after all others, in path order
    scores = np.where(np.isinf(entry), -1e6 - never, -entry)
    return torch.tensor(scores, dtype=torch.float32), {"probe_target": target, "probe_C": path.C,
                                                       "probe_selected": path.n_selected}
