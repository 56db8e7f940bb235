"""Statistics over a VRP run's per-sample store: one frozen result per measurement.

Each function reads the ``samples.csv`` frame (and feature shards) written by
:mod:`vlmlens.vrp.pipeline` and returns a frozen dataclass; :func:`to_jsonable` turns any
of them into the plain JSON that ``results.json`` holds. A statistic that is undefined on
the data (e.g. R_pb when every answer is correct) is reported as a string saying why.

Examples:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"correct": [1, 0, 1, 0, 1, 0], "x": [3.0, 1, 2.5, 0.5, 2, 1]})
    >>> round(correlations(frame, ["x"], n_resamples=50)["x"].r, 3)
    0.928
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vlmlens.errors import DataError
from vlmlens.vrp.calibration import Calibration, calibration
from vlmlens.vrp.config import VRPConfig
from vlmlens.vrp.consistency import consistency_score, normalize_answer
from vlmlens.vrp.margins import margin_gain, peak_visual_layer
from vlmlens.vrp.pipeline import MASKS, mask_column, mask_columns
from vlmlens.vrp.probes import (
    LayerProbeResults,
    ProbeResult,
    baseline_probes,
    probe_layers,
)
from vlmlens.vrp.stats import (
    AUROC,
    Correlation,
    McNemar,
    PairedDifference,
    adjust_p_values,
    auroc_ci,
    hurts_more_than_random,
    mcnemar_exact,
    paired_difference,
    point_biserial,
    sweep_verdict,
)
from vlmlens.vrp.store import SampleStore

__all__ = [
    "BASELINES",
    "AttentionSummary",
    "ConsistencySummary",
    "MarginSummary",
    "MaskingSummary",
    "ProbeSummary",
    "attention_summary",
    "calibration_summary",
    "consistency_summary",
    "correlations",
    "images",
    "margin_summary",
    "masked_correct",
    "masking_summary",
    "multiplicity",
    "probe_summary",
    "to_jsonable",
]

Undefined = str
"""Why a statistic could not be computed on this data."""

def to_jsonable(value: Any) -> Any:
    """Plain JSON types from results: dataclasses, tuples, numpy scalars and arrays, NaN -> None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    return value


def _try(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except DataError as err:
        return f"undefined: {err}"


def images(frame: pd.DataFrame) -> np.ndarray | None:
    """The image of each question (the clusters of every bootstrap and split), if the frame has them."""
    return frame["image"].to_numpy() if "image" in frame else None


def correlations(frame: pd.DataFrame, columns: Sequence[str], *, n_resamples: int = 1000,
                 seed: int = 0) -> dict[str, Correlation | Undefined]:
    """R_pb of each column with ``correct`` (rows where the column is NaN are dropped).

    The bootstrap CI resamples images when the frame has an ``image`` column.
    """
    out: dict[str, Correlation | Undefined] = {}
    groups = images(frame)
    for column in columns:
        values = frame[column].to_numpy(dtype=float)
        keep = np.isfinite(values)
        out[column] = _try(point_biserial, frame["correct"].to_numpy()[keep], values[keep],
                           n_resamples=n_resamples, seed=seed, groups=None if groups is None else groups[keep])
    return out


def _layers(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.array([json.loads(v) for v in frame[column]], dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class AttentionSummary:
    """Attention sharpness against correctness.

    Attributes:
        rpb: R_pb with correctness of ``C_k``, ``H_s``, ``H_s_norm`` and ``object_mass``
            (the last over questions whose object is in the image).
        H_s_by_layer: Mean H_s (nats) of each layer's head-averaged map.
        dH_s_by_layer: Mean first difference of H_s between consecutive layers.
        object_mass_mean: Mean share of attention on the queried object's patches (or None).
        C_k_mean: Mean cluster count.
        layers: The layer range M averaged (``VRPConfig.attention_layers``).
        sweep: R_pb at every swept setting: ``{"measure", "setting", "rpb"}`` (settings from
            :class:`~vlmlens.vrp.config.AttentionSweepConfig`).
        verdicts: Per measure (``C_k``, ``H_s_norm``), :func:`sweep_verdict` over the reported
            and the swept settings (a significant R_pb: Fisher CI excluding 0).
    """

    rpb: dict[str, Correlation | Undefined]
    H_s_by_layer: tuple[float, ...]
    dH_s_by_layer: tuple[float, ...]
    object_mass_mean: float | None
    C_k_mean: float
    layers: str = "family"
    sweep: tuple[dict[str, Any], ...] = ()
    verdicts: dict[str, str] = dataclasses.field(default_factory=dict)


def attention_summary(frame: pd.DataFrame, config: VRPConfig) -> AttentionSummary:
    """R_pb of the attention metrics with correctness, at the reported and the swept settings."""
    h = _layers(frame, "H_s_layers")
    mass = frame["object_mass"].to_numpy(dtype=float)
    kw = {"n_resamples": config.n_resamples, "seed": config.seed}
    rpb = correlations(frame, ["C_k", "H_s", "H_s_norm", "object_mass"], **kw)
    sw = config.attention_sweep
    settings = [("H_s_norm", c) for c in sw.layer_columns()] + [("C_k", c) for c in sw.layer_columns()]
    settings += [("C_k", c) for c in sw.dbscan_columns()]
    present = [(m, c) for m, c in settings if f"{m}{c}" in frame]
    swept = correlations(frame, [f"{m}{c}" for m, c in present], **kw)
    sweep = tuple({"measure": m, "setting": c.lstrip("@"), "rpb": swept[f"{m}{c}"]} for m, c in present)
    verdicts = {m: sweep_verdict([_verdict(rpb[m])] + [_verdict(row["rpb"]) for row in sweep if row["measure"] == m])
                for m in ("C_k", "H_s_norm")}
    return AttentionSummary(
        rpb=rpb, H_s_by_layer=tuple(h.mean(0)), dH_s_by_layer=tuple(np.diff(h, axis=1).mean(0)),
        object_mass_mean=float(np.nanmean(mass)) if np.isfinite(mass).any() else None,
        C_k_mean=float(frame["C_k"].mean()), layers=config.attention_layers, sweep=sweep, verdicts=verdicts,
    )


@dataclass(frozen=True, kw_only=True)
class MarginSummary:
    """Logit-lens margins per layer (means over questions) and the peak visual layer.

    Attributes:
        truth: Truth margin with the real image; ``truth_blank`` with a blank grey image.
        yes_no: Yes/no margin with the real image; ``yes_no_blank`` with the blank one.
        gain: Mean truth-margin gain of the real over the blank image.
        peak_visual_layer: argmax of ``gain``.
    """

    truth: tuple[float, ...]
    truth_blank: tuple[float, ...]
    yes_no: tuple[float, ...]
    yes_no_blank: tuple[float, ...]
    gain: tuple[float, ...]
    peak_visual_layer: int


def margin_summary(frame: pd.DataFrame) -> MarginSummary:
    """Per-layer margin means and the peak visual layer (truth margin, real vs blank)."""
    real, blank = _layers(frame, "truth_margin"), _layers(frame, "truth_margin_blank")
    return MarginSummary(
        truth=tuple(real.mean(0)), truth_blank=tuple(blank.mean(0)),
        yes_no=tuple(_layers(frame, "yes_no_margin").mean(0)),
        yes_no_blank=tuple(_layers(frame, "yes_no_margin_blank").mean(0)),
        gain=tuple(margin_gain(real, blank)), peak_visual_layer=peak_visual_layer(real, blank),
    )


@dataclass(frozen=True, kw_only=True)
class ProbeSummary:
    """Hidden-state probes per layer and on the last-5 concatenation, beside free baselines.

    Attributes:
        logistic: The logistic probes (or why they could not be trained).
        mlp: The 2-layer MLP probes (or why not).
        baselines: One-feature probes on the same split (:data:`BASELINES`), or why not.
    """

    logistic: LayerProbeResults | Undefined
    mlp: LayerProbeResults | Undefined
    baselines: dict[str, ProbeResult] | Undefined

    def best_layer(self) -> int | None:
        """The logistic probe's layer (chosen by CV on the training part), or None when undefined."""
        return None if isinstance(self.logistic, str) else self.logistic.best_layer

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per probe the chosen layer, per-layer rows, the selected and concat rows."""
        out: dict[str, Any] = {}
        for name in ("logistic", "mlp"):
            res = getattr(self, name)
            if isinstance(res, str):
                out[name] = res
                continue
            frame = res.to_frame()
            rows = json.loads(frame[frame["features"] == "layer"].drop(columns=["features"]).to_json(orient="records"))
            concat = {k: to_jsonable(v) for k, v in res.concat.to_row().items()}
            out[name] = {"best_layer": res.best_layer, "selection": "mean CV AUROC on the training part",
                         "selected": to_jsonable(res.selected.to_row()), "by_layer": rows,
                         "concat": {**concat, "layers": list(res.concat_layers)}, "n": res.n,
                         "n_groups": res.n_groups, "n_cv_fits": res.n_cv_fits}
        out["baselines"] = self.baselines if isinstance(self.baselines, str) else {
            name: to_jsonable(r.to_row()) for name, r in self.baselines.items()}
        return out


BASELINES = {
    "token confidence": "mean log-probability of the greedy answer's tokens",
    "final yes/no margin": "|logit(yes) - logit(no)| at the last layer",
    "answer given": "1 if the answer was yes",
    "self-consistency": "S_SC at the reported K",
}
"""The free signals every hidden-state probe is read against (name -> what it is)."""


def _sc_share(frame: pd.DataFrame, k: int) -> np.ndarray:
    """S_SC of every question from the first ``k`` stored samples."""
    return np.array([consistency_score(json.loads(s)[:k], yes_no=True)[1] for s in frame["samples"]])


def _greedy_agreement(frame: pd.DataFrame, k: int) -> np.ndarray:
    """Share of the first ``k`` samples that give the greedy answer: a stated P(greedy answer is right).

    S_SC is the majority's share; where the majority is not the greedy answer it is not a
    confidence in the answer being graded, so calibration uses this agreement instead.
    """
    return np.array([np.mean([normalize_answer(a, yes_no=True) == greedy for a in json.loads(s)[:k]])
                     for s, greedy in zip(frame["samples"], frame["answer"])])


def _baseline_scores(frame: pd.DataFrame, config: VRPConfig) -> dict[str, np.ndarray]:
    return {
        "token confidence": frame["confidence"].to_numpy(dtype=float),
        "final yes/no margin": np.abs(_layers(frame, "yes_no_margin")[:, -1]),
        "answer given": (frame["answer"] == "yes").to_numpy(dtype=float),
        "self-consistency": _sc_share(frame, config.consistency.k),
    }


def probe_summary(store: SampleStore, frame: pd.DataFrame, config: VRPConfig) -> ProbeSummary:
    """Logistic and MLP probes of correctness on every layer's residual stream, and the baselines.

    Every probe and baseline shares one held-out split grouped by image.
    """
    features = np.moveaxis(store.features("resid", frame["question_id"].tolist()), 1, 0)  # layer batch d
    labels = frame["correct"].to_numpy().astype(bool)
    groups = images(frame)
    logistic, mlp = (p.resolved(seed=config.seed, n_resamples=config.n_resamples)
                     for p in (config.probe, config.mlp_probe))
    return ProbeSummary(logistic=_try(probe_layers, features, labels, logistic, groups=groups),
                        mlp=_try(probe_layers, features, labels, mlp, groups=groups),
                        baselines=_try(baseline_probes, _baseline_scores(frame, config), labels, logistic,
                                       groups=groups))


def calibration_summary(frame: pd.DataFrame, probes: ProbeSummary,
                        config: VRPConfig) -> dict[str, Calibration | Undefined]:
    """ECE and reliability diagram of each confidence signal (probes: on their held-out part).

    Token confidence is the probability of the greedy answer (exp of its mean log-probability);
    self-consistency the share of the K samples that agree with the greedy answer; the probes'
    P(correct) from the layer each selected.
    """
    correct = frame["correct"].to_numpy()
    groups = images(frame)
    kw = {"n_resamples": config.n_resamples, "seed": config.seed}
    out: dict[str, Calibration | Undefined] = {
        "token confidence": _try(calibration, np.exp(frame["confidence"].to_numpy(dtype=float)), correct,
                                 groups=groups, **kw),
        "self-consistency": _try(calibration, _greedy_agreement(frame, config.consistency.k), correct,
                                 groups=groups, **kw),
    }
    for name in ("logistic", "mlp"):
        res = getattr(probes, name)
        if isinstance(res, str):
            out[f"{name} probe"] = res
            continue
        test = res.selected.test_index
        out[f"{name} probe"] = _try(calibration, res.selected.test_prob, correct[test],
                                    groups=None if groups is None else groups[test], **kw)
    return out


@dataclass(frozen=True, kw_only=True)
class ConsistencySummary:
    """Self-consistency S_SC and token confidence against correctness.

    Attributes:
        k: The reported K.
        rpb: R_pb(S_SC at K, correct); ``auroc``: AUROC of S_SC for correctness.
        by_k: Per K swept: ``{"k", "rpb", "auroc"}``.
        confidence_rpb: R_pb(token confidence, correct); ``confidence_auroc`` its AUROC.
        mean_S_SC: Mean S_SC at K.
        verdict: :func:`sweep_verdict` over the K swept (a significant R_pb: Fisher CI
            excluding 0).
    """

    k: int
    rpb: Correlation | Undefined
    auroc: AUROC | Undefined
    by_k: tuple[dict[str, Any], ...]
    confidence_rpb: Correlation | Undefined
    confidence_auroc: AUROC | Undefined
    mean_S_SC: float
    verdict: str


def _verdict(c: Correlation | Undefined) -> int | None:
    """+1 / -1 for a significant positive / negative correlation, 0 for none, None if undefined."""
    if isinstance(c, str):
        return None
    return 0 if c.fisher_ci[0] <= 0 <= c.fisher_ci[1] else int(np.sign(c.r))


def consistency_summary(frame: pd.DataFrame, config: VRPConfig) -> ConsistencySummary:
    """S_SC at every K swept (first K of the stored samples), with R_pb and AUROC."""
    correct = frame["correct"].to_numpy()
    kw = {"n_resamples": config.n_resamples, "seed": config.seed, "groups": images(frame)}
    by_k = []
    for k in sorted(config.consistency.ks):
        share = _sc_share(frame, k)
        by_k.append({"k": k, "rpb": _try(point_biserial, correct, share, **kw),
                     "auroc": _try(auroc_ci, correct, share, **kw), "mean_S_SC": float(share.mean())})
    main = next(r for r in by_k if r["k"] == config.consistency.k)  # ConsistencyConfig puts k in ks
    conf = frame["confidence"].to_numpy(dtype=float)
    return ConsistencySummary(
        k=config.consistency.k, rpb=main["rpb"], auroc=main["auroc"], by_k=tuple(by_k),
        confidence_rpb=_try(point_biserial, correct, conf, **kw), confidence_auroc=_try(auroc_ci, correct, conf, **kw),
        mean_S_SC=main["mean_S_SC"],
        verdict=sweep_verdict([_verdict(r["rpb"]) for r in by_k]),
    )


@dataclass(frozen=True, kw_only=True)
class MaskingSummary:
    """Patch-masking accuracy drops (first-token answers) with exact McNemar tests.

    Attributes:
        fraction: The reported share.
        top: Masking the most-attended patches; ``bottom`` the least; ``random`` the first
            random patch set (one test against the clean run, whatever the number of draws).
        random_drop_pp: Mean accuracy drop over the ``random_draws`` random patch sets.
        random_draws: Random patch sets per question at the reported share.
        by_fraction: Per share swept: ``{"fraction", "top", "bottom", "random"}`` McNemar
            tests, ``random_drop_pp`` (mean over that share's draws) and ``claim`` (top
            masking hurts at p < 0.05 and more than the mean random drop).
        verdict: :func:`sweep_verdict` of the shares' claims.
        top_drop: Clean minus top-masked correctness (the drop) with its image-bootstrap CI;
            ``top_vs_random`` the random- (per question, the mean over draws) minus
            top-masked correctness (the excess drop over random) and ``top_vs_bottom``
            bottom- minus top-masked, each with an image sign-flip test
            (:func:`~vlmlens.vrp.stats.paired_difference`), at the reported share.
    """

    fraction: float
    top: McNemar
    bottom: McNemar
    random: McNemar
    random_drop_pp: float
    random_draws: int
    by_fraction: tuple[dict[str, Any], ...]
    verdict: str
    top_drop: PairedDifference | Undefined = "undefined: no images"
    top_vs_random: PairedDifference | Undefined = "undefined: no images"
    top_vs_bottom: PairedDifference | Undefined = "undefined: no images"


def masked_correct(frame: pd.DataFrame, kind: str, fraction: float, config: VRPConfig) -> np.ndarray:
    """Per question, first-token correctness under one mask; for random masks, the mean over draws."""
    return frame[mask_columns(kind, fraction, config.masking)].to_numpy(dtype=float).mean(axis=1)


def masking_summary(frame: pd.DataFrame, config: VRPConfig) -> MaskingSummary:
    """McNemar tests of clean vs masked first-token correctness, for every share swept."""
    first = frame["first_correct"].to_numpy()
    by_fraction = []
    for fraction in config.masking.fractions:
        row: dict[str, Any] = {"fraction": fraction}
        for kind in MASKS:
            row[kind] = mcnemar_exact(first, frame[mask_column(kind, fraction)].to_numpy())
        row["random_drop_pp"] = 100 * float(first.mean() - masked_correct(frame, "random", fraction, config).mean())
        row["claim"] = hurts_more_than_random(row["top"], row["random_drop_pp"])
        by_fraction.append(row)
    main = next(r for r in by_fraction if r["fraction"] == config.masking.fraction)
    groups = images(frame)
    paired: dict[str, Any] = {}
    if groups is not None:
        kw = {"n_resamples": config.n_resamples, "seed": config.seed}
        masked = {kind: masked_correct(frame, kind, config.masking.fraction, config) for kind in MASKS}
        paired = {"top_drop": _try(paired_difference, first.astype(float), masked["top"], groups, **kw),
                  "top_vs_random": _try(paired_difference, masked["random"], masked["top"], groups, **kw),
                  "top_vs_bottom": _try(paired_difference, masked["bottom"], masked["top"], groups, **kw)}
    return MaskingSummary(fraction=config.masking.fraction, top=main["top"], bottom=main["bottom"],
                          random=main["random"], random_drop_pp=main["random_drop_pp"],
                          random_draws=config.masking.random_draws, by_fraction=tuple(by_fraction),
                          verdict=sweep_verdict([r["claim"] for r in by_fraction]), **paired)


def examples(frame: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` attention maps for the report: alternately correct and wrong answers where possible."""
    picked: list[int] = []
    pools = [list(frame.index[frame["correct"] == 1]), list(frame.index[frame["correct"] == 0])]
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop(0))
    return [{
        "question_id": int(frame.at[i, "question_id"]), "image": str(frame.at[i, "image"]),
        "object_name": str(frame.at[i, "object_name"]), "label": str(frame.at[i, "label"]),
        "answer": str(frame.at[i, "answer"]), "correct": int(frame.at[i, "correct"]),
        "H_s_norm": float(frame.at[i, "H_s_norm"]), "C_k": int(frame.at[i, "C_k"]),
        "map": json.loads(frame.at[i, "attention_map"]),
    } for i in sorted(picked)]


def _p_values(results: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """Every p-value a model's results report, by family of tests (JSON-ready results in)."""
    def p_of(value: Any, key: str = "p_value") -> float | None:
        return value.get(key) if isinstance(value, dict) else None

    fam: dict[str, list[tuple[str, Any]]] = {"correlations": [], "probes": [], "masking": [], "ablation": [],
                                             "destruction": []}
    for name, c in results["attention"]["rpb"].items():
        if name != "H_s":  # H_s / log N: the same test wherever a family's grid is fixed
            fam["correlations"].append((f"R_pb({name})", p_of(c, "p")))
    for row in results["consistency"]["by_k"]:
        fam["correlations"].append((f"R_pb(S_SC, K={row['k']})", p_of(row["rpb"], "p")))
    fam["correlations"].append(("R_pb(token confidence)", p_of(results["consistency"]["confidence_rpb"], "p")))
    for kind in ("logistic", "mlp"):
        probe = results["probes"][kind]
        if isinstance(probe, dict):
            fam["probes"] += [(f"{kind} probe, selected layer", probe["selected"]["p_value"]),
                              (f"{kind} probe, concat", probe["concat"]["p_value"])]
    if isinstance(results["probes"]["baselines"], dict):
        fam["probes"] += [(f"baseline {name}", row["p_value"]) for name, row in results["probes"]["baselines"].items()]
    m = results["masking"]
    for row in m["by_fraction"]:
        fam["masking"] += [(f"{kind} {round(100 * row['fraction'])}% vs clean" + (" (draw 0)" if kind == "random" else ""),
                            row[kind]["p_value"]) for kind in ("top", "bottom", "random")]
    fam["masking"] += [(f"top vs {other} {round(100 * m['fraction'])}%", p_of(m.get(f"top_vs_{other}")))
                       for other in ("random", "bottom")]
    if isinstance(results.get("ablation"), dict):
        for point in ("mlp_out", "mlp_post"):
            a = results["ablation"][point]
            fam["ablation"] += [(f"{point} top-{row['k']} vs clean", row["top_p"]) for row in a["by_k"]]
            fam["ablation"].append((f"{point} top-{a['k']} vs random", p_of(a.get("top_vs_random"))))
    if isinstance(results.get("identification"), dict):  # its own family: an option must not move the others
        fam["identification"] = []
        for point in ("mlp_out", "mlp_post"):  # image-level tests: one answer per image scores its questions
            a = results["identification"][point]
            fam["identification"] += [(f"{point} top-{a['k']} vs clean", p_of(a.get("top_drop"))),
                                      (f"{point} top-{a['k']} vs random", p_of(a.get("top_vs_random")))]
    if isinstance(results.get("destruction"), dict):
        d = results["destruction"]
        fam["destruction"] += [(f"ranked {n} dims vs clean", p) for n, p in zip(d["counts"], d["ranked_p"])]
    return {name: [(t, p) for t, p in tests if p is not None] for name, tests in fam.items()}


def multiplicity(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Holm and Benjamini-Hochberg adjusted p-values within each family of a model's tests.

    Families: correlations (every R_pb), probes (permutation nulls of probes and baselines),
    masking, ablation, destruction, and identification when that readout ran (its image-level
    tests; a family of its own so that turning it on leaves the others' adjustments as they were). Each test is listed with its raw p, ``p_holm`` (family-
    wise error) and ``p_bh`` (false discovery rate).
    """
    out = {}
    for family, tests in _p_values(results).items():
        raw = [p for _, p in tests]
        holm, bh = adjust_p_values(raw, "holm"), adjust_p_values(raw, "bh")
        out[family] = [{"test": t, "p": p, "p_holm": float(h), "p_bh": float(b)}
                       for (t, p), h, b in zip(tests, holm, bh)]
    return out
