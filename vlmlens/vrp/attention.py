"""Attention-map measurements of the VLM Reliability Probe: M, H_s, C_k, dH_s.

All functions are pure: they take attention already captured by the model-running code
(numpy arrays or torch tensors) and return numbers or numpy arrays.

Tie rule for C_k: a patch is kept when its value is ``>=`` the percentile threshold, so
ties at the threshold are all kept. On a map where fewer than 10% of patches carry mass
(e.g. a one-hot map) the 90th percentile equals the background value and every patch is
kept; the whole grid then forms one cluster and C_k = 1.

Small-grid rule for C_k: at least ``min_samples`` patches are kept (the top ones, ties
kept), so that one cluster is possible at all. It only matters for grids of fewer than
``min_samples / (1 - percentile / 100)`` patches (30 at the defaults), e.g. a 4x4 grid,
whose top 10% is 2 patches and whose C_k would otherwise be 0 for every map.

Layer rule for M (:func:`attention_layers`): ``"family"`` takes the paper's range per
family (LLaVA the second half of the layers, PaliGemma and Qwen2-VL all layers).
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
from jaxtyping import Float, Shaped
from sklearn.cluster import DBSCAN

from vlmlens.errors import DataError
from vlmlens.vrp.stats import ArrayOrTensor, as_binary, as_finite, to_numpy

ENTROPY_EPS = 1e-9
"""Added inside the log of H_s, as in the paper's definition."""


def _as_map(m: ArrayOrTensor, *, name: str = "M", ndim: int = 2) -> np.ndarray:
    """Validate a non-negative map and L1-normalise it over its last two axes."""
    arr = as_finite(m, name=name, ndim=ndim)
    if (arr < 0).any():
        raise DataError(
            f"{name} has negative values (min {arr.min()}); attention maps must be >= 0 — "
            "pass post-softmax attention weights, not scores."
        )
    totals = arr.sum(axis=(-2, -1), keepdims=True)
    if (totals == 0).any():
        raise DataError(
            f"{name} has an all-zero map (shape {arr.shape}); it cannot be normalised — "
            "check that the image-token columns were selected."
        )
    return arr / totals


def spatial_entropy(m: Float[ArrayOrTensor, "rows cols"], *, normalized: bool = False) -> float:
    """Spatial entropy H_s = -sum M log(M + 1e-9) of an attention map, in nats.

    The map is L1-normalised first, so raw (unnormalised) attention may be passed.

    Args:
        m: Non-negative map over the patch grid, shape ``(rows, cols)``.
        normalized: Divide by log(N), N = rows * cols, so that 1 is uniform attention
            and grids of different sizes compare.

    Returns:
        H_s (0 for a one-hot map, log N for a uniform map).

    Raises:
        DataError: if the map is not 2-D, has negative / non-finite values or is all
            zero, or ``normalized`` is asked for a single-patch map.

    Examples:
        >>> round(spatial_entropy(np.ones((4, 4)), normalized=True), 6)
        1.0
    """
    p = _as_map(m)
    h = float(-(p * np.log(p + ENTROPY_EPS)).sum())
    if not normalized:
        return h
    if p.size < 2:
        raise DataError(f"normalized H_s needs N >= 2 patches, got shape {p.shape}.")
    return h / float(np.log(p.size))


def cluster_count(
    m: Float[ArrayOrTensor, "rows cols"],
    *,
    percentile: float = 90.0,
    eps: float = 1.5,
    min_samples: int = 3,
) -> int:
    """Cluster count C_k: DBSCAN clusters among the patches at or above a percentile.

    Patches with ``M >= np.percentile(M, percentile)`` (numpy's default linear
    interpolation; ties at the threshold are kept, see the module docstring), and at least
    the top ``min_samples`` patches (the small-grid rule), are clustered by DBSCAN on their
    (row, col) grid coordinates; noise points are not a cluster.

    Args:
        m: Non-negative map over the patch grid, shape ``(rows, cols)``.
        percentile: Threshold percentile in [0, 100].
        eps: DBSCAN neighbourhood radius in patches (1.5 joins diagonal neighbours).
        min_samples: DBSCAN core-point size; fewer kept points than this gives 0.

    Returns:
        The number of clusters.

    Raises:
        DataError: on an invalid map or parameter.

    Examples:
        >>> m = np.zeros((10, 10)); m[0:3, 0:3] = 1; m[6:9, 6:9] = 1
        >>> cluster_count(m)
        2
    """
    if not 0.0 <= percentile <= 100.0:
        raise DataError(f"percentile must be in [0, 100], got {percentile}.")
    if eps <= 0:
        raise DataError(f"eps must be > 0, got {eps}.")
    if min_samples < 1:
        raise DataError(f"min_samples must be >= 1, got {min_samples}.")
    p = _as_map(m)
    threshold = min(np.percentile(p, percentile), np.sort(p, axis=None)[-min(min_samples, p.size)])
    coords = np.argwhere(p >= threshold)
    if len(coords) < min_samples:
        return 0
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit(coords).labels_
    return len(set(labels.tolist()) - {-1})


def entropy_evolution(
    maps: Float[ArrayOrTensor, "layer rows cols"], *, normalized: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """H_s per layer and its first differences dH_s.

    Args:
        maps: One map per layer, shape ``(layer, rows, cols)``.
        normalized: Report H_s / log(N) instead of nats.

    Returns:
        ``(h, dh)`` with ``h`` of shape ``(layer,)`` and ``dh = np.diff(h)`` of shape
        ``(layer - 1,)``.

    Raises:
        DataError: if ``maps`` is not 3-D or any map is invalid.

    Examples:
        >>> maps = np.stack([np.ones((2, 2)), np.eye(2)])
        >>> h, dh = entropy_evolution(maps)
        >>> np.round(dh, 3).tolist()
        [-0.693]
    """
    p = _as_map(maps, name="maps", ndim=3)
    h = np.array([spatial_entropy(layer_map, normalized=normalized) for layer_map in p])
    return h, np.diff(h)


def object_attention_mass(
    m: Float[ArrayOrTensor, "rows cols"], object_mask: Shaped[ArrayOrTensor, "rows cols"]
) -> float:
    """Share of the (L1-normalised) attention mass that falls on an object's patches.

    Args:
        m: Non-negative map over the patch grid, shape ``(rows, cols)``.
        object_mask: Bool or 0/1 mask of the object's patches, same shape.

    Returns:
        A share in [0, 1].

    Raises:
        DataError: if shapes differ, the mask is not binary or selects no patch.

    Examples:
        >>> object_attention_mass(np.ones((2, 2)), np.eye(2, dtype=bool))
        0.5
    """
    p = _as_map(m)
    mask = to_numpy(object_mask)
    if mask.shape != p.shape:
        raise DataError(
            f"object_mask shape {mask.shape} differs from the map's {p.shape}; "
            "build the mask on the same patch grid."
        )
    mask_arr = as_binary(mask.reshape(-1), name="object_mask")
    if not mask_arr.any():
        raise DataError("object_mask selects no patch; the object mass would be undefined.")
    return float(p.reshape(-1)[mask_arr].sum())


LayerRange = Literal["family", "second_half", "all"]
"""Which text layers M averages: the paper's per family, the second half, or all."""

PAPER_LAYERS: dict[str, Literal["second_half", "all"]] = {"llava": "second_half", "paligemma": "all",
                                                          "qwen2_vl": "all"}
"""The paper's layer range for M per family (LLaVA 16-31 of 32; the others all layers)."""


def attention_layers(choice: LayerRange, n_layers: int, family: str) -> range:
    """The 0-based layers M averages for ``choice`` (see the module's layer rule).

    Examples:
        >>> attention_layers("family", 32, "llava"), attention_layers("family", 18, "paligemma")
        (range(16, 32), range(0, 18))
    """
    if choice not in ("family", "second_half", "all"):
        raise DataError(f"attention layers must be 'family', 'second_half' or 'all', got {choice!r}.")
    resolved = PAPER_LAYERS.get(family, "second_half") if choice == "family" else choice
    return default_layers(n_layers) if resolved == "second_half" else range(n_layers)


def default_layers(n_layers: int) -> range:
    """The default layer range for M: the second half of the layers (0-based).

    Examples:
        >>> default_layers(32)
        range(16, 32)
    """
    if n_layers < 1:
        raise DataError(f"n_layers must be >= 1, got {n_layers}.")
    return range(n_layers // 2, n_layers)


def aggregate_attention(
    pattern_rows: Float[ArrayOrTensor, "layer head image_token"],
    grid: tuple[int, int],
    *,
    layers: Sequence[int] | None = None,
) -> np.ndarray:
    """Aggregated attention map M: mean over heads and layers, L1-normalised, on the grid.

    Args:
        pattern_rows: Attention of the last prompt position over the image-token columns,
            per layer and head, shape ``(layer, head, image_token)``.
        grid: ``(rows, cols)`` of the patch grid, with rows * cols = image_token; tokens
            are laid out row-major (e.g. 24x24 LLaVA-336, 16x16 PaliGemma-224, the merged
            (h/2)x(w/2) grid for Qwen2-VL).
        layers: 0-based layer indices to average; ``None`` uses :func:`default_layers`.

    Returns:
        M, shape ``(rows, cols)``, summing to 1.

    Raises:
        DataError: if the grid does not match the token count, a layer index is out of
            range or repeated, or the attention is negative / non-finite / all zero.

    Examples:
        >>> m = aggregate_attention(np.ones((4, 2, 6)), (2, 3))
        >>> m.shape, round(float(m.sum()), 6)
        ((2, 3), 1.0)
    """
    arr = as_finite(pattern_rows, name="pattern_rows", ndim=3)
    n_layers, _, n_tokens = arr.shape
    rows, cols = grid
    if rows < 1 or cols < 1 or rows * cols != n_tokens:
        raise DataError(
            f"grid {grid} has {rows * cols} patches but pattern_rows has {n_tokens} "
            "image-token columns; take the grid from the model's token layout."
        )
    chosen = list(default_layers(n_layers) if layers is None else layers)
    if not chosen:
        raise DataError("layers is empty; pass at least one layer index or None.")
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise DataError(
            f"layers {bad} are out of range for {n_layers} layers; use 0-based indices "
            f"in [0, {n_layers - 1}]."
        )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"layers has repeated indices {chosen}; each layer counts once.")
    mean = arr[chosen].mean(axis=(0, 1)).reshape(rows, cols)
    return _as_map(mean, name="aggregated attention")
