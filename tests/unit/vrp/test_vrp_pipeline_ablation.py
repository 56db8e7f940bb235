"""Neuron ablation and dimension destruction on a planted problem with known answers.

The "model" answers correctly when the sum of three planted dimensions (mean +1 each)
exceeds a threshold; zeroing a planted dimension lowers that sum, zeroing any other does
nothing. The probe ranking must find the planted dimensions, the top-k ablation must hurt
while the random one does not, and the probe-ranked destruction curve must fall to zero
as soon as every planted dimension is gone, below the random curve.
"""

import numpy as np
import pandas as pd
import pytest

from vlmlens.errors import DataError
from vlmlens.vrp.ablation import (
    ablation_result,
    choose_layer,
    destruction_result,
    make_plan,
    random_dims,
    rank_dimensions,
)
from vlmlens.vrp.config import AblationConfig, DestructionConfig, VRPConfig
from vlmlens.vrp.store import SampleStore

PLANTED = (4, 9, 17)
N, LAYERS, WIDTH, D_MLP = 400, 2, 32, 48
THRESHOLD = 2.0


def _features(width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, width))
    x[:, list(PLANTED)] += 1.0
    return x


def _correct(x: np.ndarray) -> np.ndarray:
    return (x[:, list(PLANTED)].sum(1) > THRESHOLD).astype(int)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    store = SampleStore(tmp_path_factory.mktemp("planted"))
    qids = np.arange(100, 100 + N)
    x = _features(WIDTH, 0)
    extra = np.random.default_rng(1).normal(size=(N, D_MLP - WIDTH))  # the neurons: wider, same signal
    feats = {"resid": x, "mlp_out": x, "mlp_post": np.concatenate([x, extra], 1)}
    arrays = {"question_id": qids}
    for name, x in feats.items():
        arrays[name] = np.stack([np.zeros_like(x), x], 1).astype(np.float32)  # layer 1 holds the signal
    store.append("samples", 0, [{"question_id": int(q), "batch": 0} for q in qids], arrays)
    frame = pd.DataFrame({"question_id": qids, "correct": _correct(feats["resid"])})
    config = VRPConfig(ablation=AblationConfig(k=3, ks=(2, 3), random_draws=2),
                       destruction=DestructionConfig(n_dims=2, fractions=(0.1, 0.5, 0.75), random_draws=2))
    plan = make_plan(store, frame, config, best_probe=1, peak_visual=0, n_layers=LAYERS)
    # Run each condition through the planted "model": zero the dims, re-answer.
    table = pd.DataFrame({"question_id": qids})
    for c in plan["conditions"]:
        ablated = feats["mlp_post" if "mlp.hook_post" in c["site"] else "resid"].copy()
        ablated[:, list(c["dims"])] = 0.0
        table[c["name"]] = _correct(ablated)
    return plan, table, frame["correct"].to_numpy(), config


def test_rank_dimensions_takes_the_top_k_from_the_l1_path_and_orders_the_rest_by_l2() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    y = (2 * x[:, 7] + 0.6 * x[:, 2] + 0.3 * rng.normal(size=300)) > 0
    ranking = rank_dimensions(x, y, k=1)
    assert ranking[0] == 7  # the first to enter the L1 path
    assert ranking[1] == 2  # the rest by |L2 weight|
    assert sorted(ranking.tolist()) == list(range(10))
    assert rank_dimensions(x, y, k=2)[:2].tolist() == [7, 2]
    with pytest.raises(DataError, match="single class"):
        rank_dimensions(x, np.ones(300, dtype=bool), k=1)


def test_rank_dimensions_at_n60_chooses_k_units_where_a_fixed_c_kept_none() -> None:
    """The audit's case: n=60, few errors, C=0.1 L1 kept zero dimensions, so the "top 5" was
    index order. The path lowers the penalty until 5 dimensions are in."""
    from vlmlens.circuits.probe import l1_logistic, l1_path
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 128))
    y = np.zeros(60, dtype=bool)
    y[rng.permutation(60)[:9]] = True  # 9 errors in 60, as a toy at 85% accuracy
    z = StandardScaler().fit_transform(x)
    assert np.count_nonzero(l1_logistic(0.1, 0).fit(z, y).coef_) == 0  # the old ranking: all zeros
    path = l1_path(x, y.astype(int), 5)
    assert path.n_selected >= 5 and np.isfinite(path.entry[path.order[:5]]).all()
    ranking = rank_dimensions(x, y, k=5)
    assert ranking[:5].tolist() == path.order[:5].tolist() and ranking[:5].tolist() != list(range(5))


def test_random_dims_are_distinct_and_reproducible() -> None:
    a = random_dims(50, 5, seed=0, stream=(1, 5, 0))
    assert a == random_dims(50, 5, seed=0, stream=(1, 5, 0)) and len(set(a)) == 5
    assert a != random_dims(50, 5, seed=0, stream=(1, 5, 1))


def test_plan_targets_the_chosen_layer_and_ranks_the_planted_dims_first(planted) -> None:
    plan, _, _, _ = planted
    assert plan["ablation_layer"] == plan["destruction_layer"] == 1
    assert plan["destruction_site"] == "text.blocks.1.hook_resid_post"
    top = {c["group"]: c["dims"] for c in plan["conditions"] if c["kind"] == "top" and c["size"] == 3}
    assert set(top["ablate_mlp_out"]) == set(PLANTED) == set(top["ablate_mlp_post"])
    sizes = {c["size"] for c in plan["conditions"] if c["group"] == "ablate_mlp_post"}
    assert sizes == {3}  # the k sweep runs on the MLP output only
    assert sorted({c["size"] for c in plan["conditions"] if c["group"] == "destroy"}) == [2, 3, 16, 24]


def test_top_k_ablation_hurts_and_random_does_not(planted) -> None:
    plan, table, first, config = planted
    res = ablation_result(first, table, plan, "ablate_mlp_out", config.ablation)
    assert res.site == "text.blocks.1.hook_mlp_out" and set(res.dims) == set(PLANTED)
    assert res.top.drop_pp == pytest.approx(100 * first.mean())  # every right answer turns wrong
    assert res.top.p_value < 1e-6
    assert len(res.random) == 2 and res.random_drop_pp < res.top.drop_pp / 2
    assert res.excess_drop_pp > 30 and res.verdict == "robust: the same effect at every setting"
    assert [row["k"] for row in res.by_k] == [2, 3]


def test_destruction_curve_collapses_once_the_planted_dims_are_gone(planted) -> None:
    plan, table, first, _ = planted
    res = destruction_result(first, table, plan, mode="zero")
    assert res.counts == (2, 3, 16, 24) and res.width == WIDTH
    ranked = np.array(res.ranked_accuracy)
    assert (np.diff(ranked) <= 0).all()  # monotone
    assert ranked[1:].max() == 0.0  # all three planted dims destroyed from 3 on
    assert (ranked <= np.array(res.random_accuracy) + 1e-12).all()
    assert res.baseline_accuracy == pytest.approx(first.mean())
    ranked_drop, random_drop = res.drop_at(0.5)
    assert ranked_drop == pytest.approx(100 * first.mean()) and random_drop < ranked_drop


def test_choose_layer_resolves_and_validates() -> None:
    assert choose_layer("best_probe", best_probe=3, peak_visual=1, n_layers=4) == 3
    assert choose_layer("peak_visual", best_probe=3, peak_visual=1, n_layers=4) == 1
    assert choose_layer(2, best_probe=3, peak_visual=1, n_layers=4) == 2
    with pytest.raises(DataError, match="layer 9 is out of range for a model with 4 text layers"):
        choose_layer(9, best_probe=3, peak_visual=1, n_layers=4)
