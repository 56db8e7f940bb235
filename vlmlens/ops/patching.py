"""Activation patching: how much of a clean run's behaviour each site restores in a corrupt run.

Each function caches the clean run, then patches one piece of it (a residual position,
a head, a neuron, an image patch) into the corrupt run and measures ``metric``; the
many single-piece conditions run stacked along the batch axis with
:func:`vlmlens.ops.sweep`, ``chunk_size`` at a time, and each chunk's logits are reduced
to metric values at once, so memory stays bounded. Clean and corrupt batches must share
one token layout (same length, same image-token positions), e.g. the same questions
over two images of the same size, or two questions of equal token count.

Examples:
    >>> from vlmlens.testing import tiny_vlm, tiny_images
    >>> model = tiny_vlm("llava")
    >>> q = ["Is there a cat in the image?"]
    >>> clean, corrupt = model.prepare(tiny_images(1, seed=1), q), model.prepare(tiny_images(1, seed=2), q)
    >>> metric = logit_diff(model.tokenizer.convert_tokens_to_ids("yes"), model.tokenizer.convert_tokens_to_ids("no"))
    >>> result = patch_residual(model, clean, corrupt, metric, positions="last")
    >>> result.axes, tuple(result.values.shape)
    (('layer', 'position'), (2, 1))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch
from vlmlens.layout import TokenLayout
from vlmlens.ops.cache import run_with_cache
from vlmlens.ops.interventions import Patch
from vlmlens.ops.positions import Positions
from vlmlens.ops.sweep import sweep
from vlmlens.sites import BLOCK_POINTS, Point, Site, as_point

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = [
    "Metric",
    "PatchingResult",
    "logit_diff",
    "patch_heads",
    "patch_image_patches",
    "patch_neurons",
    "patch_residual",
]

Metric = Callable[[Float[Tensor, "batch seq vocab"], Batch], Tensor]
"""``metric(logits, batch) -> scalar tensor``: what patching measures (see :func:`logit_diff`)."""

_HEAD_POINTS = tuple(p for p in BLOCK_POINTS if p.head_axis is not None)


@dataclass(frozen=True, kw_only=True, eq=False)
class PatchingResult:
    """Metric values of a patching experiment, one per patched piece.

    Attributes:
        values: the metric after each patch, one axis per entry of ``axes``.
        axes: axis names, e.g. ``("layer", "position")`` or ``("layer", "head")``.
        labels: per axis, one label per index (ints for layers, heads, neurons, rows and
            columns; ``"position:token"`` strings for sequence positions).
        sites: the patched sites.
        clean_metric: the metric of the clean run.
        corrupt_metric: the metric of the unpatched corrupt run.
    """

    values: Tensor
    axes: tuple[str, ...]
    labels: tuple[tuple[int | str, ...], ...]
    sites: tuple[Site, ...]
    clean_metric: float
    corrupt_metric: float

    def __post_init__(self) -> None:
        if self.values.dim() != len(self.axes) or len(self.labels) != len(self.axes):
            raise InputError(f"PatchingResult has {self.values.dim()}-d values, {len(self.axes)} axes and "
                             f"{len(self.labels)} label tuples; give one axis name and one label tuple per dimension")
        for axis, labels, size in zip(self.axes, self.labels, self.values.shape):
            if len(labels) != size:
                raise InputError(f"PatchingResult axis {axis!r} has {size} entries but {len(labels)} labels")

    def normalized(self) -> Tensor:
        """``(values - corrupt) / (clean - corrupt)``: 0 = no effect, 1 = clean behaviour restored.

        Raises:
            InputError: the clean and corrupt metrics are equal, so the ratio is undefined.
        """
        span = self.clean_metric - self.corrupt_metric
        if abs(span) <= 1e-12 * max(1.0, abs(self.clean_metric)):
            raise InputError(
                f"clean and corrupt metrics are equal ({self.clean_metric:.6g}), so normalized() would divide by "
                "zero: the corruption does not move the metric; choose a corruption that changes the answer"
            )
        return (self.values - self.corrupt_metric) / span

    def to_frame(self) -> pd.DataFrame:
        """One row per patched piece: a column per axis, ``value`` and ``normalized`` (NaN if undefined)."""
        import pandas as pd

        try:
            norm = self.normalized().flatten().tolist()
        except InputError:
            norm = [float("nan")] * self.values.numel()
        index = pd.MultiIndex.from_product(self.labels, names=self.axes)
        frame = index.to_frame(index=False)
        frame["value"] = self.values.flatten().tolist()
        frame["normalized"] = norm
        return frame

    def heatmap(self, *, normalized: bool = True, title: str | None = None) -> go.Figure:
        """A plotly heatmap of the values (see :func:`vlmlens.viz.heatmap.patching_heatmap`)."""
        from vlmlens.viz.heatmap import patching_heatmap

        return patching_heatmap(self, normalized=normalized, title=title)


def logit_diff(yes_ids: int | Sequence[int], no_ids: int | Sequence[int]) -> Metric:
    """A metric: yes-minus-no logit difference at the last prompt position, mean over samples.

    With several ids per side (e.g. ``"yes"`` and ``"Yes"``) each side is the logsumexp
    of its logits (the log of its total probability, up to the shared normaliser).

    Args:
        yes_ids: token id(s) of the positive answer.
        no_ids: token id(s) of the negative answer.

    Returns:
        ``metric(logits, batch) -> 0-d tensor``.

    Examples:
        >>> from vlmlens.testing import tiny_vlm, tiny_images
        >>> model = tiny_vlm("paligemma")
        >>> batch = model.prepare(tiny_images(2), ["Is there a cat?", "Is there a dog?"])
        >>> metric = logit_diff(3, [4, 5])
        >>> metric(model.forward(batch), batch).shape
        torch.Size([])
    """
    yes, no = _id_list(yes_ids, "yes_ids"), _id_list(no_ids, "no_ids")

    def metric(logits: Float[Tensor, "batch seq vocab"], batch: Batch) -> Tensor:
        last = torch.tensor(batch.layout.last_prompt, device=logits.device)
        if logits.shape[0] != len(last):
            raise InputError(f"logit_diff got logits for {logits.shape[0]} samples, the batch has {len(last)}")
        rows = logits[torch.arange(len(last), device=logits.device), last].float()
        return (rows[:, yes].logsumexp(-1) - rows[:, no].logsumexp(-1)).mean()

    return metric


def patch_residual(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | str | None = None,
    chunk_size: int = 8,
) -> PatchingResult:
    """Patch the clean ``resid_pre`` of each layer at each position into the corrupt run.

    Args:
        model: a HookedVLM.
        clean: the clean batch (``model.prepare``).
        corrupt: the corrupt batch, with the same token layout as ``clean``.
        metric: ``metric(logits, batch) -> scalar`` (e.g. :func:`logit_diff`).
        layers: text layers (default all).
        positions: a kind of ``batch.layout.mask`` (``"image"``, ``"last"``, ``"question"``):
            the k-th position of that role in each sample, whatever its padding; integer
            positions (absolute, the same in every sample); default: every prompt position,
            aligned on each sample's last prompt token. Labels name sample 0's tokens.
        chunk_size: conditions per stacked forward.

    Returns:
        Values ``layer position``; labels are layer indices and ``"position:token"``.

    Raises:
        InputError: the batches differ in layout, or a position is out of range.
    """
    layout = _check_layouts(clean, corrupt)
    sites = [model.text.resid_pre[layer] for layer in _layers(model, layers)]
    chosen = _positions(layout, positions)
    clean_logits, cache = run_with_cache(model, clean, sites=sites, positions="all", device=None)
    conditions = [[Patch(site=site, source=cache[site], positions=mask)] for site in sites for mask in chosen]
    values = _measure(model, corrupt, conditions, metric, chunk_size).view(len(sites), len(chosen))
    sample0 = [int(torch.nonzero(mask[0])[0]) for mask in chosen]
    return PatchingResult(
        values=values, axes=("layer", "position"),
        labels=(tuple(s.layer for s in sites), _position_labels(model, clean, sample0)),
        sites=tuple(sites), **_endpoints(model, clean, corrupt, clean_logits, metric),
    )


def patch_heads(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    point: str | Point = "z",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    chunk_size: int = 8,
) -> PatchingResult:
    """Patch each head's clean activation (all positions by default) into the corrupt run.

    Args:
        model: a HookedVLM.
        clean: the clean batch.
        corrupt: the corrupt batch, same layout.
        metric: ``metric(logits, batch) -> scalar``.
        point: ``"z"`` (default), ``"q"``, ``"k"``, ``"v"``, ``"pattern"`` or ``"result"``;
            k and v have ``n_kv_heads`` heads.
        layers: text layers (default all).
        positions: restrict each patch to these positions (query positions for
            ``pattern``), as in :class:`~vlmlens.ops.Patch`; default all.
        chunk_size: conditions per stacked forward.

    Returns:
        Values ``layer head``.
    """
    _check_layouts(clean, corrupt)
    p = as_point(point)
    if p not in _HEAD_POINTS:
        raise InputError(f"patch_heads patches a per-head point ({', '.join(q.short for q in _HEAD_POINTS)}), "
                         f"got {p.short!r}")
    sites = [getattr(model.text, p.short)[layer] for layer in _layers(model, layers)]
    clean_logits, cache = run_with_cache(model, clean, sites=sites, positions="all", device=None)
    n_heads = cache[sites[0]].shape[1 if p.pattern_shaped else 2]
    conditions = [[Patch(site=site, source=cache[site], heads=(h,), positions=positions)]
                  for site in sites for h in range(n_heads)]
    values = _measure(model, corrupt, conditions, metric, chunk_size).view(len(sites), n_heads)
    return PatchingResult(
        values=values, axes=("layer", "head"), labels=(tuple(s.layer for s in sites), tuple(range(n_heads))),
        sites=tuple(sites), **_endpoints(model, clean, corrupt, clean_logits, metric),
    )


def patch_neurons(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    layer: int,
    neurons: Sequence[int] | None = None,
    positions: Positions = "last",
    chunk_size: int = 8,
) -> PatchingResult:
    """Patch single clean MLP neurons (``mlp.hook_post`` of one layer) into the corrupt run.

    Args:
        model: a HookedVLM.
        clean: the clean batch.
        corrupt: the corrupt batch, same layout.
        metric: ``metric(logits, batch) -> scalar``.
        layer: the text layer.
        neurons: neuron indices (default all ``d_mlp``).
        positions: where to patch (default the last prompt position).
        chunk_size: conditions per stacked forward.

    Returns:
        Values ``neuron``.
    """
    _check_layouts(clean, corrupt)
    site = model.text.mlp_post[layer]
    clean_logits, cache = run_with_cache(model, clean, sites=[site], positions="all", device=None)
    width = cache[site].shape[-1]
    chosen = list(range(width)) if neurons is None else [int(n) for n in neurons]
    bad = [n for n in chosen if not 0 <= n < width]
    if bad:
        raise InputError(f"neuron {bad[0]} is out of range for {site} with {width} neurons (valid 0..{width - 1})")
    conditions = [[Patch(site=site, source=cache[site], dims=(n,), positions=positions)] for n in chosen]
    values = _measure(model, corrupt, conditions, metric, chunk_size)
    return PatchingResult(
        values=values, axes=("neuron",), labels=(tuple(chosen),), sites=(site,),
        **_endpoints(model, clean, corrupt, clean_logits, metric),
    )


def patch_image_patches(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    image: int = 0,
    chunk_size: int = 8,
) -> PatchingResult:
    """Patch the clean token of each image patch (row, col) into the corrupt run.

    Args:
        model: a HookedVLM.
        clean: the clean batch.
        corrupt: the corrupt batch, same layout (so the same patch grid).
        metric: ``metric(logits, batch) -> scalar``.
        layers: ``None`` patches ``text.hook_embed`` (the projected image embedding the
            language model receives) and gives a ``row col`` map; a list of text layers
            patches their ``resid_pre`` and gives ``layer row col``.
        image: which image of each sample.
        chunk_size: conditions per stacked forward.

    Returns:
        Values ``row col`` (or ``layer row col``).

    Raises:
        InputError: the batches differ in layout, or samples have different patch grids.
    """
    layout = _check_layouts(clean, corrupt)
    rows, cols = _single_grid(layout, image)
    sites = _image_patch_sites(model, layers)
    clean_logits, cache = run_with_cache(model, clean, sites=sites, positions="all", device=None)
    conditions = []
    for site in sites:
        for r in range(rows):
            for c in range(cols):
                mask = torch.zeros(layout.batch_size, layout.seq_len, dtype=torch.bool)
                for b in range(layout.batch_size):
                    mask[b, layout.patch_position(b, r, c, image)] = True
                conditions.append([Patch(site=site, source=cache[site], positions=mask)])
    values = _measure(model, corrupt, conditions, metric, chunk_size)
    if layers is None:
        values, axes = values.view(rows, cols), ("row", "col")
        labels: tuple[tuple[int | str, ...], ...] = (tuple(range(rows)), tuple(range(cols)))
    else:
        values, axes = values.view(len(sites), rows, cols), ("layer", "row", "col")
        labels = (tuple(s.layer for s in sites), tuple(range(rows)), tuple(range(cols)))
    return PatchingResult(
        values=values, axes=axes, labels=labels, sites=tuple(sites),
        **_endpoints(model, clean, corrupt, clean_logits, metric),
    )


# ---------------------------------------------------------------- helpers
def _id_list(ids: int | Sequence[int], name: str) -> list[int]:
    out = [ids] if isinstance(ids, int) else list(ids)
    if not out or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in out):
        raise InputError(f"{name} must be a token id or a non-empty list of token ids, got {ids!r}; "
                         "get ids with model.tokenizer.convert_tokens_to_ids(...)")
    return out


def _endpoints(model: Any, clean: Batch, corrupt: Batch, clean_logits: torch.Tensor,
               metric: Metric) -> dict[str, float]:
    """The metric on the clean run (logits already computed) and on the unpatched corrupt run."""
    return {"clean_metric": _scalar(metric(clean_logits, clean)),
            "corrupt_metric": _scalar(metric(model.forward(corrupt), corrupt))}


def _scalar_tensor(value: Any) -> Tensor:
    """The metric's value as a 0-d tensor (left on its device)."""
    tensor = torch.as_tensor(value)
    if tensor.numel() != 1:
        raise InputError(f"the patching metric must return a scalar, got shape {tuple(tensor.shape)}; "
                         "reduce over the batch (e.g. .mean())")
    return tensor.detach().reshape(()).float()


def _scalar(value: Any) -> float:
    return float(_scalar_tensor(value))


def _measure(model: Any, corrupt: Batch, conditions: list[list[Patch]], metric: Metric, chunk_size: int) -> Tensor:
    """Metric of each condition, running ``chunk_size`` conditions per stacked forward."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return sweep(model, corrupt, conditions, chunk_size=chunk_size,
                 reduce=lambda logits, batch: _scalar_tensor(metric(logits, batch)))


def _check_layouts(clean: Batch, corrupt: Batch) -> TokenLayout:
    """Return the shared layout, or say how the two batches differ."""
    for name, batch in (("clean", clean), ("corrupt", corrupt)):
        if not isinstance(batch, Batch):
            raise InputError(f"the {name} input must be a Batch from model.prepare(), got {type(batch).__name__}")
    a, b = clean.layout, corrupt.layout
    checks = (
        ("sample count", a.batch_size, b.batch_size),
        ("sequence length", a.seq_len, b.seq_len),
        ("image-token spans", _spans(a), _spans(b)),
        ("last prompt positions", a.last_prompt, b.last_prompt),
        ("padding", a.padding.tolist(), b.padding.tolist()),
    )
    for what, x, y in checks:
        if x != y:
            raise InputError(
                f"clean and corrupt batches must share one token layout to patch position by position; their "
                f"{what} differ: {_short(x)} vs {_short(y)}. Use images of the same size and prompts of the same "
                "token count (e.g. the same questions over two images)"
            )
    return a


def _spans(layout: TokenLayout) -> list[list[tuple[int, int, tuple[int, int]]]]:
    return [[(s.start, s.stop, s.grid) for s in sample] for sample in layout.images]


def _single_grid(layout: TokenLayout, image: int) -> tuple[int, int]:
    """The patch grid shared by one image of every sample, or say that they differ."""
    grids = {layout.grid(b, image) for b in range(layout.batch_size)}
    if len(grids) != 1:
        raise InputError(f"image {image} has different patch grids across samples ({sorted(grids)}); "
                         "use a batch of images of one size")
    return grids.pop()


def _image_patch_sites(model: Any, layers: Sequence[int] | None) -> list[Site]:
    """``text.hook_embed`` (``layers=None``), else ``resid_pre`` of each layer."""
    return [model.text.embed] if layers is None else [model.text.resid_pre[layer] for layer in _layers(model, layers)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(model.n_layers))
    chosen = [model.text.resid_pre[layer].layer for layer in layers]  # validates and normalises negatives
    if not chosen:
        raise InputError("layers is empty; pass None for all layers")
    return chosen


def _positions(layout: TokenLayout, positions: Sequence[int] | str | None) -> list[torch.Tensor]:
    """One ``batch seq`` mask per patched position, aligned by role across samples.

    A named kind (``"image"``, ``"question"``, ``"last"``, ``"prefix"``) gives its k-th
    position in every sample (each sample patches its own token of that role, whatever
    its padding); ``None`` gives every prompt position counted back from each sample's
    last prompt token (as far as the shortest sample reaches); integers are absolute
    positions, the same in every sample.
    """
    seq, n = layout.seq_len, layout.batch_size
    if positions is None:
        length = min(int((~layout.padding[b]).sum()) for b in range(n))
        index = [[layout.last_prompt[b] - (length - 1 - j) for b in range(n)] for j in range(length)]
    elif isinstance(positions, str):
        kind = layout.mask(positions)
        per_sample = [torch.nonzero(kind[b]).flatten().tolist() for b in range(n)]
        if len({len(p) for p in per_sample}) != 1:
            raise InputError(f"positions={positions!r} selects {[len(p) for p in per_sample]} positions in the "
                             "samples; patching aligns the k-th position of each sample, so every sample needs the "
                             "same count (use batches whose questions/images match in length, or integer positions)")
        index = [list(column) for column in zip(*per_sample)]
    else:
        chosen = [int(p) for p in positions]
        bad = [p for p in chosen if not -seq <= p < seq]
        if bad:
            raise InputError(f"position {bad[0]} is out of range for sequence length {seq}")
        index = [[p % seq] * n for p in chosen]
    if not index:
        raise InputError(f"positions={positions!r} selects no position")
    masks = []
    for column in index:
        mask = torch.zeros(n, seq, dtype=torch.bool)
        mask[torch.arange(n), torch.tensor(column)] = True
        masks.append(mask)
    return masks


def _position_labels(model: Any, batch: Batch, positions: list[int]) -> tuple[str, ...]:
    """``"position:token"`` for sample 0; image tokens are named by patch, ``img(row,col)``."""
    layout = batch.layout
    names: dict[int, str] = {}
    spans = layout.images[0]
    for i, span in enumerate(spans):
        rows, cols = span.grid
        tag = "img" if len(spans) == 1 else f"img{i}"
        for r in range(rows):
            for c in range(cols):
                names[span.position(r, c)] = f"{tag}({r},{c})"
    ids = batch.input_ids[0].tolist()
    tokens = model.tokenizer.convert_ids_to_tokens([ids[p] for p in positions])
    return tuple(f"{p}:{names.get(p, tok)}" for p, tok in zip(positions, tokens))
