"""Static (matplotlib) drawings over the picture: patch values and the token layout.

Each function draws on a matplotlib ``Axes`` (a new figure when ``ax`` is ``None``) and
returns it, so figures compose with ``plt.subplots``. The patch grid is stretched over the
whole picture, which is what the model sees when the processor resizes without cropping
(the toy zoo, PaliGemma, Qwen2-VL); LLaVA-1.5's processor centre-crops non-square images,
so pass the crop for those.

Examples:
    >>> from vlmlens.testing import tiny_images
    >>> import torch
    >>> ax = patch_overlay(tiny_images(1)[0], torch.rand(2, 2), title="random")
    >>> ax.get_title()
    'random'
"""

from __future__ import annotations

from typing import Any, no_type_check

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image

from vlmlens.errors import InputError
from vlmlens.layout import TokenLayout

__all__ = ["layout_overlay", "patch_overlay"]


def _axes(ax: Any) -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError("vlmlens.viz.overlay draws with matplotlib: pip install matplotlib") from err
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    return ax


def _picture(image: Any) -> np.ndarray:
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image to draw over, got {type(image).__name__}")
    return np.asarray(image.convert("RGB"))


@no_type_check
def patch_overlay(image: Image.Image, values: Float[torch.Tensor, "row col"] | np.ndarray, *, ax: Any = None,
                  alpha: float = 0.55, cmap: str = "magma", title: str | None = None, colorbar: bool = True,
                  symmetric: bool = False) -> Any:
    """Draw ``values`` (one per patch, ``rows x cols``) as a translucent heatmap over ``image``.

    Args:
        image: the picture (PIL).
        values: one value per patch, laid out as the patch grid (e.g. ``LogitLens.patch_grid``,
            a ``PatchingResult`` with axes ``row col``, or attention reshaped to the grid).
        ax: a matplotlib Axes to draw on; ``None`` makes a new figure.
        alpha: the heatmap's opacity.
        cmap: a matplotlib colour map (``"RdBu_r"`` with ``symmetric=True`` for signed values).
        title: the axes' title.
        colorbar: add a colour bar.
        symmetric: centre the colour scale on 0.

    Returns:
        The Axes.
    """
    grid = np.asarray(values.detach().float().cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
    if grid.ndim != 2:
        raise InputError(f"patch_overlay needs values laid out as the patch grid (rows, cols), got shape {grid.shape}")
    ax = _axes(ax)
    picture = _picture(image)
    height, width = picture.shape[:2]
    ax.imshow(picture, extent=(0, width, height, 0))
    limit = float(np.nanmax(np.abs(grid))) if symmetric and grid.size else None
    shown = ax.imshow(grid, extent=(0, width, height, 0), alpha=alpha, cmap=cmap, interpolation="nearest",
                      vmin=-limit if limit else None, vmax=limit if limit else None)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax


@no_type_check
def layout_overlay(image: Image.Image, layout: TokenLayout, *, sample: int = 0, image_index: int = 0,
                   ax: Any = None, title: str | None = None) -> Any:
    """Draw the patch grid over ``image`` with each patch's token position written in its cell.

    Args:
        image: the picture of ``layout.images[sample][image_index]``.
        layout: ``batch.layout`` from ``model.prepare``.
        sample: which sample of the batch.
        image_index: which of the sample's images.
        ax: a matplotlib Axes; ``None`` makes a new figure.
        title: the axes' title (default: the token span).

    Returns:
        The Axes.
    """
    spans = layout.images[sample] if 0 <= sample < layout.batch_size else None
    if spans is None or not 0 <= image_index < len(spans):
        raise InputError(f"no image {image_index} in sample {sample}: the batch has {layout.batch_size} samples "
                         f"with {[len(s) for s in layout.images]} images")
    span = spans[image_index]
    rows, cols = span.grid
    ax = _axes(ax)
    picture = _picture(image)
    height, width = picture.shape[:2]
    ax.imshow(picture, extent=(0, width, height, 0))
    for r in range(rows + 1):
        ax.axhline(r * height / rows, color="white", lw=0.8)
    for c in range(cols + 1):
        ax.axvline(c * width / cols, color="white", lw=0.8)
    size = max(5.0, 40.0 / max(rows, cols))
    for r in range(rows):
        for c in range(cols):
            ax.text((c + 0.5) * width / cols, (r + 0.5) * height / rows, str(layout.patch_position(sample, r, c, image_index)),
                    ha="center", va="center", color="yellow", fontsize=size)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"tokens {span.start}..{span.stop - 1} ({rows}x{cols} patches)",
                 fontsize=9)
    return ax
