"""Statistics for the VLM Reliability Probe: correlations, AUROC, McNemar and their CIs.

Every result carries its ``n``. Inputs may be numpy arrays or torch tensors; the small
converters here (:func:`to_numpy`, :func:`as_finite`, :func:`as_binary`) are shared by the
other ``vlmlens.vrp`` modules.

The statistics live in three modules: :mod:`~vlmlens.vrp.stats.base` (converters, Fisher and
bootstrap CIs), :mod:`~vlmlens.vrp.stats.correlation` (point-biserial r, AUROC) and
:mod:`~vlmlens.vrp.stats.paired` (McNemar, clustered tests, paired differences, multiplicity);
every public name is importable from here.
"""

from vlmlens.vrp.stats.base import (
    ALPHA,
    ArrayOrTensor,
    as_binary,
    as_finite,
    bootstrap_ci,
    check_same_length,
    fisher_ci,
    to_numpy,
)
from vlmlens.vrp.stats.correlation import (
    AUROC,
    Correlation,
    auroc_ci,
    bootstrap_weights,
    point_biserial,
    point_biserial_r,
    rank_auroc,
    weighted_point_biserial_r,
)
from vlmlens.vrp.stats.paired import (
    McNemar,
    PairedDifference,
    adjust_p_values,
    cluster_bootstrap_ci,
    cluster_sign_flip_p,
    hurts_more_than_random,
    mcnemar_exact,
    paired_difference,
    sweep_verdict,
)

__all__ = [
    "ALPHA",
    "AUROC",
    "ArrayOrTensor",
    "Correlation",
    "McNemar",
    "PairedDifference",
    "adjust_p_values",
    "as_binary",
    "as_finite",
    "auroc_ci",
    "bootstrap_ci",
    "bootstrap_weights",
    "check_same_length",
    "cluster_bootstrap_ci",
    "cluster_sign_flip_p",
    "fisher_ci",
    "hurts_more_than_random",
    "mcnemar_exact",
    "paired_difference",
    "point_biserial",
    "point_biserial_r",
    "rank_auroc",
    "sweep_verdict",
    "to_numpy",
    "weighted_point_biserial_r",
]
