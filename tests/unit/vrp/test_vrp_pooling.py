"""Pooling R_pb across families: the meta-analysis against statsmodels, the joint image bootstrap."""

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.meta_analysis import combine_effects

from vlmlens.errors import DataError
from vlmlens.vrp.pooling import pool_correlations


def _family(rng: np.random.Generator, slope: float, shift: float, n_images: int = 50) -> pd.DataFrame:
    correct = rng.random(6 * n_images) > 0.3
    return pd.DataFrame({"correct": correct.astype(int), "x": slope * correct + rng.normal(size=6 * n_images) + shift,
                         "image": np.repeat([f"img{i}" for i in range(n_images)], 6)})


def test_fixed_and_random_effects_equal_statsmodels() -> None:
    rng = np.random.default_rng(0)
    frames = {"a": _family(rng, 0.2, 0.0), "b": _family(rng, 0.6, 3.0), "c": _family(rng, 0.0, 1.0)}
    pooled = pool_correlations(frames, "x", n_resamples=200)
    r = np.array([v["r"] for v in pooled.by_family.values()])
    n = np.array([v["n"] for v in pooled.by_family.values()])
    for name, frame in frames.items():
        assert pooled.by_family[name]["r"] == pytest.approx(np.corrcoef(frame["correct"], frame["x"])[0, 1], abs=1e-12)
    summary = combine_effects(np.arctanh(r), 1.0 / (n - 3), method_re="dl").summary_frame()
    fixed, random = summary.loc["fixed effect"], summary.loc["random effect"]
    assert np.arctanh(pooled.r) == pytest.approx(fixed["eff"], abs=1e-12)
    np.testing.assert_allclose(np.arctanh(pooled.fixed_ci), [fixed["ci_low"], fixed["ci_upp"]], atol=1e-10)
    np.testing.assert_allclose(np.arctanh(pooled.random_ci), [random["ci_low"], random["ci_upp"]], atol=1e-10)
    assert pooled.i2 > 0.5 and pooled.q_p < 0.05 and pooled.tau2 > 0  # the families disagree
    assert pooled.n == 900 and pooled.n_images == 50


def test_the_image_bootstrap_sees_that_families_share_images() -> None:
    """The same image-driven signal in every family: the joint bootstrap CI is wider than the independent one."""
    rng = np.random.default_rng(1)
    n_images = 40
    images = np.repeat(np.arange(n_images), 6)
    effect = rng.normal(size=n_images)[images]
    frames = {}
    for name in ("a", "b", "c"):
        correct = effect + 0.5 * rng.normal(size=len(images)) > 0
        frames[name] = pd.DataFrame({"correct": correct.astype(int), "image": images,
                                     "x": effect + 0.5 * rng.normal(size=len(images))})
    pooled = pool_correlations(frames, "x", n_resamples=300)
    width = pooled.bootstrap_ci[1] - pooled.bootstrap_ci[0]
    assert width > 1.5 * (pooled.fixed_ci[1] - pooled.fixed_ci[0])
    assert pooled.bootstrap_ci[0] < pooled.r < pooled.bootstrap_ci[1]


def test_pooling_says_what_is_missing() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(DataError, match="at least two families, got 1"):
        pool_correlations({"a": _family(rng, 0.1, 0.0)}, "x")
    flat = _family(rng, 0.1, 0.0).assign(x=1.0)
    with pytest.raises(DataError, match=r"R_pb\(x\) is undefined for 'b'"):
        pool_correlations({"a": _family(rng, 0.1, 0.0), "b": flat}, "x")


def test_forest_figure_draws_each_model_and_both_pooled_estimates() -> None:
    from vlmlens.viz.figures import pooled_figure
    from vlmlens.vrp.analysis import to_jsonable
    from vlmlens.vrp.stats import point_biserial

    rng = np.random.default_rng(2)
    frames = {"a": _family(rng, 0.5, 0.0, 20), "b": _family(rng, 0.1, 2.0, 20)}
    pooled = to_jsonable(pool_correlations(frames, "x", n_resamples=100))
    models = {name: {"attention": {"rpb": {"x": to_jsonable(point_biserial(
        f["correct"].to_numpy(), f["x"].to_numpy(), groups=f["image"].to_numpy(), n_resamples=100))}}}
        for name, f in frames.items()}
    trace = pooled_figure({"models": models, "pooled": {"x": pooled, "y": "undefined: one family"}}).data[0]
    assert list(trace.y) == ["a", "b", "pooled, fixed effect", "pooled, random effects"]
    want = [models["a"]["attention"]["rpb"]["x"], models["b"]["attention"]["rpb"]["x"]]
    assert list(trace.x) == pytest.approx([w["r"] for w in want] + [pooled["r"], pooled["random_r"]])
    upper = np.add(trace.x, trace.error_x.array)
    assert upper == pytest.approx([w["bootstrap_ci"][1] for w in want] + [pooled["bootstrap_ci"][1], pooled["random_ci"][1]])
