"""Plotly figures of a VRP run, built from ``results.json``-shaped dicts.

Every function takes ``results = {"models": {name: per-model results}}`` (what
``vlmlens reproduce`` writes and :class:`vlmlens.vrp.VRPResult` holds) and returns a
``plotly.graph_objects.Figure``. Layers are drawn on a normalised depth axis
(layer / (n_layers - 1)) so families of different depth compare.

Examples:
    >>> figs = vrp_figures({"models": {}})
    >>> sorted(figs)[:3]
    ['ablation', 'attention_examples', 'calibration']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = [
    "ablation_figure",
    "attention_examples_figure",
    "auroc_by_layer_figure",
    "calibration_figure",
    "consistency_figure",
    "destruction_figure",
    "entropy_figure",
    "margin_figure",
    "masking_figure",
    "pooled_figure",
    "rpb_figure",
    "vrp_figures",
]

RPB_MEASURES = {"C_k": ("attention", "C_k"), "H_s": ("attention", "H_s"), "H_s_norm": ("attention", "H_s_norm"),
                "object mass": ("attention", "object_mass"), "S_SC": ("consistency", None),
                "token confidence": ("consistency", "confidence")}


def _colour(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def _depth(n: int) -> list[float]:
    return [i / max(n - 1, 1) for i in range(n)]


def _models(results: Mapping[str, Any]) -> list[tuple[int, str, dict[str, Any]]]:
    return [(i, name, r) for i, (name, r) in enumerate(results.get("models", {}).items())]


def _empty(fig: go.Figure, why: str) -> go.Figure:
    fig.add_annotation(text=why, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _corr_of(r: dict[str, Any], section: str, key: str | None) -> Any:
    if section == "attention":
        return r["attention"]["rpb"].get(key)
    return r["consistency"]["rpb"] if key is None else r["consistency"]["confidence_rpb"]


def rpb_figure(results: Mapping[str, Any]) -> go.Figure:
    """R_pb of each measure with correctness, per model, with Fisher 95% CIs."""
    fig = go.Figure()
    for i, name, r in _models(results):
        xs, ys, lo, hi = [], [], [], []
        for label, (section, key) in RPB_MEASURES.items():
            c = _corr_of(r, section, key)
            if isinstance(c, dict):
                xs.append(label)
                ys.append(c["r"])
                lo.append(c["r"] - c["fisher_ci"][0])
                hi.append(c["fisher_ci"][1] - c["r"])
        fig.add_trace(go.Bar(name=name, x=xs, y=ys, marker_color=_colour(i),
                             error_y={"type": "data", "array": hi, "arrayminus": lo}))
    fig.update_layout(title="Point-biserial correlation with answer correctness (95% Fisher CI)",
                      yaxis_title="R_pb", barmode="group")
    return fig


def pooled_figure(results: Mapping[str, Any]) -> go.Figure:
    """Forest plot of the pooled R_pb (``results["pooled"]``): each model's R_pb with its image
    bootstrap CI, then the fixed-effect estimate (joint image bootstrap CI) and the random-effects
    one (its DerSimonian-Laird CI), one panel per pooled measurement."""
    pooled = {k: v for k, v in results.get("pooled", {}).items() if isinstance(v, dict)}
    if not pooled:
        return _empty(go.Figure(), "no pooled rows (fewer than two models, or R_pb undefined)")
    fig = make_subplots(rows=1, cols=len(pooled), subplot_titles=[f"R_pb({k}, correct)" for k in pooled],
                        shared_yaxes=True)
    for col, (measure, pool) in enumerate(pooled.items(), start=1):
        labels, r, lo, hi, colours = [], [], [], [], []
        for i, name, res in _models(results):
            c = res["attention"]["rpb"].get(measure)
            if isinstance(c, dict) and name in pool["by_family"]:
                labels.append(name)
                r.append(c["r"])
                lo.append(c["bootstrap_ci"][0])
                hi.append(c["bootstrap_ci"][1])
                colours.append(_colour(i))
        labels += ["pooled, fixed effect", "pooled, random effects"]
        r += [pool["r"], pool["random_r"]]
        lo += [pool["bootstrap_ci"][0], pool["random_ci"][0]]
        hi += [pool["bootstrap_ci"][1], pool["random_ci"][1]]
        colours += ["black", "grey"]
        fig.add_trace(go.Scatter(
            x=r, y=labels, mode="markers", marker={"color": colours, "size": 9, "symbol": "diamond"},
            error_x={"type": "data", "array": np.subtract(hi, r), "arrayminus": np.subtract(r, lo)},
            showlegend=False, hovertext=[f"I² {pool['i2']:.2f}, Q p {pool['q_p']:.3f}"] * len(r)), row=1, col=col)
        fig.add_vline(x=0, line={"color": "grey", "width": 1}, row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Pooled R_pb over models (95% CIs: models' image bootstrap; pooled fixed effect: joint "
                            "image bootstrap; random effects: DerSimonian-Laird)")
    return fig


def auroc_by_layer_figure(results: Mapping[str, Any]) -> go.Figure:
    """Held-out probe AUROC per layer (logistic solid, MLP dashed), the logistic CV AUROC that
    selects the layer (dotted, training part only) and the selected layer (a star)."""
    fig = go.Figure()
    for i, name, r in _models(results):
        for kind, dash in (("logistic", "solid"), ("mlp", "dash")):
            p = r["probes"].get(kind)
            if not isinstance(p, dict):
                continue
            rows = p["by_layer"]
            x = _depth(len(rows))
            fig.add_trace(go.Scatter(
                x=x, y=[row["auroc"] for row in rows], name=f"{name} {kind}", mode="lines+markers",
                line={"color": _colour(i), "dash": dash},
                error_y={"type": "data", "array": [row["auroc_hi"] - row["auroc"] for row in rows],
                         "arrayminus": [row["auroc"] - row["auroc_lo"] for row in rows], "thickness": 1}))
            if kind == "logistic":
                fig.add_trace(go.Scatter(x=x, y=[row["cv_auroc"] for row in rows], name=f"{name} CV (selects)",
                                         mode="lines", line={"color": _colour(i), "dash": "dot", "width": 1}))
                fig.add_trace(go.Scatter(x=[x[p["best_layer"]]], y=[p["selected"]["auroc"]], mode="markers",
                                         name=f"{name} selected L{p['best_layer']}",
                                         marker={"color": _colour(i), "symbol": "star", "size": 12}))
    fig.add_hline(y=0.5, line={"color": "grey", "width": 1})
    fig.update_layout(title="Hidden-state probe AUROC by layer (held-out, 95% bootstrap CI)",
                      xaxis_title="normalised depth (layer / (L - 1))", yaxis_title="AUROC", yaxis_range=[0, 1])
    return fig


def calibration_figure(results: Mapping[str, Any]) -> go.Figure:
    """Reliability diagrams: share correct against mean stated confidence per bin, one panel per signal."""
    signals = list(dict.fromkeys(k for _, _, r in _models(results) for k in r.get("calibration", {})))
    fig = make_subplots(rows=1, cols=max(1, len(signals)), subplot_titles=signals or ("no calibration",))
    for col, signal in enumerate(signals, start=1):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", showlegend=False,
                                 line={"color": "grey", "width": 1, "dash": "dot"}), row=1, col=col)
        for i, name, r in _models(results):
            cal = r.get("calibration", {}).get(signal)
            if not isinstance(cal, dict):
                continue
            bins = cal["bins"]
            fig.add_trace(go.Scatter(
                x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                name=f"{name} (ECE {cal['ece']:.3f})", legendgroup=name, line={"color": _colour(i)},
                marker={"size": [6 + 14 * (b["n"] / cal["n"]) ** 0.5 for b in bins]},
                text=[f"n={b['n']}" for b in bins]), row=1, col=col)
    fig.update_layout(title="Calibration: share correct vs stated confidence (marker size ~ bin size)")
    fig.update_xaxes(title_text="confidence", range=[0, 1])
    fig.update_yaxes(title_text="share correct", range=[0, 1])
    return fig


def margin_figure(results: Mapping[str, Any]) -> go.Figure:
    """Mean logit-lens truth margin by layer, real image (solid) vs blank grey image (dashed)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("truth margin", "gain over blank image"))
    for i, name, r in _models(results):
        m = r["margins"]
        x = _depth(len(m["truth"]))
        fig.add_trace(go.Scatter(x=x, y=m["truth"], name=f"{name} real", line={"color": _colour(i)}), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=m["truth_blank"], name=f"{name} blank",
                                 line={"color": _colour(i), "dash": "dash"}), 1, 1)
        fig.add_trace(go.Scatter(x=x, y=m["gain"], name=f"{name} gain (peak L{m['peak_visual_layer']})",
                                 line={"color": _colour(i)}, mode="lines+markers"), 1, 2)
    fig.update_xaxes(title_text="normalised depth")
    fig.update_layout(title="Logit-lens margin formation")
    return fig


def entropy_figure(results: Mapping[str, Any]) -> go.Figure:
    """Mean spatial entropy H_s of each layer's map (its slope is dH_s)."""
    fig = go.Figure()
    for i, name, r in _models(results):
        h = r["attention"]["H_s_by_layer"]
        fig.add_trace(go.Scatter(x=_depth(len(h)), y=h, name=name, mode="lines+markers",
                                 line={"color": _colour(i)}))
    fig.update_layout(title="Attention evolution: mean H_s by layer", xaxis_title="normalised depth",
                      yaxis_title="H_s (nats)")
    return fig


def masking_figure(results: Mapping[str, Any]) -> go.Figure:
    """Accuracy drop after greying out top / bottom / random patches, at every share swept."""
    fig = go.Figure()
    for i, name, r in _models(results):
        rows = r["masking"]["by_fraction"]
        drops = {"top": [row["top"]["drop_pp"] for row in rows], "bottom": [row["bottom"]["drop_pp"] for row in rows],
                 "random": [row["random_drop_pp"] for row in rows]}
        for kind, dash in (("top", "solid"), ("bottom", "dot"), ("random", "dash")):
            fig.add_trace(go.Scatter(x=[100 * row["fraction"] for row in rows],
                                     y=drops[kind], name=f"{name} {kind}",
                                     mode="lines+markers", line={"color": _colour(i), "dash": dash}))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(title="Causal patch masking (ranked by last-layer attention)",
                      xaxis_title="patches greyed out (%)", yaxis_title="accuracy drop (pp)")
    return fig


def ablation_figure(results: Mapping[str, Any]) -> go.Figure:
    """Accuracy drop of top-k probe-ranked vs k random dimensions, for every k swept."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("MLP-output dims", "MLP neurons"))
    for i, name, r in _models(results):
        ab = r.get("ablation")
        if not isinstance(ab, dict):
            continue
        for col, point in ((1, "mlp_out"), (2, "mlp_post")):
            rows = ab[point]["by_k"]
            ks = [row["k"] for row in rows]
            fig.add_trace(go.Scatter(x=ks, y=[row["top_drop_pp"] for row in rows], name=f"{name} top-k",
                                     line={"color": _colour(i)}, mode="lines+markers",
                                     showlegend=col == 1), 1, col)
            fig.add_trace(go.Scatter(x=ks, y=[row["random_drop_pp"] for row in rows], name=f"{name} random",
                                     line={"color": _colour(i), "dash": "dash"}, mode="lines+markers",
                                     showlegend=col == 1), 1, col)
    fig.update_xaxes(title_text="k dimensions ablated")
    fig.update_yaxes(title_text="accuracy drop (pp)", col=1)
    fig.update_layout(title="Reliability-neuron ablation (zeroed at all positions)")
    return fig if fig.data else _empty(fig, "no ablation results (interventions skipped or undefined)")


def destruction_figure(results: Mapping[str, Any]) -> go.Figure:
    """Accuracy against the share of one layer's dimensions destroyed, ranked vs random."""
    fig = go.Figure()
    for i, name, r in _models(results):
        de = r.get("destruction")
        if not isinstance(de, dict):
            continue
        x = [100 * f for f in de["fractions"]]
        fig.add_trace(go.Scatter(x=x, y=de["ranked_accuracy"], name=f"{name} probe-ranked (L{de['layer']})",
                                 line={"color": _colour(i)}, mode="lines+markers"))
        fig.add_trace(go.Scatter(x=x, y=de["random_accuracy"], name=f"{name} random",
                                 line={"color": _colour(i), "dash": "dash"}, mode="lines+markers"))
        fig.add_hline(y=de["baseline_accuracy"], line={"color": _colour(i), "width": 1, "dash": "dot"})
    fig.update_layout(title="Dimension destruction at the peak (best probe) layer", xaxis_title="dimensions destroyed (%)",
                      yaxis_title="first-token accuracy", xaxis_type="log")
    return fig if fig.data else _empty(fig, "no destruction results (interventions skipped or undefined)")


def consistency_figure(results: Mapping[str, Any]) -> go.Figure:
    """R_pb of self-consistency S_SC with correctness against K (Fisher 95% CI)."""
    fig = go.Figure()
    for i, name, r in _models(results):
        rows = [row for row in r["consistency"]["by_k"] if isinstance(row["rpb"], dict)]
        fig.add_trace(go.Scatter(
            x=[row["k"] for row in rows], y=[row["rpb"]["r"] for row in rows], name=name, mode="lines+markers",
            line={"color": _colour(i)},
            error_y={"type": "data", "array": [row["rpb"]["fisher_ci"][1] - row["rpb"]["r"] for row in rows],
                     "arrayminus": [row["rpb"]["r"] - row["rpb"]["fisher_ci"][0] for row in rows]}))
    fig.add_hline(y=0, line={"color": "grey", "width": 1})
    fig.update_layout(title="Self-consistency: R_pb(S_SC, correct) by K", xaxis_title="K samples",
                      yaxis_title="R_pb")
    return fig


def attention_examples_figure(results: Mapping[str, Any], datasets: Mapping[str, Any] | None = None) -> go.Figure:
    """Example aggregated attention maps M, over their images where the dataset is given."""
    models = [(name, r.get("examples", [])) for _, name, r in _models(results)]
    cols = max([len(ex) for _, ex in models] + [1])
    rows = max(len(models), 1)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=_pad_titles(models, cols))
    for row, (name, ex) in enumerate(models, start=1):
        dataset = (datasets or {}).get(name)
        for col, e in enumerate(ex, start=1):
            grid = np.array(e["map"])
            if dataset is not None:
                image = np.asarray(dataset.image(e["image"]).convert("RGB"))
                h, w = image.shape[:2]
                fig.add_trace(go.Image(z=image), row, col)
                fig.add_trace(go.Heatmap(z=grid, x0=w / grid.shape[1] / 2, dx=w / grid.shape[1],
                                         y0=h / grid.shape[0] / 2, dy=h / grid.shape[0], opacity=0.55,
                                         colorscale="Inferno", showscale=False), row, col)
            else:
                fig.add_trace(go.Heatmap(z=grid, colorscale="Inferno", showscale=False), row, col)
                fig.update_yaxes(autorange="reversed", row=row, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title="Aggregated attention map M of the last prompt position", height=260 * rows + 80)
    return fig if fig.data else _empty(fig, "no example maps")


def _pad_titles(models: list[tuple[str, list[dict[str, Any]]]], cols: int) -> list[str]:
    out = []
    for name, ex in models:
        row = [f"{name}: {e['object_name'] or '?'} ({e['label']}) -> {e['answer']}" for e in ex]
        out += row + [""] * (cols - len(row))
    return out


def vrp_figures(results: Mapping[str, Any], datasets: Mapping[str, Any] | None = None) -> dict[str, go.Figure]:
    """Every VRP figure, by name (the report's order)."""
    return {
        "rpb": rpb_figure(results),
        "pooled": pooled_figure(results),
        "probe_auroc": auroc_by_layer_figure(results),
        "calibration": calibration_figure(results),
        "margins": margin_figure(results),
        "entropy": entropy_figure(results),
        "masking": masking_figure(results),
        "consistency": consistency_figure(results),
        "ablation": ablation_figure(results),
        "destruction": destruction_figure(results),
        "attention_examples": attention_examples_figure(results, datasets),
    }
