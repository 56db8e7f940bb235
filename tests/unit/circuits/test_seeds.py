"""Arms over training seeds: the seed-level interaction test and its place in the fusion comparison."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from vlmlens.circuits.fusion import FusionConfig, compare
from vlmlens.circuits.seeds import replicate_statistics, seed_interaction
from vlmlens.errors import InputError
from vlmlens.testing import tiny_vlm


def _brute_force_p(a, b):
    pooled = list(a) + list(b)
    observed = abs(np.mean(a) - np.mean(b))
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(a)):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        hits += abs(np.mean([pooled[i] for i in chosen]) - np.mean(rest)) >= observed - 1e-12
    return hits / total


@pytest.mark.parametrize("a, b", [([10.0, 12.0, 11.0], [1.0, 2.0, 0.0]), ([1.0, 5.0, 2.0], [2.0, 4.0, 3.0]),
                                  ([0.3, 0.1, 0.2, 0.5], [0.2, 0.0, 0.1]), ([1.0, 1.0], [1.0, 1.0])])
def test_permutation_p_is_every_relabelling_of_the_seeds(a, b):
    out = seed_interaction(a, b)
    assert out["exact"] and out["relabellings"] == math.comb(len(a) + len(b), len(a))
    assert out["p"] == pytest.approx(_brute_force_p(a, b))
    assert out["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert out["p"] >= out["min_p"] - 1e-12


def test_welch_interval_matches_scipy():
    a, b = [10.0, 12.0, 11.5], [1.0, 2.5, 0.0, 1.5]
    out = seed_interaction(a, b, level=0.9)
    welch = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert out["ci"] == pytest.approx([welch.low, welch.high])
    assert all(math.isnan(v) for v in seed_interaction([1.0, 1.0], [0.0, 0.0])["ci"])  # no spread: no interval


def test_three_seeds_per_arm_cannot_reach_p_below_a_tenth():
    out = seed_interaction([100.0, 101.0, 102.0], [0.0, 1.0, 2.0])
    assert out["min_p"] == pytest.approx(0.1) and out["p"] == pytest.approx(0.1)


def test_large_arms_use_random_relabellings():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 12), rng.normal(0.0, 1.0, 12)  # C(24, 12) > 200,000
    out = seed_interaction(a, b)
    assert not out["exact"] and out["min_p"] == pytest.approx(1 / 200_001)
    assert out["p"] == pytest.approx(sps.permutation_test((a, b), lambda x, y: np.mean(x) - np.mean(y),
                                                          n_resamples=20_000, random_state=0).pvalue, abs=0.02)


def test_an_arm_needs_two_seeds():
    with pytest.raises(InputError, match=">= 2 finite values per arm"):
        seed_interaction([1.0], [2.0, 3.0])
    with pytest.raises(InputError, match=">= 2 finite values per arm"):
        seed_interaction([1.0, float("nan")], [2.0, 3.0])


SMALL = FusionConfig(n_images=4, ks=(1,), fractions=(0.01,), destroy=(0.5,), layer_ks=(), n_random=2,
                     n_resamples=40)


@pytest.fixture(scope="module")
def arms():
    return compare({"late": [tiny_vlm("llava", seed=s) for s in (0, 1)],
                    "native": [tiny_vlm("qwen2_vl", seed=s) for s in (0, 1, 2)],
                    "single": tiny_vlm("paligemma")}, SMALL)


def test_each_seed_is_a_model_and_arms_summarise_them(arms):
    assert list(arms["models"]) == ["late#0", "late#1", "native#0", "native#1", "native#2", "single"]
    late = arms["arms"]["late"]
    assert late["replicates"] == ["late#0", "late#1"]
    one = replicate_statistics(arms["models"]["late#1"])
    assert set(one) == {"depth", "top_share", "drop top-k=1", "drop top-1.0%", "drop destroy 50%"}
    k = arms["models"]["late#1"]["ks"]["fractions"]["1.0%"]
    assert one["drop top-1.0%"] == next(p["drop_pp"] for p in arms["models"]["late#1"]["ablation"] if p["k"] == k)
    assert late["values"]["depth"] == [arms["models"]["late#0"]["depth"], arms["models"]["late#1"]["depth"]]
    assert late["mean"]["drop top-k=1"] == pytest.approx(np.mean(late["values"]["drop top-k=1"]))
    assert math.isnan(arms["arms"]["single"]["sd"]["depth"])


def test_interactions_only_between_arms_with_seeds(arms):
    assert list(arms["interactions"]) == ["late vs native"]
    tests = arms["interactions"]["late vs native"]
    depth = tests["depth"]
    assert depth["n"] == [2, 3] and depth["relabellings"] == 10
    assert depth == {**seed_interaction(arms["arms"]["late"]["values"]["depth"],
                                        arms["arms"]["native"]["values"]["depth"]), "p_holm": depth["p_holm"]}
    assert arms["n_tests"] == len(tests) == 5 and arms["not_compared"]["late vs native"] == []
    assert all(t["p_holm"] >= t["p"] for t in tests.values())


def test_arm_names_are_checked():
    with pytest.raises(InputError, match="at least one model"):
        compare({"late": []}, SMALL)
    with pytest.raises(InputError, match="collide"):
        compare({"a": [tiny_vlm("llava"), tiny_vlm("llava", seed=1)], "a#0": tiny_vlm("llava")}, SMALL)


def test_summary_lists_arms_and_interactions(arms):
    from vlmlens.viz.circuits import fusion_summary_markdown

    text = fusion_summary_markdown(arms)
    assert "| late | 2 | depth |" in text and "| native | 3 | drop destroy 50% |" in text
    assert "| late vs native | drop top-k=1 |" in text and "5 tests" in text


def test_command_line_arms_load_each_seed():
    from vlmlens.circuits.cli import load_arms, model_groups

    with pytest.raises(InputError, match="bad --models entry"):
        model_groups(["a=x", "a=y"])
    with pytest.raises(InputError, match="bad --models entry"):
        model_groups(["a="])
    loaded = load_arms(["late=tiny-llava,tiny-qwen2_vl", "tiny-paligemma"])
    assert [m.family for m in loaded["late"]] == ["llava", "qwen2_vl"]
    assert loaded["tiny-paligemma"].family == "paligemma"


def _row(depth: float, drops: dict[int, float], fraction_k: int) -> dict:
    return {"depth": depth, "top_share": 0.1, "ks": {"counts": sorted(drops), "fractions": {"1.0%": fraction_k}},
            "ablation": [{"k": k, "layer": None, "drop_pp": d} for k, d in drops.items()],
            "destruction": [{"fraction": 0.5, "drop_pp": 3.0}]}


def test_fractions_pair_like_with_like_and_unshared_counts_are_listed():
    """Arms of different widths: 1% is k=2 in one and k=5 in the other, and is compared as 1%;
    k=64 exists only in the wider arm and is reported, not tested."""
    from vlmlens.circuits.seeds import compare_arms

    models = {"a#0": _row(0.2, {1: 1.0, 2: 5.0}, 2), "a#1": _row(0.3, {1: 2.0, 2: 6.0}, 2),
              "b#0": _row(0.6, {1: 0.0, 5: 9.0, 64: 30.0}, 5), "b#1": _row(0.7, {1: 1.0, 5: 11.0, 64: 31.0}, 5)}
    out = compare_arms(models, {"a": ["a#0", "a#1"], "b": ["b#0", "b#1"]})
    tests = out["interactions"]["a vs b"]
    assert tests["drop top-1.0%"]["difference"] == pytest.approx(5.5 - 10.0)
    assert tests["drop top-k=1"]["difference"] == pytest.approx(1.5 - 0.5)
    assert out["not_compared"]["a vs b"] == ["drop top-k=2", "drop top-k=5", "drop top-k=64"]
    assert out["n_tests"] == 5  # depth, top share, top-k=1, top-1.0%, destroy 50%
