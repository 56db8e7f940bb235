"""Figures and the HTML report of a fusion comparison (:func:`vlmlens.circuits.fusion.compare`).

Examples:
    >>> figures = fusion_figures({"models": {}, "differences": {}})
    >>> sorted(figures)
    ['ablation', 'by_depth', 'depth', 'destruction']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

__all__ = ["fusion_figures", "fusion_report_html", "fusion_summary_markdown", "write_fusion_report"]


def _colour(i: int) -> str:
    return qualitative.Plotly[i % len(qualitative.Plotly)]


def fusion_figures(result: Mapping[str, Any]) -> dict[str, go.Figure]:
    """Depth profiles, ablation curves and destruction curves, one trace (pair) per model."""
    depth, ablation, destruction, by_depth = go.Figure(), go.Figure(), go.Figure(), go.Figure()
    for i, (name, row) in enumerate(result["models"].items()):
        colour = _colour(i)
        profile = row["concentration"]["depth_profile"]
        depth.add_trace(go.Scatter(x=[d for d, _ in profile], y=[m for _, m in profile], mode="lines+markers",
                                   name=name, line={"color": colour}))
        points = [p for p in row["ablation"] if p["layer"] is None]
        ks = [p["k"] for p in points]
        ablation.add_trace(go.Scatter(
            x=ks, y=[p["drop_pp"] for p in points], name=f"{name}: top k", mode="lines+markers",
            line={"color": colour},
            error_y={"type": "data", "symmetric": False, "array": [p["drop_ci"][1] - p["drop_pp"] for p in points],
                     "arrayminus": [p["drop_pp"] - p["drop_ci"][0] for p in points]}))
        ablation.add_trace(go.Scatter(
            x=ks, y=[100 * (p["accuracy_clean"] - p["accuracy_random"]) for p in points], name=f"{name}: random",
            mode="lines", line={"color": colour, "dash": "dot"}))
        layers = row.get("by_depth", [])
        by_depth.add_trace(go.Scatter(x=[r["depth"] for r in layers], y=[r["mean_drop_pp"] for r in layers],
                                      name=name, mode="lines+markers", line={"color": colour},
                                      customdata=[r["mean_excess"] for r in layers],
                                      hovertemplate="depth %{x:.2f}: %{y:.1f} pp, margin excess %{customdata:.2f}"))
        rows = row["destruction"]
        destruction.add_trace(go.Scatter(x=[r["fraction"] for r in rows], y=[r["accuracy_top"] for r in rows],
                                         name=f"{name}: ranked", mode="lines+markers", line={"color": colour}))
        destruction.add_trace(go.Scatter(x=[r["fraction"] for r in rows], y=[r["accuracy_random"] for r in rows],
                                         name=f"{name}: random", mode="lines", line={"color": colour, "dash": "dot"}))
    depth.update_layout(title="Where the units sit: share of |score| by normalised depth",
                        xaxis_title="layer / (n_layers - 1)", yaxis_title="share of |score|")
    ablation.update_layout(title="Held-out accuracy drop after ablating the top k (95% CI by image) vs matched random",
                           xaxis_title="k (units ablated)", yaxis_title="accuracy drop (pp)", xaxis_type="log")
    destruction.update_layout(title="Destroying a fraction of the peak layer: held-out accuracy",
                              xaxis_title="fraction of the layer's units", yaxis_title="accuracy")
    by_depth.update_layout(title="Ablating the top k within each layer: mean held-out accuracy drop over k",
                           xaxis_title="layer / (n_layers - 1)", yaxis_title="mean accuracy drop (pp)")
    return {"depth": depth, "ablation": ablation, "by_depth": by_depth, "destruction": destruction}


def _ci(values: Sequence[float] | None) -> str:
    return "-" if not values else f"[{values[0]:.3f}, {values[1]:.3f}]"


def fusion_summary_markdown(result: Mapping[str, Any]) -> str:
    """The per-model table and the pairwise differences, as markdown."""
    config = result.get("config", {})
    intro = (f"Units: {config.get('kind')} ranked by {config.get('method')} on {result.get('ranked_on', '')}; "
             f"ablations ({config.get('baseline')}) on {result.get('evaluated_on', '')}. CIs: 95%, images resampled.")
    header = ("| model | family | depth centroid | top-1% share | peak layer (depth) | k at -5 pp | concentrated "
              "| drop at largest destruction |")
    lines = ["# Fusion comparison", "", intro, "", header, "|---|---|---|---|---|---|---|---|"]
    for name, row in result["models"].items():
        con = row["concentration"]
        last = row["destruction"][-1] if row["destruction"] else None
        destroyed = "-" if last is None else (f"{last['drop_pp']:.1f} pp {_ci(last['drop_ci'])} at "
                                             f"{last['fraction']:.0%} (random {100 * (last['accuracy_clean'] - last['accuracy_random']):.1f} pp)")
        lines.append(f"| {name} | {row['family']} | {row['depth']:.3f} {_ci(row.get('depth_ci'))} | "
                     f"{row['top_share']:.3f} {_ci(row.get('top_share_ci'))} | {row['peak_layer']} "
                     f"({row['peak_depth']:.2f}) | {con['k_at_drop'] if con['k_at_drop'] is not None else 'none'} | "
                     f"{'yes' if con['concentrated'] else 'no'} | {destroyed} |")
    if any(row.get("by_depth") for row in result["models"].values()):
        intro = ("Top-k ablated within each layer (mean over k of the held-out accuracy drop; margin excess beyond "
                 "matched random units):")
        lines += ["", intro, "", "| model | by layer (normalised depth): drop pp / margin excess |", "|---|---|"]
        for name, row in result["models"].items():
            cells = ", ".join(f"L{d['layer']} ({d['depth']:.2f}): {d['mean_drop_pp']:.1f} / {d['mean_excess']:+.2f}"
                              for d in row.get("by_depth", []))
            lines.append(f"| {name} | {cells} |")
    if result.get("differences"):
        lines += ["", "| pair | depth difference | top-1% share difference |", "|---|---|---|"]
        for pair, d in result["differences"].items():
            lines.append(f"| {pair} | {d['depth']:+.3f} {_ci(d.get('depth_ci'))} | "
                         f"{d['top_share']:+.3f} {_ci(d.get('top_share_ci'))} |")
    lines += _arms_markdown(result)
    rules = {row["concentration"]["rule"] for row in result["models"].values()}
    lines += ["", *[f"Verdict rule: {r}." for r in sorted(rules)],
              "p-values are per k, not corrected across the k tried."]
    return "\n".join(lines) + "\n"


def _arms_markdown(result: Mapping[str, Any]) -> list[str]:
    """Arms over seeds (mean +- sd) and the seed-level interaction tests, where the comparison has them."""
    if not result.get("arms"):
        return []
    lines = ["", "Arms over training seeds (mean +- sd over seeds; each seed is a row above):", "",
             "| arm | seeds | statistic | mean +- sd |", "|---|---|---|---|"]
    for arm, row in result["arms"].items():
        for key, mean in row["mean"].items():
            lines.append(f"| {arm} | {len(row['replicates'])} | {key} | {mean:.3f} +- {row['sd'][key]:.3f} |")
    if result.get("interactions"):
        intro = (f"Arm differences with seeds as the unit of replication ({result['n_tests']} tests; "
                 f"{result['adjustment']}); for a drop, the model x intervention interaction:")
        lines += ["", intro, "",
                  "| arms | statistic | difference [95% Welch CI] | permutation p (smallest possible) | Holm p |",
                  "|---|---|---|---|---|"]
        for pair, tests in result["interactions"].items():
            for key, t in tests.items():
                lines.append(f"| {pair} | {key} | {t['difference']:+.3f} {_ci(t['ci'])} | {t['p']:.3f} "
                             f"({t['min_p']:.3f}) | {t['p_holm']:.3f} |")
    return lines


def fusion_report_html(result: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (plotly.js embedded once)."""
    from vlmlens.viz.report import page_html

    return page_html("Fusion comparison", fusion_summary_markdown(result), fusion_figures(result))


def write_fusion_report(path: Path | str, result: Mapping[str, Any]) -> Path:
    """Write :func:`fusion_report_html` to ``path`` and return it."""
    path = Path(path)
    path.write_text(fusion_report_html(result), encoding="utf-8")
    return path
