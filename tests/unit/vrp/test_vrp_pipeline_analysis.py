"""Statistics over the per-sample table, on constructed tables with known answers; configs; doctests."""

import dataclasses
import doctest
import importlib
import json

import numpy as np
import pandas as pd
import pytest

from vlmlens.errors import DataError
from vlmlens.vrp.analysis import (
    consistency_summary,
    correlations,
    examples,
    margin_summary,
    masking_summary,
    to_jsonable,
)
from vlmlens.vrp.config import (
    AblationConfig,
    ConsistencyConfig,
    DestructionConfig,
    MaskingConfig,
    VRPConfig,
)
from vlmlens.vrp.pipeline import mask_column

N = 40
CONFIG = VRPConfig(n_resamples=50, consistency=ConsistencyConfig(k=4, ks=(2, 4)),
                   masking=MaskingConfig(fraction=0.3, sensitivity=(0.2, 0.3), random_draws=3, sweep_draws=2))


def _frame() -> pd.DataFrame:
    correct = np.array([1, 0] * (N // 2))
    # Right answers were sampled unanimously, wrong ones split 2:2 (POPE parser normalises).
    samples = [json.dumps(["Yes.", "yes", "Yes", "YES"] if c else ["No", "yes", "no.", "Yes"]) for c in correct]
    frame = pd.DataFrame({"question_id": np.arange(N), "correct": correct, "first_correct": np.ones(N, dtype=int),
                          "samples": samples, "confidence": np.where(correct == 1, -0.1, -0.2),
                          "image": np.repeat(np.arange(N // 4), 4)})  # 10 images of 4 questions
    for fraction in (0.2, 0.3):
        frame[mask_column("top", fraction)] = (np.arange(N) >= 16).astype(int)  # 16 of 40 flip to wrong
        frame[mask_column("bottom", fraction)] = 1
        for draw in range(CONFIG.masking.draws(fraction)):  # draw d gets question d wrong, the third none
            frame[mask_column("random", fraction, draw)] = (np.arange(N) != (draw if draw < 2 else -1)).astype(int)
    return frame


def test_self_consistency_that_tracks_correctness_scores_auroc_one() -> None:
    res = consistency_summary(_frame(), CONFIG)
    assert res.k == 4 and res.auroc.auroc == 1.0 and res.rpb.r == pytest.approx(1.0)
    assert res.mean_S_SC == pytest.approx(0.75)
    assert [row["k"] for row in res.by_k] == [2, 4]
    assert res.confidence_auroc.auroc == 1.0
    assert res.verdict == "robust: the same effect at every setting"
    assert to_jsonable(res)["auroc"]["n"] == N


def test_masking_drops_and_exact_mcnemar() -> None:
    res = masking_summary(_frame(), CONFIG)
    assert res.fraction == 0.3
    assert (res.top.b, res.top.c, res.top.drop_pp) == (16, 0, 40.0)
    assert res.top.p_value == pytest.approx(2 * 0.5**16)
    assert res.bottom.drop_pp == 0.0 and res.random.drop_pp == pytest.approx(2.5)  # the first draw's test
    # The random control is the mean over draws: 3 at the reported share, 2 at the other.
    assert res.random_draws == 3 and res.random_drop_pp == pytest.approx(100 * 2 / 3 / N)
    assert [row["random_drop_pp"] for row in res.by_fraction] == pytest.approx([100 * 2 / 2 / N, 100 * 2 / 3 / N])
    assert res.verdict == "robust: the same effect at every setting" and len(res.by_fraction) == 2
    assert all(row["claim"] for row in res.by_fraction)


def test_margin_summary_finds_the_planted_peak_layer() -> None:
    real = [[0.0, 1.0, 3.0, 2.0], [0.0, 2.0, 4.0, 3.0]]
    blank = [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    frame = pd.DataFrame({
        "truth_margin": [json.dumps(r) for r in real], "truth_margin_blank": [json.dumps(b) for b in blank],
        "yes_no_margin": [json.dumps(r) for r in real], "yes_no_margin_blank": [json.dumps(b) for b in blank],
    })
    res = margin_summary(frame)
    assert res.peak_visual_layer == 2
    assert res.gain == pytest.approx((0.0, 0.5, 2.5, 1.5))


def test_undefined_statistics_say_why_and_serialise() -> None:
    frame = pd.DataFrame({"correct": [1, 1, 1, 1, 1], "C_k": [0, 1, 2, 0, 1]})
    res = correlations(frame, ["C_k"], n_resamples=20)
    assert res["C_k"].startswith("undefined: binary has a single class")
    assert to_jsonable({"x": float("nan"), "y": (np.int64(2), np.float32(0.5))}) == {"x": None, "y": [2, 0.5]}


def test_examples_alternate_right_and_wrong_answers() -> None:
    frame = pd.DataFrame({"question_id": [1, 2, 3, 4], "image": "a.png", "object_name": "cat", "label": "yes",
                          "answer": "yes", "correct": [1, 1, 1, 0], "H_s_norm": 0.5, "C_k": 1,
                          "attention_map": json.dumps([[0.5, 0.5]])})
    picked = examples(frame, 2)
    assert [e["question_id"] for e in picked] == [1, 4]
    assert picked[0]["map"] == [[0.5, 0.5]]


def test_paired_differences_use_images_and_no_wald_interval() -> None:
    """The masking drop's CI resamples images; with no discordant pair it still says how little is known."""
    res = masking_summary(_frame(), CONFIG)
    assert res.top_drop.mean == pytest.approx(0.4) and res.top_drop.n_clusters == N // 4
    assert res.top_drop.ci[0] < 0.4 < res.top_drop.ci[1]
    # The 16 questions that flip are the 4 questions of images 0-3: only 4 of 10 images carry the
    # effect, and the exact image sign-flip test can reach no further than 2 * 2^6 / 2^10 = 0.125
    # (a question-level McNemar would say p = 3e-5).
    assert res.top_vs_bottom.mean == pytest.approx(0.4) and res.top_vs_bottom.p_value == pytest.approx(0.125)
    assert res.top_vs_random.exact and res.top_vs_random.p_value == pytest.approx(0.125)
    # Per question, the mean of the 3 random draws minus top: 2/3 for questions 0-1, 1 for 2-15, 0 after.
    assert res.top_vs_random.mean == pytest.approx((2 * 2 / 3 + 14) / N)
    assert res.top.p_value < 1e-4


def test_multiplicity_adjusts_within_each_family_as_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    from vlmlens.vrp.stats import adjust_p_values

    rng = np.random.default_rng(0)
    for _ in range(5):
        p = rng.random(15) ** 3
        np.testing.assert_allclose(adjust_p_values(p, "holm"), multipletests(p, method="holm")[1])
        np.testing.assert_allclose(adjust_p_values(p, "bh"), multipletests(p, method="fdr_bh")[1])
    with pytest.raises(DataError, match="method must be 'holm' or 'bh'"):
        adjust_p_values([0.1], "bonferroni")


def test_the_probes_and_baselines_share_one_split() -> None:
    from vlmlens.vrp.probes import ProbeConfig

    with pytest.raises(DataError, match=r"must share one held-out split \(test_size, seed\)"):
        VRPConfig(mlp_probe=ProbeConfig(kind="mlp", test_size=0.5))


def test_configs_validate_and_are_frozen() -> None:
    with pytest.raises(DataError, match=r"sensitivity \(0.2, 0.4\) must include fraction=0.3"):
        MaskingConfig(fraction=0.3, sensitivity=(0.2, 0.4))
    with pytest.raises(DataError, match=r"ks \(5, 15\) must include k=10"):
        ConsistencyConfig(ks=(5, 15))
    with pytest.raises(DataError, match="temperature > 0"):
        ConsistencyConfig(temperature=0)
    # Under runtime type checking (the test default) the checker rejects the Literal first.
    with pytest.raises((DataError, TypeError), match="'last'"):
        AblationConfig(layer="last")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"fractions must lie in \(0, 1\], got \[1.5\]"):
        DestructionConfig(fractions=(0.5, 1.5))
    with pytest.raises(DataError, match="batch_size must be >= 1, got 0"):
        VRPConfig(batch_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        VRPConfig(8)  # type: ignore[misc]
    assert DestructionConfig().counts(4096) == (5, 41, 205, 410, 1024, 2048, 3072)
    assert ConsistencyConfig().k_max == 15
    assert json.loads(json.dumps(VRPConfig().to_dict()))["ablation"]["k"] == 5


@pytest.mark.parametrize("name", ["vlmlens.vrp.config", "vlmlens.vrp.store", "vlmlens.vrp.analysis",
                                  "vlmlens.vrp.ablation", "vlmlens.vrp.headline", "vlmlens.vrp.pipeline",
                                  "vlmlens.vrp.sampling", "vlmlens.viz.figures", "vlmlens.viz.report"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_sweep_verdicts_keep_a_null_apart_from_a_robust_effect() -> None:
    from vlmlens.vrp.stats import sweep_verdict

    assert sweep_verdict([0, 0, 0]) == "null at every setting"  # not "the conclusion holds"
    assert sweep_verdict([-1, -1]) == "robust: the same effect at every setting"
    assert sweep_verdict([1, 0, 1]) == sweep_verdict([1, -1]) == "depends on the setting"
    assert sweep_verdict([False, False]) == "null at every setting"
    assert sweep_verdict([1, None]) == "undefined at some setting"


def test_attention_summary_recomputes_r_pb_at_every_swept_setting() -> None:
    from vlmlens.vrp.analysis import attention_summary

    rng = np.random.default_rng(0)
    correct = rng.random(N) > 0.5
    frame = pd.DataFrame({"correct": correct.astype(int), "image": np.repeat(np.arange(N // 4), 4),
                          "H_s": rng.normal(size=N), "H_s_norm": rng.random(N), "object_mass": np.nan,
                          "H_s_layers": ["[1.0, 0.5]"] * N, "C_k": rng.integers(0, 3, N)})
    sweep = CONFIG.attention_sweep
    for suffix in sweep.layer_columns():
        frame[f"H_s_norm{suffix}"] = rng.random(N)
        frame[f"C_k{suffix}"] = correct + rng.integers(0, 2, N)  # a real signal at these settings only
    for suffix in sweep.dbscan_columns():
        frame[f"C_k{suffix}"] = rng.integers(0, 3, N)
    res = attention_summary(frame, CONFIG)
    assert [(row["measure"], row["setting"]) for row in res.sweep][:2] == [("H_s_norm", "second_half"),
                                                                             ("H_s_norm", "all")]
    assert len(res.sweep) == 2 * len(sweep.layer_columns()) + len(sweep.dbscan_columns())
    by_setting = {row["setting"]: row["rpb"] for row in res.sweep if row["measure"] == "C_k"}
    assert by_setting["all"].r == pytest.approx(np.corrcoef(correct, frame["C_k@all"])[0, 1])
    assert by_setting["all"].clustered  # the bootstrap resamples images
    assert res.verdicts["C_k"] == "depends on the setting"  # a signal at the layer settings only


def test_mask_conditions_name_the_columns_the_summary_reads_and_draw_distinct_sets() -> None:
    import torch

    from vlmlens.vrp.analysis import masked_correct
    from vlmlens.vrp.pipeline import _mask_conditions, mask_columns

    maps = [torch.rand(4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    names, conditions = _mask_conditions(maps, [11, 12], CONFIG)
    fractions = CONFIG.masking.fractions
    assert len(names) == len(conditions) == 2 * len(fractions) + sum(CONFIG.masking.draws(f) for f in fractions)
    want = [c for f in fractions for kind in ("top", "bottom", "random") for c in mask_columns(kind, f, CONFIG.masking)]
    assert sorted(names) == sorted(want)
    frame = pd.DataFrame({name: [1, 0] for name in names})
    assert masked_correct(frame, "random", 0.3, CONFIG).tolist() == [1.0, 0.0]  # reads exactly those columns
    randoms = [c[0].patches for n, c in zip(names, conditions) if n.startswith("mask_random_30")]
    assert len(randoms) == 3 and len({str(p) for p in randoms}) == 3  # three different patch sets
    again, _ = _mask_conditions(maps, [11, 12], CONFIG)
    assert [str(c[0].patches) for c in _mask_conditions(maps, [11, 12], CONFIG)[1]] == [
        str(c[0].patches) for c in conditions] and again == names  # reproducible
