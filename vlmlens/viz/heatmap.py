"""Plotly heatmaps of patching results and other ``y x`` grids.

Examples:
    >>> import torch
    >>> fig = grid_heatmap(torch.tensor([[0.0, 1.0], [-1.0, 0.5]]), x=["a", "b"], y=[0, 1], x_title="pos")
    >>> type(fig).__name__
    'Figure'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from vlmlens.errors import InputError

if TYPE_CHECKING:
    from vlmlens.ops.patching import PatchingResult

__all__ = ["grid_heatmap", "patching_heatmap"]


def grid_heatmap(
    values: Float[Tensor, "y x"],
    *,
    x: Sequence[Any] | None = None,
    y: Sequence[Any] | None = None,
    x_title: str = "",
    y_title: str = "",
    title: str | None = None,
    colorbar_title: str = "",
    zmid: float = 0.0,
    colorscale: str = "RdBu",
) -> go.Figure:
    """A diverging heatmap centred on ``zmid``; row 0 at the top.

    Args:
        values: a 2-d tensor (or array), rows along y.
        x: column labels (default indices); shown as categories.
        y: row labels (default indices).
        x_title: x-axis title.
        y_title: y-axis title.
        title: figure title.
        colorbar_title: colour-bar title.
        zmid: the value at the centre of the colour scale.
        colorscale: a plotly colour-scale name.

    Raises:
        InputError: ``values`` is not 2-d or the labels do not match its shape.
    """
    grid = torch.as_tensor(values).detach().float().cpu()
    if grid.dim() != 2:
        raise InputError(f"grid_heatmap needs 2-d values, got shape {tuple(grid.shape)}")
    xs, ys = _labels(x, grid.shape[1], "x"), _labels(y, grid.shape[0], "y")
    fig = go.Figure(go.Heatmap(z=grid.tolist(), x=xs, y=ys, zmid=zmid, colorscale=colorscale,
                               colorbar={"title": {"text": colorbar_title}}))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def patching_heatmap(result: PatchingResult, *, normalized: bool = True, title: str | None = None) -> go.Figure:
    """Plot a :class:`~vlmlens.ops.patching.PatchingResult`.

    One axis gives a single-row heatmap, two axes one heatmap (first axis down), three
    axes one panel per entry of the first axis on a shared colour scale.

    Args:
        result: the patching result.
        normalized: plot ``result.normalized()`` (0 = corrupt, 1 = clean) instead of raw values.
        title: figure title (default: the sites and the clean/corrupt metrics).

    Raises:
        InputError: ``normalized`` with equal clean and corrupt metrics.
    """
    values = result.normalized() if normalized else result.values
    label = "normalized metric" if normalized else "metric"
    if title is None:
        site = str(result.sites[0]) if len(result.sites) == 1 else f"{len(result.sites)} sites"
        title = f"patching {site}: clean {result.clean_metric:.3g}, corrupt {result.corrupt_metric:.3g}"
    zmid = 0.0 if normalized else result.corrupt_metric
    axes, labels = result.axes, result.labels
    if values.dim() == 1:
        return grid_heatmap(values[None], x=labels[0], y=[label], x_title=axes[0], title=title,
                       colorbar_title=label, zmid=zmid)
    if values.dim() == 2:
        return grid_heatmap(values, x=labels[1], y=labels[0], x_title=axes[1], y_title=axes[0], title=title,
                       colorbar_title=label, zmid=zmid)
    if values.dim() != 3:
        raise InputError(f"patching_heatmap plots 1- to 3-d results, got {values.dim()} axes {axes}")
    panels = values.shape[0]
    fig = make_subplots(rows=1, cols=panels, subplot_titles=[f"{axes[0]} {v}" for v in labels[0]],
                        shared_yaxes=True)
    for i in range(panels):
        fig.add_trace(go.Heatmap(z=values[i].float().tolist(), x=_labels(labels[2], values.shape[2], "x"),
                                 y=_labels(labels[1], values.shape[1], "y"), coloraxis="coloraxis"), 1, i + 1)
    fig.update_layout(title=title, coloraxis={"colorscale": "RdBu", "cmid": zmid,
                                              "colorbar": {"title": {"text": label}}})
    fig.update_xaxes(type="category", title_text=axes[2])
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_yaxes(title_text=axes[1], row=1, col=1)
    return fig


def _labels(labels: Sequence[Any] | None, n: int, axis: str) -> list[str]:
    if labels is None:
        return [str(i) for i in range(n)]
    out = [str(v) for v in labels]
    if len(out) != n:
        raise InputError(f"{len(out)} {axis} labels for {n} {axis} entries")
    return out
