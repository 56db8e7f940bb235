"""Reliability-neuron ablation and dimension destruction (the VRP's phase 2).

Both zero (or mean-ablate) a set of dimensions of one text layer at every position and
compare the first-token accuracy with the clean run:

* **neuron ablation**: the top-k dimensions of the MLP output (``hook_mlp_out``, model
  width) ranked by an L1 probe of correctness, against k random dimensions; the same on
  the true MLP neurons (``mlp.hook_post``, d_mlp wide);
* **dimension destruction**: a growing share of one layer's dimensions (5 dims, 1 ... 75%),
  probe-ranked against random, giving an accuracy-vs-share curve.

The plan (layer, rankings, random sets) is made once from the finished per-sample store,
saved to ``plan.json``, and turned into conditions run with :func:`vlmlens.ops.sweep`.

Examples:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 6)); y = x[:, 4] > 0
    >>> int(rank_dimensions(x, y, k=1)[0])
    4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vlmlens.circuits.probe import l1_path
from vlmlens.errors import DataError, InputError
from vlmlens.ops import Ablate, sweep
from vlmlens.sites import Point, Site, Tower
from vlmlens.vrp.batches import as_batches
from vlmlens.vrp.config import AblationConfig, DestructionConfig, LayerChoice, VRPConfig
from vlmlens.vrp.pipeline import AnswerTokens, answer_tokens, batches_of
from vlmlens.vrp.stats import (
    McNemar,
    PairedDifference,
    as_binary,
    as_finite,
    cluster_bootstrap_ci,
    hurts_more_than_random,
    mcnemar_exact,
    paired_difference,
    sweep_verdict,
)
from vlmlens.vrp.store import SampleStore

__all__ = [
    "AblationResult",
    "Condition",
    "DestructionResult",
    "ablation_result",
    "destruction_result",
    "make_plan",
    "plan_interventions",
    "rank_dimensions",
    "run_interventions",
]

ABLATION_POINTS = {"mlp_out": Point.MLP_OUT, "mlp_post": Point.MLP_POST}
"""Feature name -> site of the neuron ablation: MLP output dims and true MLP neurons."""


def rank_dimensions(features: np.ndarray, labels: np.ndarray, *, k: int, C: float = 0.1, seed: int = 0) -> np.ndarray:
    """All dimensions ranked: the first ``k`` by their entry on the L1 path, the rest by |L2 weight|.

    The L1 path (:func:`vlmlens.circuits.probe.l1_path`) lowers the penalty until exactly
    ``k`` or more dimensions are in, so the top ``k`` are never a tie-break among zero
    weights; the L2 probe only orders the remaining dimensions (which matters when half
    the width is destroyed).

    Args:
        features: ``(batch, feature)``, e.g. one layer's MLP output at the last position.
        labels: Whether each answer was correct, ``(batch,)``, both classes present.
        k: How many dimensions the L1 path must choose (the largest k ablated).
        C: Inverse regularisation strength of the L2 probe that orders the rest.
        seed: Solver seed.

    Returns:
        Dimension indices, most important first (int64).

    Raises:
        DataError: on bad shapes, non-finite values, single-class labels, or an L1 path that
            cannot reach ``k`` dimensions.
    """
    x = as_finite(features, name="features", ndim=2)
    y = as_binary(labels, name="labels")
    if len(x) != len(y):
        raise DataError(f"features ({len(x)}) and labels ({len(y)}) must be paired.")
    if y.all() or not y.any():
        raise DataError(f"labels hold a single class (all {bool(y[0])}); there is nothing to rank by.")
    try:
        path = l1_path(x, y.astype(int), min(k, x.shape[1]), seed=seed)
    except InputError as err:
        raise DataError(f"ranking by the L1 path failed: {err}") from err
    first = [int(d) for d in path.order[: min(k, x.shape[1])]]
    l2 = np.abs(LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(StandardScaler().fit_transform(x), y)
                .coef_[0])
    chosen = set(first)
    rest = [int(d) for d in np.lexsort((np.arange(len(l2)), -l2)) if int(d) not in chosen]
    return np.array(first + rest, dtype=np.int64)


def random_dims(width: int, count: int, *, seed: int, stream: Sequence[int]) -> list[int]:
    """``count`` distinct random dimensions of ``width``, reproducible from ``(seed, *stream)``."""
    perm = np.random.default_rng([seed, *stream]).permutation(width)
    return sorted(int(d) for d in perm[:count])


@dataclass(frozen=True, kw_only=True)
class Condition:
    """One intervention condition of phase 2: ablate ``dims`` of ``site`` at every position.

    Attributes:
        name: Column name in ``interventions.csv``.
        group: ``"ablate_mlp_out"``, ``"ablate_mlp_post"`` or ``"destroy"``.
        kind: ``"top"`` / ``"random"`` (ablation) or ``"ranked"`` / ``"random"`` (destruction).
        site: The site name.
        size: The k (ablation) or count (destruction) asked for.
        dims: The dimensions ablated (``min(size, width)`` of them).
        draw: Index of the random draw (0 for ranked sets).
    """

    name: str
    group: str
    kind: str
    site: str
    size: int
    dims: tuple[int, ...]
    draw: int = 0

    def __post_init__(self) -> None:
        if not self.dims:
            raise DataError(f"condition {self.name!r} ablates no dimension.")


def choose_layer(choice: LayerChoice, *, best_probe: int, peak_visual: int, n_layers: int) -> int:
    """Resolve a :data:`LayerChoice` to a layer index.

    Raises:
        DataError: if a fixed layer is out of range.
    """
    layer = {"best_probe": best_probe, "peak_visual": peak_visual}.get(choice, choice)  # type: ignore[arg-type]
    if not 0 <= int(layer) < n_layers:
        raise DataError(f"layer {layer} is out of range for a model with {n_layers} text layers.")
    return int(layer)


def make_plan(store: SampleStore, frame: pd.DataFrame, config: VRPConfig, *, best_probe: int,
              peak_visual: int, n_layers: int) -> dict[str, Any]:
    """The phase-2 plan from the finished per-sample store (JSON-ready).

    Args:
        store: The run's store (features of every question).
        frame: ``samples.csv`` in dataset order (``question_id``, ``correct``).
        config: The run's settings.
        best_probe: The best logistic probe layer.
        peak_visual: The peak visual layer.
        n_layers: Text layers of the model.

    Returns:
        ``{"ablation_layer", "destruction_layer", "destruction_site", "destruction_width",
        "conditions": [Condition as dict, ...]}`` (+ ``"destruction_mean"`` in mean mode).

    Raises:
        DataError: if the greedy answers are all correct or all wrong (nothing to rank by).
    """
    qids = frame["question_id"].tolist()
    labels = frame["correct"].to_numpy().astype(bool)
    ab, de = config.ablation, config.destruction
    ab_layer = choose_layer(ab.layer, best_probe=best_probe, peak_visual=peak_visual, n_layers=n_layers)
    de_layer = choose_layer(de.layer, best_probe=best_probe, peak_visual=peak_visual, n_layers=n_layers)
    conditions: list[Condition] = []
    for name, point in ABLATION_POINTS.items():
        x = store.features(name, qids)[:, ab_layer]
        ks = ab.ks if name == "mlp_out" else (ab.k,)  # the k sweep runs on the reported site only
        conditions += _ablation_conditions(name, str(Site(Tower.TEXT, point, ab_layer)), x, labels, ab, ks,
                                           config.seed)
    x = store.features(de.site if de.site == "mlp_out" else "resid", qids)[:, de_layer]
    site = str(Site(Tower.TEXT, Point.MLP_OUT if de.site == "mlp_out" else Point.RESID_POST, de_layer))
    conditions += _destruction_conditions(site, x, labels, de, config.seed)
    plan = {"ablation_layer": ab_layer, "destruction_layer": de_layer, "destruction_site": site,
            "destruction_width": int(x.shape[1]), "conditions": [asdict(c) for c in conditions]}
    if de.mode == "mean":
        plan["destruction_mean"] = x.mean(0).astype(float).round(6).tolist()
    return plan


def _ablation_conditions(name: str, site: str, x: np.ndarray, labels: np.ndarray, config: AblationConfig,
                         ks: Sequence[int], seed: int) -> list[Condition]:
    ranking = rank_dimensions(x, labels, k=max(ks), C=config.C, seed=seed)
    stream = 1 + list(ABLATION_POINTS).index(name)
    out = []
    for k in sorted(ks):
        count = min(k, x.shape[1])
        out.append(Condition(name=f"ablate_{name}_top_k{k}", group=f"ablate_{name}", kind="top", site=site,
                             size=k, dims=tuple(int(d) for d in ranking[:count])))
        for draw in range(config.random_draws if k == config.k else config.sweep_draws):
            dims = random_dims(x.shape[1], count, seed=seed, stream=(stream, k, draw))
            out.append(Condition(name=f"ablate_{name}_random_k{k}_d{draw}", group=f"ablate_{name}",
                                 kind="random", site=site, size=k, dims=tuple(dims), draw=draw))
    return out


def _destruction_conditions(site: str, x: np.ndarray, labels: np.ndarray, config: DestructionConfig,
                            seed: int) -> list[Condition]:
    ranking = rank_dimensions(x, labels, k=min(config.counts(x.shape[1])), C=config.C, seed=seed)
    perms = [np.random.default_rng([seed, 3, draw]).permutation(x.shape[1]) for draw in range(config.random_draws)]
    out = []
    for count in config.counts(x.shape[1]):
        out.append(Condition(name=f"destroy_ranked_n{count}", group="destroy", kind="ranked", site=site,
                             size=count, dims=tuple(sorted(int(d) for d in ranking[:count]))))
        for draw, perm in enumerate(perms):  # prefixes of one permutation: nested random sets
            out.append(Condition(name=f"destroy_random_n{count}_d{draw}", group="destroy", kind="random",
                                 site=site, size=count, dims=tuple(sorted(int(d) for d in perm[:count])), draw=draw))
    return out


def plan_interventions(plan: Mapping[str, Any], config: VRPConfig) -> tuple[list[str], list[list[Ablate]]]:
    """The plan's conditions as ``(column names, intervention lists)``, in plan order."""
    mean = plan.get("destruction_mean")
    names, conditions = [], []
    for c in plan["conditions"]:
        names.append(c["name"])
        if c["group"] == "destroy" and config.destruction.mode == "mean":
            ablate = Ablate(site=c["site"], dims=tuple(c["dims"]), mode="mean", mean=torch.tensor(mean))
        else:
            ablate = Ablate(site=c["site"], dims=tuple(c["dims"]), mode="zero")
        conditions.append([ablate])
    return names, conditions


def run_interventions(model: Any, dataset: Any, config: VRPConfig, store: SampleStore, plan: Mapping[str, Any],
                      *, name: str = "model", progress: bool | None = None) -> SampleStore:
    """Run every planned condition on every question; rows go to ``interventions.csv``.

    Finished batches are kept (a killed run resumes); first-token answers are scored with
    the POPE parser, as in the masking test.

    Args:
        model: A HookedVLM.
        dataset: The dataset of the per-sample pass.
        config: The run's settings (batch size, destruction mode).
        store: The run's store.
        plan: From :func:`make_plan`.
        name: Shown on the progress bar.
        progress: Show it (``None``: for at least 8 batches; :mod:`vlmlens.progress`).

    Returns:
        ``store``.
    """
    batches = batches_of(dataset.items, config.batch_size)
    done = store.done_batches("interventions", {i: len(chunk) for i, chunk in batches})
    todo = [(i, chunk) for i, chunk in batches if i not in done]
    if not todo:
        return store
    runner = as_batches(model)
    names, conditions = plan_interventions(plan, config)
    shared = {"dataset": dataset, "config": config, "tokens": runner.call(answer_tokens), "names": names,
              "conditions": conditions}
    for index, rows in runner.map(_interventions_task, todo, shared, desc=f"VRP {name}: ablations",
                                  progress=progress):
        store.append("interventions", index, rows)
    return store


def _interventions_task(model: Any, index: int, chunk: Sequence[Any], *, dataset: Any, config: VRPConfig,
                        tokens: AnswerTokens, names: Sequence[str], conditions: Sequence[list[Ablate]]
                        ) -> list[dict[str, Any]]:
    """One batch of the ablation pass: the first-token correctness under every condition."""
    batch = model.prepare([dataset.image(item) for item in chunk], [item.text for item in chunk], suffix=config.suffix)
    logits = sweep(model, batch, conditions, chunk_size=max(1, 128 // len(chunk)), last=True)  # 16 x 8: fastest
    rows = [{"question_id": item.question_id, "batch": index} for item in chunk]
    for column, condition_logits in zip(names, logits):
        for row, item, answer in zip(rows, chunk, tokens.first_answers(condition_logits)):
            row[column] = int(answer == item.label)
    return rows


@dataclass(frozen=True, kw_only=True)
class AblationResult:
    """Top-k probe-ranked ablation against k random dimensions, for every k swept.

    Attributes:
        site: The site ablated.
        k: The reported k.
        dims: The reported top-k dimensions.
        top: McNemar test of clean vs top-k ablated (reported k).
        random: One McNemar test per random draw (reported k).
        random_drop_pp: Mean accuracy drop over the random draws.
        excess_drop_pp: ``top.drop_pp - random_drop_pp``.
        by_k: Per k swept: ``{"k", "top_drop_pp", "top_p", "random_drop_pp", "excess_drop_pp",
            "claim"}``; ``claim``: top-k significantly hurts (McNemar p < 0.05), more than random.
        verdict: :func:`~vlmlens.vrp.stats.sweep_verdict` of the claims over the k swept.
        top_drop: Clean minus top-k correctness with its image-bootstrap CI, and
            ``top_vs_random``: the mean over random draws minus top-k correctness (the excess
            drop) with an image sign-flip test, at ``k`` (strings when no images were given).
    """

    site: str
    k: int
    dims: tuple[int, ...]
    top: McNemar
    random: tuple[McNemar, ...]
    random_drop_pp: float
    excess_drop_pp: float
    by_k: tuple[dict[str, float | int], ...]
    verdict: str
    top_drop: PairedDifference | str = "undefined: no images given"
    top_vs_random: PairedDifference | str = "undefined: no images given"

    def __post_init__(self) -> None:
        if not self.random or not self.by_k:
            raise DataError("AblationResult needs at least one random draw and one k.")


def _random_columns(conds: Sequence[Mapping[str, Any]], size: int) -> list[str]:
    """The columns of the random control draws of one size."""
    return [c["name"] for c in conds if c["kind"] == "random" and c["size"] == size]


def _mean_of_draws(table: pd.DataFrame, conds: Sequence[Mapping[str, Any]], size: int) -> np.ndarray:
    """Per question, the share of the random control draws of one size it answered right."""
    return np.mean([table[name].to_numpy(dtype=float) for name in _random_columns(conds, size)], axis=0)


def ablation_result(first_correct: np.ndarray, table: pd.DataFrame, plan: Mapping[str, Any], group: str,
                    config: AblationConfig, *, groups: np.ndarray | None = None, n_resamples: int = 1000,
                    seed: int = 0) -> AblationResult:
    """Score one neuron-ablation group (``ablate_mlp_out`` / ``ablate_mlp_post``) from its columns.

    ``groups`` (the image of each row) adds the image-level paired comparisons.
    """
    conds = [c for c in plan["conditions"] if c["group"] == group]
    by_k = []
    for k in sorted({c["size"] for c in conds}):
        top = next(c for c in conds if c["kind"] == "top" and c["size"] == k)
        top_test = mcnemar_exact(first_correct, table[top["name"]].to_numpy())
        randoms = tuple(mcnemar_exact(first_correct, table[name].to_numpy()) for name in _random_columns(conds, k))
        random_drop = float(np.mean([r.drop_pp for r in randoms]))
        excess = top_test.drop_pp - random_drop
        by_k.append({"k": k, "top_drop_pp": top_test.drop_pp, "top_p": top_test.p_value,
                     "random_drop_pp": random_drop, "excess_drop_pp": excess,
                     "claim": hurts_more_than_random(top_test, random_drop),
                     "_top": top_test, "_random": randoms, "_dims": tuple(top["dims"])})
    main = next(row for row in by_k if row["k"] == config.k)

    paired = {}
    if groups is not None:
        top = next(c for c in conds if c["kind"] == "top" and c["size"] == config.k)
        top_correct = table[top["name"]].to_numpy(dtype=float)
        random_correct = _mean_of_draws(table, conds, config.k)
        kw = {"n_resamples": n_resamples, "seed": seed}
        paired = {"top_drop": paired_difference(np.asarray(first_correct, dtype=float), top_correct, groups, **kw),
                  "top_vs_random": paired_difference(random_correct, top_correct, groups, **kw)}
    return AblationResult(
        **paired,
        site=conds[0]["site"], k=config.k, dims=main["_dims"], top=main["_top"], random=main["_random"],
        random_drop_pp=main["random_drop_pp"], excess_drop_pp=main["excess_drop_pp"],
        by_k=tuple({k: v for k, v in row.items() if not k.startswith("_")} for row in by_k),
        verdict=sweep_verdict([row["claim"] for row in by_k]),
    )


@dataclass(frozen=True, kw_only=True)
class DestructionResult:
    """Accuracy against the share of one layer's dimensions destroyed, ranked vs random.

    Attributes:
        site: The site whose dimensions are destroyed.
        width: Its width.
        mode: ``"zero"`` or ``"mean"``.
        baseline_accuracy: First-token accuracy of the clean run.
        counts: Dimensions destroyed at each point.
        ranked_accuracy: Accuracy with the top-``count`` probe-ranked dims destroyed.
        random_accuracy: Mean accuracy over the random draws.
        ranked_p: Exact McNemar p-value of clean vs ranked at each point.
        ranked_drop_ci: Image-bootstrap CI of the ranked drop (clean minus ranked accuracy)
            at each point, and ``random_drop_ci`` of the drop averaged over the random draws
            (empty when no images were given).
    """

    site: str
    width: int
    mode: str
    baseline_accuracy: float
    counts: tuple[int, ...]
    ranked_accuracy: tuple[float, ...]
    random_accuracy: tuple[float, ...]
    ranked_p: tuple[float, ...]
    ranked_drop_ci: tuple[tuple[float, float], ...] = ()
    random_drop_ci: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not len(self.counts) == len(self.ranked_accuracy) == len(self.random_accuracy) == len(self.ranked_p):
            raise DataError("DestructionResult needs one accuracy and p-value per count.")

    @property
    def fractions(self) -> tuple[float, ...]:
        """``counts / width``."""
        return tuple(c / self.width for c in self.counts)

    def drop_at(self, fraction: float) -> tuple[float, float]:
        """Accuracy drops (pp) ``(ranked, random)`` at the point nearest ``fraction`` destroyed."""
        i = int(np.argmin([abs(f - fraction) for f in self.fractions]))
        return (100 * (self.baseline_accuracy - self.ranked_accuracy[i]),
                100 * (self.baseline_accuracy - self.random_accuracy[i]))


def destruction_result(first_correct: np.ndarray, table: pd.DataFrame, plan: Mapping[str, Any], *,
                       mode: str, groups: np.ndarray | None = None, n_resamples: int = 1000,
                       seed: int = 0) -> DestructionResult:
    """Score the destruction curve from its columns (with image-bootstrap CIs when ``groups`` is given)."""
    conds = [c for c in plan["conditions"] if c["group"] == "destroy"]
    counts = sorted({c["size"] for c in conds})
    clean = np.asarray(first_correct, dtype=float)
    ranked, random, pvals, ranked_ci, random_ci = [], [], [], [], []
    for count in counts:
        name = next(c["name"] for c in conds if c["kind"] == "ranked" and c["size"] == count)
        ranked.append(float(table[name].mean()))
        pvals.append(mcnemar_exact(first_correct, table[name].to_numpy()).p_value)
        random_rows = _mean_of_draws(table, conds, count)
        random.append(float(random_rows.mean()))
        if groups is not None:
            kw = {"n_resamples": n_resamples, "seed": seed}
            ranked_ci.append(cluster_bootstrap_ci(clean - table[name].to_numpy(dtype=float), groups, **kw))
            random_ci.append(cluster_bootstrap_ci(clean - random_rows, groups, **kw))
    return DestructionResult(site=plan["destruction_site"], width=plan["destruction_width"], mode=mode,
                             baseline_accuracy=float(np.mean(first_correct)), counts=tuple(counts),
                             ranked_accuracy=tuple(ranked), random_accuracy=tuple(random), ranked_p=tuple(pvals),
                             ranked_drop_ci=tuple(ranked_ci), random_drop_ci=tuple(random_ci))
