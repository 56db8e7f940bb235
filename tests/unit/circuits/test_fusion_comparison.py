"""The fusion comparison: per-model summaries, paired differences, the command and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmlens.circuits.fusion import FusionConfig, compare, score_statistics
from vlmlens.cli import main
from vlmlens.errors import InputError
from vlmlens.testing import tiny_vlm

SMALL = FusionConfig(n_images=4, ks=(1, 2), fractions=(0.01,), destroy=(0.25, 0.5), layer_ks=(1, 2), n_random=2,
                     n_resamples=60)


@pytest.fixture(scope="module")
def result():
    return compare({"a": tiny_vlm("llava"), "same": tiny_vlm("llava"), "b": tiny_vlm("qwen2_vl")}, SMALL)


def test_per_model_summary(result):
    row = result["models"]["a"]
    assert row["family"] == "llava" and 0 <= row["depth"] <= 1 and 0 < row["top_share"] <= 1
    assert row["depth_ci"][0] <= row["depth_ci"][1] and row["top_share_ci"][0] <= row["top_share_ci"][1]
    assert [p["k"] for p in row["ablation"]] == [1, 2, 3]  # 1% of 256 units = 3
    assert [round(d["fraction"], 2) for d in row["destruction"]] == [0.25, 0.5]
    assert all(d["layer"] == row["peak_layer"] for d in row["destruction"])
    assert len(row["top_units"]) == 16 and row["concentration"]["rule"].startswith("concentrated if")
    assert [(d["layer"], d["ks"]) for d in row["by_depth"]] == [(0, [1, 2]), (1, [1, 2])]
    assert row["by_depth"][1]["depth"] == 1.0


def test_differences_are_paired(result):
    same = result["differences"]["a vs same"]  # the same model twice: every resample agrees
    assert same["depth"] == 0 and same["depth_ci"] == [0.0, 0.0] and same["top_share_ci"] == [0.0, 0.0]
    other = result["differences"]["a vs b"]
    assert other["depth"] == pytest.approx(result["models"]["a"]["depth"] - result["models"]["b"]["depth"])


def test_score_statistics_resample_by_image():
    from vlmlens.circuits import Behaviour, localize
    from vlmlens.data import synth_pope

    found = localize(tiny_vlm("llava"), Behaviour.from_dataset(synth_pope("adversarial", n_images=3, seed=0)),
                     method="dla", k=2)
    everything = np.arange(len(found.image_counts))
    assert score_statistics(found, everything) == pytest.approx(score_statistics(found), rel=1e-5)
    assert score_statistics(found, np.array([0, 0, 0])) != pytest.approx(score_statistics(found))


def test_config_is_checked():
    with pytest.raises(InputError, match="n_images must be >= 4"):
        FusionConfig(n_images=2)
    with pytest.raises(InputError, match="method one of"):
        FusionConfig(method="saliency")
    assert FusionConfig.quick().n_images == 12


def test_command_writes_results_summary_and_report(tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # -q sets it; restored after the test
    assert main(["-q", "circuits", "fusion", "--models", "tiny-llava", "tiny-paligemma", "--quick", "--n-images", "4",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["models"]) == {"tiny-llava", "tiny-paligemma"} and result["config"]["n_images"] == 4
    assert "| tiny-llava | llava |" in (tmp_path / "summary.md").read_text()
    assert "fig-ablation" in (tmp_path / "report.html").read_text()
