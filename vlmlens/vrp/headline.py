"""``summary.md``: the paper's headline table with our value, CI and n beside the paper's.

Examples:
    >>> _pp_ci({"ci": [0.05, 0.2]})
    '[5.0, 20.0] pp (images)'
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PAPER", "summary_markdown"]

FAMILY_NAMES = {"llava": "LLaVA", "paligemma": "PaliGemma", "qwen2_vl": "Qwen2-VL"}

# The paper's headline values (VRP.md); per family where the paper gives one.
PAPER: dict[str, Any] = {
    "rpb_C_k": "0.001 [-0.034, 0.036], n=3090 (pooled)",
    "rpb_H_s": "-0.012 [-0.047, 0.024], n=3090 (pooled)",
    "mask_top": {"llava": "8.2 pp (p<0.001)", "paligemma": "11.3 pp (p<0.001)", None: "8.2-11.3 pp (p<0.001)"},
    "probe": {"llava": "0.956", "paligemma": "0.944", "qwen2_vl": "0.971", None: ">0.95 for two of three"},
    "sc_rpb": "0.43",
    "sc_auroc": {"llava": "0.78", "paligemma": "0.81", "qwen2_vl": "0.79", None: "0.78-0.81"},
    "neuron": "8.3 pp drop (reported as -8.3 pp; LLaVA)",
    "destruction": {"paligemma": "<= 1 pp (early fusion)", "qwen2_vl": "<= 1 pp (early fusion)",
                    None: "<= 1 pp for early fusion; collapse for late"},
    "peak_visual_layer": {"llava": "L31 of 32", "paligemma": "L14 of 18", "qwen2_vl": "L27 of 28", None: "-"},
    "best_probe_layer": {"llava": "L21 of 32", "paligemma": "L10 of 18", "qwen2_vl": "L18 of 28", None: "-"},
}


def _paper(key: str, family: str | None) -> str:
    value = PAPER[key]
    if isinstance(value, dict):
        return value.get(family, value[None])
    return value


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(lo: Any, hi: Any, digits: int = 3) -> str:
    return f"[{_num(lo, digits)}, {_num(hi, digits)}]"


def _corr(c: Any) -> tuple[str, str, str]:
    if isinstance(c, str) or c is None:
        return (str(c or "-").replace("|", "/"), "-", "-")
    boot = "image" if c.get("clustered") else "question"
    return _num(c["r"]), f"{_ci(*c['fisher_ci'])} Fisher; {_ci(*c['bootstrap_ci'])} {boot} bootstrap", str(c["n"])


def _pooled_row(p: Any) -> tuple[str, str, str]:
    """A meta-analytic R_pb: fixed effect, its independence CI, random effects, heterogeneity; CI by images."""
    if isinstance(p, str):
        return p.replace("|", "/"), "-", "-"
    ours = (f"{p['r']:.3f} (fixed effect over {len(p['by_family'])} models, CI if independent "
            f"{_ci(*p['fixed_ci'])}; random effects {p['random_r']:.3f}; I^2 {p['i2']:.2f}, Q p={p['q_p']:.3g})")
    return ours, _ci(*p["bootstrap_ci"]), f"{p['n']} ({p['n_images']} images)"


def _auroc(a: Any) -> tuple[str, str, str]:
    if isinstance(a, str) or a is None:
        return (str(a or "-").replace("|", "/"), "-", "-")
    return _num(a["auroc"]), _ci(*a["ci"]), str(a["n"])


def _pp_ci(paired: Any) -> str:
    """The image-bootstrap CI of a paired difference, in percentage points."""
    if not isinstance(paired, dict):
        return "-"
    lo, hi = paired["ci"]
    return f"[{100 * lo:.1f}, {100 * hi:.1f}] pp (images)"


def _vs(paired: Any, what: str) -> str:
    """``; excess over random 3.1 pp (image sign-flip p=0.02)`` for a paired comparison."""
    if not isinstance(paired, dict):
        return ""
    return f"; {what} {100 * paired['mean']:.1f} pp (image sign-flip p={paired['p_value']:.3g})"


def _drop(test: dict[str, Any], extra: str = "", paired: Any = None) -> tuple[str, str, str]:
    lo, hi = test["drop_ci_pp"]
    return (f"{test['drop_pp']:.1f} pp (McNemar p={test['p_value']:.3g}){extra}",
            f"[{lo:.1f}, {hi:.1f}] pp exact; {_pp_ci(paired)}", str(test["n"]))


def _null(row: dict[str, Any]) -> str:
    """`` (permutation p=..., null mean ...)`` for a probe row that has a null."""
    if row.get("p_value") is None:
        return ""
    return f" (permutation p={row['p_value']:.3g} of {row['n_permutations']}, null mean {row['null_mean']:.3f})"


def _layer(layer: int | None, n_layers: int) -> str:
    if layer is None:
        return "undefined"
    depth = layer / max(n_layers - 1, 1)
    return f"L{layer} of {n_layers} (depth {depth:.2f})"


def _rows(name: str, r: dict[str, Any]) -> list[tuple[str, ...]]:
    fam = r.get("family")
    rows = [("POPE accuracy (yes-ratio)", name, f"{r['pope']['accuracy']:.3f} ({r['pope']['yes_ratio']:.3f})", "-",
             str(r["n"]), "-")]
    rows.append(("R_pb(C_k, correct)", name, *_corr(r["attention"]["rpb"]["C_k"]), _paper("rpb_C_k", fam)))
    rows.append(("R_pb(H_s, correct)", name, *_corr(r["attention"]["rpb"]["H_s"]), _paper("rpb_H_s", fam)))
    m = r["masking"]
    pct = round(100 * m["fraction"])
    extra = (f"; bottom {m['bottom']['drop_pp']:.1f}, random {m['random_drop_pp']:.1f} (mean of "
             f"{m['random_draws']} draws)"
             + _vs(m.get("top_vs_random"), "excess over random") + _vs(m.get("top_vs_bottom"), "excess over bottom"))
    rows.append((f"top-{pct}% attended patch masking, accuracy drop", name, *_drop(m["top"], extra, m.get("top_drop")),
                 _paper("mask_top", fam)))
    for kind, label in (("logistic", "linear"), ("mlp", "MLP")):
        p = r["probes"][kind]
        if isinstance(p, str):
            rows.append((f"hidden-state {label} probe AUROC", name, p, "-", "-", _paper("probe", fam)))
            continue
        sel = p["selected"]
        rows.append((f"hidden-state {label} probe AUROC, layer chosen by CV on the training part", name,
                     f"{_num(sel['auroc'])} at L{p['best_layer']}{_null(sel)}", _ci(sel["auroc_lo"], sel["auroc_hi"]),
                     str(sel["n_test"]), _paper("probe", fam) if kind == "logistic" else "-"))
        c = p["concat"]
        rows.append((f"{label} probe AUROC, last-{len(c['layers'])} concat", name, _num(c["auroc"]) + _null(c),
                     _ci(c["auroc_lo"], c["auroc_hi"]), str(c["n_test"]), "-"))
    baselines = r["probes"].get("baselines", {})
    if isinstance(baselines, str):
        rows.append(("baseline AUROC (same split)", name, baselines.replace("|", "/"), "-", "-", "-"))
    else:
        for signal, b in baselines.items():
            rows.append((f"baseline AUROC: {signal} (same split)", name, _num(b["auroc"]) + _null(b),
                         _ci(b["auroc_lo"], b["auroc_hi"]), str(b["n_test"]), "-"))
    for signal, cal in r.get("calibration", {}).items():
        if isinstance(cal, str):
            rows.append((f"ECE of {signal}", name, cal.replace("|", "/"), "-", "-", "-"))
            continue
        ours = f"{cal['ece']:.3f} (mean confidence {cal['mean_confidence']:.3f}, accuracy {cal['accuracy']:.3f})"
        rows.append((f"ECE of {signal}", name, ours, _ci(*cal["ci"]), str(cal["n"]), "-"))
    sc = r["consistency"]
    rows.append((f"self-consistency K={sc['k']}, R_pb with correctness", name, *_corr(sc["rpb"]), _paper("sc_rpb", fam)))
    rows.append((f"self-consistency K={sc['k']}, AUROC", name, *_auroc(sc["auroc"]), _paper("sc_auroc", fam)))
    rows.append(("token confidence, R_pb with correctness", name, *_corr(sc["confidence_rpb"]), "-"))
    rows += _intervention_rows(name, r)
    peak = r["margins"]["peak_visual_layer"]
    rows.append(("peak visual layer (margin gain vs blank)", name, _layer(peak, r["n_layers"]), "-", str(r["n"]),
                 _paper("peak_visual_layer", fam)))
    best = None if isinstance(r["probes"]["logistic"], str) else r["probes"]["logistic"]["best_layer"]
    rows.append(("best probe layer", name, _layer(best, r["n_layers"]), "-", str(r["n"]),
                 _paper("best_probe_layer", fam)))
    return rows


def _intervention_rows(name: str, r: dict[str, Any]) -> list[tuple[str, ...]]:
    fam = r.get("family")
    ab, de = r["ablation"], r["destruction"]
    if isinstance(ab, str):
        return [("probe-neuron ablation / dimension destruction", name, ab, "-", "-", _paper("neuron", fam))]
    rows = []
    ident = r.get("identification")
    paper_row = "identification" if isinstance(ident, dict) else "mlp_out"  # the paper's -8.3 pp is identification
    for point, label in (("mlp_out", "MLP-output dims"), ("mlp_post", "MLP neurons")):
        a = ab[point]
        extra = (f" vs random {a['random_drop_pp']:.1f} ({len(a['random'])} draws)"
                 + (_vs(a.get("top_vs_random"), "excess") or f"; excess {a['excess_drop_pp']:.1f}"))
        rows.append((f"top-{a['k']} probe-ranked {label} ablation (L{ab['layer']}), accuracy drop", name,
                     *_drop(a["top"], extra, a.get("top_drop")), _paper("neuron", fam) if point == paper_row else "-"))
    if isinstance(ident, dict):  # one answer per image scores its questions: image-level tests only
        a = ident["mlp_out"]
        drop = a.get("top_drop")
        title = (f"top-{a['k']} probe-ranked MLP-output dims ablation (L{ident['layer']}), object-identification "
                 "accuracy drop")
        if isinstance(drop, dict):
            ours = (f"{100 * drop['mean']:.1f} pp (image sign-flip p={drop['p_value']:.3g}) vs random "
                    f"{a['random_drop_pp']:.1f} ({len(a['random'])} draws){_vs(a.get('top_vs_random'), 'excess')}; "
                    f"clean identification accuracy {ident['clean_accuracy']:.3f}")
            rows.append((title, name, ours, _pp_ci(drop), f"{drop['n']} ({drop['n_clusters']} images)",
                         _paper("neuron", fam)))
        else:
            rows.append((title, name, str(drop), "-", "-", _paper("neuron", fam)))
    ranked, random = de["drop_at_half_pp"]["ranked"], de["drop_at_half_pp"]["random"]
    half = min(range(len(de["counts"])), key=lambda i: abs(de["counts"][i] / de["width"] - 0.5))
    ci = (f"ranked {_pp_ci({'ci': de['ranked_drop_ci'][half]})}; random {_pp_ci({'ci': de['random_drop_ci'][half]})}"
          if de.get("ranked_drop_ci") else "-")
    rows.append((f"~50% of L{de['layer']} dims destroyed ({de['mode']}), accuracy drop", name,
                 f"{ranked:.1f} pp ranked, {random:.1f} pp random", ci, str(r["n"]), _paper("destruction", fam)))
    return rows


def _sensitivity_rows(name: str, r: dict[str, Any]) -> list[tuple[str, ...]]:
    def fmt(values: list[str]) -> str:
        return "; ".join(values)

    m = r["masking"]
    hurts = [f"{round(100 * row['fraction'])}%: {_yes(row['claim'])}" for row in m["by_fraction"]]
    rows = [("mask share", name, fmt([f"{round(100 * row['fraction'])}%: top {row['top']['drop_pp']:.1f} / "
                                      f"random {row['random_drop_pp']:.1f} pp" for row in m["by_fraction"]]),
             f"top patches hurt significantly (p<0.05) and more than random? {', '.join(hurts)}"
             + _holds(m["verdict"]))]
    att = r["attention"]
    for measure in ("C_k", "H_s_norm"):
        settings = [row for row in att.get("sweep", ()) if row["measure"] == measure]
        if settings:
            rows.append((f"{measure}: M's layers and DBSCAN settings", name,
                         fmt([f"{row['setting']}: R_pb {_corr(row['rpb'])[0]}" for row in settings]),
                         f"significance and sign of R_pb (reported: {att['layers']} layers)"
                         + _holds(att["verdicts"][measure])))
    sc = r["consistency"]
    rows.append(("self-consistency K", name, fmt([f"K={row['k']}: R_pb {_corr(row['rpb'])[0]}"
                                                 for row in sc["by_k"]]),
                 "significance and sign of R_pb" + _holds(sc["verdict"])))
    if not isinstance(r["ablation"], str):
        for point in ("mlp_out", "mlp_post"):
            a = r["ablation"][point]
            if len(a["by_k"]) < 2:
                continue
            hurts = [f"k={row['k']}: {_yes(row['claim'])}" for row in a["by_k"]]
            rows.append((f"ablated k ({point})", name,
                         fmt([f"k={row['k']}: {row['top_drop_pp']:.1f} vs {row['random_drop_pp']:.1f} pp"
                              for row in a["by_k"]]),
                         f"top-k hurts significantly (p<0.05) and more than random? {', '.join(hurts)}"
                         + _holds(a["verdict"])))
    return rows


def _holds(verdict: str) -> str:
    return f" — {verdict}"


def _yes(verdict: bool) -> str:
    return "yes" if verdict else "no"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def summary_markdown(results: dict[str, Any], pooled: dict[str, Any] | None = None) -> str:
    """The headline table and the sensitivity table as markdown.

    Args:
        results: ``{"config": ..., "models": {name: per-model results}}`` (``results.json``).
        pooled: Optional pooled R_pb over the models, ``{"C_k": ..., "H_s_norm": ...}``
            (:func:`vlmlens.vrp.pooling.pool_correlations` results, JSON-ready).
    """
    models = results["models"]
    rows: list[tuple[str, ...]] = []
    for name, r in models.items():
        rows += _rows(name, r)
    for key, paper in (("C_k", "rpb_C_k"), ("H_s_norm", "rpb_H_s")):
        if pooled and key in pooled:
            rows.append((f"R_pb({key}, correct)", "pooled over models", *_pooled_row(pooled[key]), _paper(paper, None)))
    rows.sort(key=_order)  # stable: models stay in order within a measurement
    sens = [row for name, r in models.items() for row in _sensitivity_rows(name, r)]
    mult = [(name, family, f"{len(tests)}", f"{sum(t['p'] < 0.05 for t in tests)}",
             f"{sum(t['p_holm'] < 0.05 for t in tests)}", f"{sum(t['p_bh'] < 0.05 for t in tests)}",
             "; ".join(f"{t['test']} {t['p_holm']:.3g}" for t in tests if t["p"] < 0.05) or "-")
            for name, r in models.items() for family, tests in r.get("multiplicity", {}).items() if tests]
    config = json.dumps(results.get("config", {}), sort_keys=True, default=str)
    lines = ["# VRP summary", "", _INTRO, "",
             *_table(("measurement", "model", "ours", "95% CI", "n", "paper"), rows), "",
             "## Sensitivity: do the conclusions hold?", "",
             *_table(("sweep", "model", "values", "conclusion"), sens), "",
             "## Multiplicity", "", _MULTIPLICITY, "",
             *_table(("model", "family of tests", "tests", "p < 0.05", "Holm p < 0.05", "BH q < 0.05",
                      "raw p < 0.05: Holm-adjusted p"), mult), "",
             "<details><summary>config</summary>", "", f"`{config}`", "", "</details>"]
    return "\n".join(lines) + "\n"


_INTRO = ("Our value, its 95% CI and n beside the paper's (VRP.md, Headline numbers). Probe AUROC n is the "
          "held-out split, grouped by image; the probe layer is chosen by cross-validation on the training part "
          "only, and each probe is read against its label-permutation null and the free baselines on the same "
          "split. CIs of R_pb (bootstrap), AUROC and ECE resample images. Drops are first-token accuracy, clean "
          "minus intervened. Pooled rows keep each model's own R_pb and pool them on Fisher's z scale; their CI "
          "resamples images jointly in every model.")

_MULTIPLICITY = ("Every p-value a model reports, by family of tests (correlations, probes, masking, ablation, "
                 "destruction; identification, image-level tests, when that readout ran), adjusted within its family: Holm for the family-wise error, Benjamini-Hochberg "
                 "for the false discovery rate (results.json: `multiplicity`). The headline table prints raw p.")

_ORDER = ("POPE", "R_pb(C_k", "R_pb(H_s", "attended patch masking", "linear probe", "MLP probe", "baseline AUROC", "self-consistency",
          "token confidence", "ECE", "MLP-output dims ablation", "MLP neurons ablation", "probe-neuron ablation",
          "dims destroyed", "peak visual", "best probe")


def _order(row: tuple[str, ...]) -> int:
    """Rows in the paper's order: the index of the key found earliest in the measurement's name."""
    found = [(row[0].find(key), i) for i, key in enumerate(_ORDER) if key in row[0]]
    return min(found)[1] if found else len(_ORDER)
