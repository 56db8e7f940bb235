import argparse
import json

import pytest

from vlmlens.vrp.cli import reproduce


def _args(out, n, resume=False):
    return argparse.Namespace(models=["tiny-paligemma"], quick=False, n=n, split="adversarial", pope=None,
                              images=None, out=out, resume=resume, batch_size=4, seed=0)


@pytest.mark.slow
def test_reproduce_end_to_end_and_resume(tmp_path):
    full = reproduce(_args(tmp_path / "full", 2))
    r = full["models"]["tiny-paligemma"]
    assert r["n"] == 12 and r["pope"]["n"] == 12
    assert set(r["masking"]) == {"top", "bottom", "random"}
    assert len(r["truth_margin_by_layer"]) == 2
    assert (tmp_path / "full" / "summary.md").read_text().startswith("# VRP summary")
    # An interrupted run (first 6 questions done) resumed to the end gives the same results.
    part = tmp_path / "part"
    reproduce(_args(part, 2))
    samples = part / "tiny-paligemma" / "samples.csv"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:7]))  # header + 6 samples: the run was killed here
    resumed = reproduce(_args(part, 2, resume=True))
    assert json.dumps(resumed, sort_keys=True, default=float) == json.dumps(full, sort_keys=True, default=float)
