"""vlmlens.vrp: the VLM Reliability Probe's measurements and statistics.

Pure functions over arrays captured by the model-running code: attention-map sharpness
(H_s, C_k, dH_s), logit-lens margins, hidden-state probes, self-consistency and the
statistics (point-biserial, AUROC, McNemar, CIs) that every reported effect carries.

The model-running pipeline is imported lazily: ``vlmlens.vrp.run(model, dataset, config)``
runs every measurement and returns a :class:`VRPResult` (``.summary()``, ``.figures()``).
"""

import importlib
from typing import Any

from vlmlens.vrp.attention import (
    aggregate_attention,
    cluster_count,
    default_layers,
    entropy_evolution,
    object_attention_mass,
    spatial_entropy,
)
from vlmlens.vrp.consistency import consistency_score, normalize_answer, token_confidence
from vlmlens.vrp.margins import margin_gain, peak_visual_layer, truth_margin, yes_no_margin
from vlmlens.vrp.probes import (
    LayerProbeResults,
    ProbeConfig,
    ProbeResult,
    probe_layers,
    rank_dimensions_l1,
    train_probe,
)
from vlmlens.vrp.stats import (
    AUROC,
    Correlation,
    McNemar,
    auroc_ci,
    bootstrap_ci,
    fisher_ci,
    mcnemar_exact,
    point_biserial,
)

_LAZY = {
    "run": "vlmlens.vrp.runner",
    "run_ray": "vlmlens.vrp.runner",
    "RayConfig": "vlmlens.ray_pool",
    "VRPResult": "vlmlens.vrp.runner",
    "VRPConfig": "vlmlens.vrp.config",
    "MaskingConfig": "vlmlens.vrp.config",
    "ConsistencyConfig": "vlmlens.vrp.config",
    "AblationConfig": "vlmlens.vrp.config",
    "DestructionConfig": "vlmlens.vrp.config",
    "IdentifyConfig": "vlmlens.vrp.config",
    "decode_shared": "vlmlens.vrp.sampling",
    "rank_dimensions": "vlmlens.vrp.ablation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmlens.vrp' has no attribute {name!r}")


__all__ = [
    "AUROC",
    "AblationConfig",
    "ConsistencyConfig",
    "Correlation",
    "DestructionConfig",
    "IdentifyConfig",
    "LayerProbeResults",
    "MaskingConfig",
    "McNemar",
    "ProbeConfig",
    "ProbeResult",
    "RayConfig",
    "VRPConfig",
    "VRPResult",
    "aggregate_attention",
    "auroc_ci",
    "bootstrap_ci",
    "cluster_count",
    "consistency_score",
    "decode_shared",
    "default_layers",
    "entropy_evolution",
    "fisher_ci",
    "margin_gain",
    "mcnemar_exact",
    "normalize_answer",
    "object_attention_mass",
    "peak_visual_layer",
    "point_biserial",
    "probe_layers",
    "rank_dimensions",
    "rank_dimensions_l1",
    "run",
    "run_ray",
    "spatial_entropy",
    "token_confidence",
    "train_probe",
    "truth_margin",
    "yes_no_margin",
]
