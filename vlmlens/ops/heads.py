"""Head detectors and attention knockout: which heads look at the image, which heads sink,
and which layers carry information from one token group to another.

* :func:`visual_heads`: per head, the attention mass text queries put on image tokens
  (the "visual heads" of VLM papers), averaged over the chosen queries and samples.
* :func:`attention_sinks`: per head, the key position that takes the most attention on
  average and how much (attention sinks: often the first token).
* :func:`knockout_flow`: the change in a metric when attention from a query group to a
  key group is knocked out (scores masked to -inf) in a window of layers, per layer or per
  (layer, head): where does the image reach the answer, the question reach the image, etc.

Examples:
    >>> scores = visual_heads(model, batch, queries="question")
    >>> (layer, head), mass = scores.top(3)[0]  # the head that attends most to the image
    >>> flow = knockout_flow(model, batch, metric, queries="last", keys="image", window=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.ops.positions import Positions, resolve_positions
from vlmlens.sites import Point, Site, Tower

__all__ = ["HeadScores", "attention_sinks", "knockout_flow", "visual_heads"]


@dataclass(frozen=True)
class HeadScores:
    """A score per (layer, head), or per layer.

    Attributes:
        values: ``layer head`` (or ``layer``).
        layers: the layers of the rows.
        what: what the score measures.
        keys: for attention sinks, the ``"position:token"`` of each head's sink (sample 0).
    """

    values: Float[Tensor, " layer *head"]
    layers: tuple[int, ...]
    what: str
    keys: tuple[tuple[str, ...], ...] | None = None

    def top(self, k: int = 5) -> list[tuple[tuple[int, int] | int, float]]:
        """The ``k`` highest scores with their ``(layer, head)`` (or layer), highest first."""
        flat = self.values.flatten()
        order = flat.argsort(descending=True)[:k].tolist()
        if self.values.dim() == 1:
            return [(self.layers[i], float(flat[i])) for i in order]
        heads = self.values.shape[1]
        return [((self.layers[i // heads], i % heads), float(flat[i])) for i in order]


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    chosen = list(range(model.n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in chosen if not 0 <= l < model.n_layers]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range for a model with {model.n_layers} text layers")
    return chosen


def _queries(batch: Any, queries: Positions) -> Tensor:
    """A ``batch seq`` mask of non-padding query positions."""
    layout = batch.layout
    mask = resolve_positions(queries, layout, layout.seq_len)
    real = ~layout.padding
    mask = real if mask is None else mask & real
    if not bool(mask.any()):
        raise InputError(f"queries={queries!r} selects no position of this batch")
    return mask


def _patterns(model: Any, batch: Any, layers: list[int]) -> dict[int, Tensor]:
    sites = [Site(Tower.TEXT, Point.PATTERN, l) for l in layers]
    _, cache = model.run_with_cache(batch, sites=sites)
    return {site.layer: cache[site].float() for site in sites}  # batch head q k


def _mean_over_queries(per_query: Tensor, mask: Tensor) -> Tensor:
    """``batch head q ...`` averaged over the masked queries of every sample: ``head ...``."""
    weights = mask.to(per_query.dtype)
    shape = (*weights.shape[:1], 1, weights.shape[1], *([1] * (per_query.dim() - 3)))
    return (per_query * weights.view(shape)).sum((0, 2)) / weights.sum()


@no_type_check
def visual_heads(model: Any, batch: Any, *, queries: Positions = "question", image_keys: Positions = "image",
                 layers: Sequence[int] | None = None) -> HeadScores:
    """Attention mass from text queries onto image tokens, per (layer, head).

    Args:
        queries: which query positions (default the question's tokens; ``"last"``: the
            answer-predicting position).
        image_keys: which keys count as the image (default every image token; an
            ``ImagePatches`` for one region).
    """
    chosen = _layers(model, layers)
    mask = _queries(batch, queries)
    keys = resolve_positions(image_keys, batch.layout, batch.layout.seq_len)
    if keys is None or not bool(keys.any()):
        raise InputError(f"image_keys={image_keys!r} selects no key position of this batch")
    rows = []
    for pattern in _patterns(model, batch, chosen).values():
        mass = (pattern * keys[:, None, None, :].to(pattern)).sum(-1)  # batch head q
        rows.append(_mean_over_queries(mass, mask))
    return HeadScores(torch.stack(rows), tuple(chosen), f"attention mass on {image_keys} from {queries}")


@no_type_check
def attention_sinks(model: Any, batch: Any, *, queries: Positions = None,
                    layers: Sequence[int] | None = None) -> HeadScores:
    """Per head, the mean attention mass on its most-attended key position.

    Scores are the mass (0..1) averaged over the queries (default every real position)
    and samples; ``keys`` names each head's sink position. Samples are aligned by
    absolute position, so use a batch of equal-length prompts (or one sample).
    """
    from vlmlens.ops.patching import _position_labels

    chosen = _layers(model, layers)
    mask = _queries(batch, queries)
    values, names = [], []
    for pattern in _patterns(model, batch, chosen).values():
        per_key = _mean_over_queries(pattern, mask)  # head k
        mass, where = per_key.max(-1)
        values.append(mass)
        names.append(_position_labels(model, batch, where.tolist()))
    return HeadScores(torch.stack(values), tuple(chosen), "attention mass on the sink key", tuple(names))


@no_type_check
def knockout_flow(model: Any, batch: Any, metric: Any, *, queries: Positions = "last", keys: Positions = "image",
                  layers: Sequence[int] | None = None, window: int = 1, per_head: bool = False,
                  chunk_size: int = 8) -> HeadScores:
    """Metric change when ``queries`` may not attend to ``keys`` in a window of layers.

    For each layer ``l`` (or each head of it with ``per_head``), attention from the query
    group to the key group is knocked out in layers ``l .. l + window - 1`` (the same heads
    in each), and the value is ``metric(knocked out) - metric(clean)``. Conditions run
    stacked (:func:`~vlmlens.ops.sweep`), each equal to its own forward.

    Args:
        metric: ``metric(logits, batch) -> scalar`` (e.g. ``logit_diff(yes, no)``).
        queries: the query token group (``"last"``, ``"question"``, ``"image"``, indices, masks,
            ``ImagePatches``).
        keys: the key token group, in the same forms.
    """
    from vlmlens.ops.interventions import BlockAttention
    from vlmlens.ops.sweep import sweep

    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(f"window must be a positive number of layers, got {window!r}")
    chosen = _layers(model, layers)
    heads = range(model.n_heads) if per_head else [None]
    conditions = [[]]
    for layer in chosen:
        span = tuple(range(layer, min(layer + window, model.n_layers)))
        for head in heads:
            conditions.append([BlockAttention(layers=span, keys=keys, queries=queries,
                                              heads=None if head is None else (head,))])
    values = sweep(model, batch, conditions, chunk_size=chunk_size, reduce=metric).float()
    change = (values[1:] - values[0]).view(len(chosen), -1)
    what = f"metric change, {queries} -/-> {keys} knocked out in {window} layer(s) from each"
    return HeadScores(change if per_head else change[:, 0], tuple(chosen), what)
