"""Hidden-state probes of the VLM Reliability Probe: does a layer's geometry predict correctness?

Labels are whether the greedy answer was correct (never a median split of a margin).
Every probe is scored on a held-out stratified split with a bootstrap AUROC CI, next to
the same pipeline trained on permuted labels (the shuffled control, expected ~0.5).
"""

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Shaped
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from vlmlens.circuits.probe import l1_logistic
from vlmlens.errors import DataError
from vlmlens.vrp.stats import (
    AUROC,
    ArrayOrTensor,
    as_binary,
    as_finite,
    auroc_ci,
    check_same_length,
)

logger = logging.getLogger(__name__)

ProbeKind = Literal["logistic", "mlp"]


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """How a probe is trained and scored.

    Attributes:
        kind: ``"logistic"`` (L2 logistic regression) or ``"mlp"`` (one hidden ReLU layer).
        C: Inverse L2 strength of the logistic probe.
        test_size: Held-out share of the stratified split.
        seed: Seeds the split, the label permutation, the MLP and the bootstrap.
        mlp_hidden: Hidden width of the MLP.
        mlp_lr: Adam learning rate of the MLP.
        mlp_epochs: MLP training epochs.
        mlp_batch_size: MLP minibatch size (shuffled every epoch).
        standardize: Z-score features with the training split's mean and std.
        n_resamples: Bootstrap resamples of the AUROC CI.
        max_iter: Iteration cap of the logistic solver.

    Examples:
        >>> ProbeConfig(kind="mlp", mlp_epochs=10).C
        0.1
    """

    kind: ProbeKind = "logistic"
    C: float = 0.1
    test_size: float = 0.3
    seed: int = 0
    mlp_hidden: int = 256
    mlp_lr: float = 1e-4
    mlp_epochs: int = 50
    mlp_batch_size: int = 32
    standardize: bool = True
    n_resamples: int = 1000
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in ("logistic", "mlp"):
            raise DataError(f"ProbeConfig.kind must be 'logistic' or 'mlp', got {self.kind!r}.")
        if not self.C > 0:
            raise DataError(f"ProbeConfig.C must be > 0, got {self.C}.")
        if not 0.0 < self.test_size < 1.0:
            raise DataError(f"ProbeConfig.test_size must be in (0, 1), got {self.test_size}.")
        if self.seed < 0:
            raise DataError(f"ProbeConfig.seed must be >= 0, got {self.seed}.")
        if not self.mlp_lr > 0:
            raise DataError(f"ProbeConfig.mlp_lr must be > 0, got {self.mlp_lr}.")
        for name in ("mlp_hidden", "mlp_epochs", "mlp_batch_size", "n_resamples", "max_iter"):
            if getattr(self, name) < 1:
                raise DataError(f"ProbeConfig.{name} must be >= 1, got {getattr(self, name)}.")


@dataclass(frozen=True, kw_only=True, eq=False)
class ProbeResult:
    """A probe's held-out AUROC next to its shuffled-label control.

    Attributes:
        kind: The probe kind.
        auroc: Held-out AUROC with bootstrap CI (its ``n`` is ``n_test``).
        shuffled_auroc: The same pipeline trained and scored on permuted labels.
        n_train: Training samples.
        n_test: Held-out samples.
        coef: Logistic weights on the (standardised) features, shape ``(d,)``; ``None``
            for the MLP.
    """

    kind: ProbeKind
    auroc: AUROC
    shuffled_auroc: AUROC
    n_train: int
    n_test: int
    coef: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test != self.auroc.n:
            raise DataError(
                f"ProbeResult needs n_train >= 1 and n_test == auroc.n, got "
                f"n_train={self.n_train}, n_test={self.n_test}, auroc.n={self.auroc.n}."
            )
        if (self.coef is None) != (self.kind == "mlp"):
            raise DataError(
                f"ProbeResult.coef must be set exactly for logistic probes, kind={self.kind!r}."
            )

    def to_row(self) -> dict[str, object]:
        """The result as one flat table row."""
        a, s = self.auroc, self.shuffled_auroc
        return {
            "kind": self.kind, "auroc": a.auroc, "auroc_lo": a.ci[0], "auroc_hi": a.ci[1],
            "shuffled_auroc": s.auroc, "shuffled_lo": s.ci[0], "shuffled_hi": s.ci[1],
            "n_train": self.n_train, "n_test": self.n_test,
        }  # fmt: skip

    def to_frame(self) -> pd.DataFrame:
        """A one-row ``pandas.DataFrame`` of :meth:`to_row`."""
        return pd.DataFrame([self.to_row()])


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerProbeResults:
    """Per-layer probes, the best layer and the probe on the concatenated last layers.

    Attributes:
        per_layer: One :class:`ProbeResult` per layer, in layer order.
        best_layer: 0-based layer with the highest held-out AUROC (first on ties).
        concat: Probe on the concatenation of ``concat_layers``.
        concat_layers: The layers concatenated (the last five, or all if fewer).
        n: Labelled samples (train + test).
    """

    per_layer: tuple[ProbeResult, ...]
    best_layer: int
    concat: ProbeResult
    concat_layers: tuple[int, ...]
    n: int

    def __post_init__(self) -> None:
        if not 0 <= self.best_layer < len(self.per_layer):
            raise DataError(
                f"best_layer {self.best_layer} is out of range for {len(self.per_layer)} layers."
            )
        if not self.concat_layers:
            raise DataError("LayerProbeResults.concat_layers is empty.")

    def to_frame(self) -> pd.DataFrame:
        """One row per layer plus a final ``features == "concat"`` row (layer is NA)."""
        rows = [
            {"features": "layer", "layer": i, **r.to_row()} for i, r in enumerate(self.per_layer)
        ]
        rows.append({"features": "concat", "layer": None, **self.concat.to_row()})
        frame = pd.DataFrame(rows)
        frame["layer"] = frame["layer"].astype("Int64")
        return frame


def _fit_logistic(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, config: ProbeConfig
) -> tuple[np.ndarray, np.ndarray]:
    model = LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=config.seed)
    model.fit(x_train, y_train)
    return model.decision_function(x_test), model.coef_[0].copy()


def _fit_mlp(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, config: ProbeConfig
) -> np.ndarray:
    # fork_rng keeps the caller's global torch RNG untouched by the seeded init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(x_train.shape[1], config.mlp_hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(config.mlp_hidden, 1),
        )
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.mlp_lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xt = torch.as_tensor(x_train, dtype=torch.float32)
    yt = torch.as_tensor(y_train, dtype=torch.float32)
    for _ in range(config.mlp_epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), config.mlp_batch_size):
            batch = order[start : start + config.mlp_batch_size]
            optimizer.zero_grad()
            loss_fn(model(xt[batch]).squeeze(-1), yt[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        return model(torch.as_tensor(x_test, dtype=torch.float32)).squeeze(-1).double().numpy()


def _fit_and_score(
    x: np.ndarray, y: np.ndarray, config: ProbeConfig
) -> tuple[AUROC, int, int, np.ndarray | None]:
    index = np.arange(len(y))
    train, test = train_test_split(
        index, test_size=config.test_size, random_state=config.seed, stratify=y
    )
    x_train, x_test = x[train], x[test]
    if config.standardize:
        scaler = StandardScaler().fit(x_train)
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    coef = None
    if config.kind == "logistic":
        scores, coef = _fit_logistic(x_train, y[train], x_test, config)
    else:
        scores = _fit_mlp(x_train, y[train], x_test, config)
    auroc = auroc_ci(y[test], scores, n_resamples=config.n_resamples, seed=config.seed)
    return auroc, len(train), len(test), coef


def _check_labels(y: np.ndarray, config: ProbeConfig) -> None:
    counts = {"correct": int(y.sum()), "incorrect": int((~y).sum())}
    n_test = int(np.ceil(config.test_size * len(y)))
    if min(counts.values()) < 2 or n_test < 2 or len(y) - n_test < 2:
        raise DataError(
            f"a stratified {1 - config.test_size:.0%}/{config.test_size:.0%} split needs "
            f">= 2 samples of each class and >= 2 in each part, got {counts} (n={len(y)}); "
            "collect more examples of the rarer outcome."
        )


def train_probe(
    features: Float[ArrayOrTensor, "batch feature"],
    labels: Shaped[ArrayOrTensor, " batch"],
    config: ProbeConfig | None = None,
) -> ProbeResult:
    """Train a probe for ``labels`` on ``features`` and score it on a held-out split.

    Args:
        features: One feature vector per example (e.g. the residual stream at the last
            prompt position), shape ``(batch, feature)``.
        labels: Whether each example's greedy answer was correct, bool or 0/1, ``(batch,)``.
        config: Training settings; ``None`` means ``ProbeConfig()``.

    Returns:
        A :class:`ProbeResult` with the held-out AUROC and the shuffled-label control.

    Raises:
        DataError: if shapes disagree, values are non-finite, labels are not binary or a
            class has too few samples for the stratified split.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(100, 4)); y = x[:, 0] > 0
        >>> train_probe(x, y, ProbeConfig(n_resamples=100)).auroc.auroc > 0.95
        True
    """
    config = ProbeConfig() if config is None else config
    x = as_finite(features, name="features", ndim=2, dtype=np.float32)
    y = as_binary(labels, name="labels")
    check_same_length(features=x, labels=y)
    _check_labels(y, config)
    auroc, n_train, n_test, coef = _fit_and_score(x, y, config)
    shuffled = np.random.default_rng(config.seed).permutation(y)
    shuffled_auroc, _, _, _ = _fit_and_score(x, shuffled, config)
    return ProbeResult(
        kind=config.kind,
        auroc=auroc,
        shuffled_auroc=shuffled_auroc,
        n_train=n_train,
        n_test=n_test,
        coef=coef,
    )


def probe_layers(
    features_by_layer: Float[ArrayOrTensor, "layer batch feature"],
    labels: Shaped[ArrayOrTensor, " batch"],
    config: ProbeConfig | None = None,
    *,
    concat_last: int = 5,
) -> LayerProbeResults:
    """Probe every layer, pick the best one and probe the concatenated last layers.

    All probes share one stratified split (same labels and seed).

    Args:
        features_by_layer: Features per layer, shape ``(layer, batch, feature)``.
        labels: Whether each example's answer was correct, ``(batch,)``.
        config: Training settings; ``None`` means ``ProbeConfig()``.
        concat_last: How many final layers to concatenate (all layers if fewer exist).

    Returns:
        A :class:`LayerProbeResults`.

    Raises:
        DataError: as :func:`train_probe`, or if ``concat_last`` < 1.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(3, 80, 4)); y = x[2, :, 0] > 0
        >>> probe_layers(x, y, ProbeConfig(n_resamples=50), concat_last=2).best_layer
        2
    """
    if concat_last < 1:
        raise DataError(f"concat_last must be >= 1, got {concat_last}.")
    config = ProbeConfig() if config is None else config
    x = as_finite(features_by_layer, name="features_by_layer", ndim=3, dtype=np.float32)
    per_layer = tuple(train_probe(layer_x, labels, config) for layer_x in x)
    best = int(np.argmax([r.auroc.auroc for r in per_layer]))
    chosen = tuple(range(max(0, len(x) - concat_last), len(x)))
    concat_x = np.concatenate([x[i] for i in chosen], axis=1)
    return LayerProbeResults(
        per_layer=per_layer,
        best_layer=best,
        concat=train_probe(concat_x, labels, config),
        concat_layers=chosen,
        n=x.shape[1],
    )


def rank_dimensions_l1(
    features: Float[ArrayOrTensor, "batch feature"],
    labels: Shaped[ArrayOrTensor, " batch"],
    *,
    C: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Rank feature dimensions by |weight| of an L1 logistic probe on standardised inputs.

    Used to pick "reliability neurons" to ablate. Dimensions with equal |weight| (e.g. the
    zeros L1 leaves behind) keep index order.

    Args:
        features: Shape ``(batch, feature)``, e.g. an MLP block's output at the last position.
        labels: Whether each answer was correct, ``(batch,)``.
        C: Inverse L1 strength (liblinear solver).
        seed: Solver seed.

    Returns:
        All d indices, most important first, dtype int64.

    Raises:
        DataError: on bad shapes, non-finite values, non-binary or single-class labels.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 5)); y = x[:, 3] > 0
        >>> int(rank_dimensions_l1(x, y)[0])
        3
    """
    if not C > 0:
        raise DataError(f"C must be > 0, got {C}.")
    x = as_finite(features, name="features", ndim=2)
    y = as_binary(labels, name="labels")
    check_same_length(features=x, labels=y)
    if y.all() or not y.any():
        raise DataError(f"labels hold a single class (all {bool(y[0])}); nothing to rank by.")
    weights = l1_logistic(C, seed).fit(StandardScaler().fit_transform(x), y).coef_[0]
    if not weights.any():
        logger.warning("L1 probe (C=%s) zeroed every weight; the ranking is index order.", C)
    return np.argsort(-np.abs(weights), kind="stable").astype(np.int64)
