import argparse
import json

import pytest

from vlmlens.errors import DataError
from vlmlens.vrp.cli import reproduce


def _args(out, n, resume=False):
    return argparse.Namespace(models=["tiny-paligemma"], quick=False, n=n, split="adversarial", pope=None,
                              images=None, out=out, resume=resume, batch_size=4, seed=0, resamples=50,
                              threads=1, no_report=True)


def _kill(table, keep_rows):
    """Leave the header and the first ``keep_rows`` rows, as if the run was killed there."""
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[: keep_rows + 1]))


@pytest.mark.slow
def test_reproduce_end_to_end_and_resume(tmp_path):
    full = reproduce(_args(tmp_path / "full", 4))  # 4 images: the probes' split is grouped by image
    r = full["models"]["tiny-paligemma"]
    assert r["n"] == 24 and r["pope"]["n"] == 24
    assert isinstance(r["probes"]["logistic"], dict), r["probes"]["logistic"]
    assert {"top", "bottom", "random"} <= set(r["masking"])
    assert len(r["margins"]["truth"]) == 2
    assert {"mlp_out", "mlp_post"} <= set(r["ablation"]) and "counts" in r["destruction"]
    assert (tmp_path / "full" / "summary.md").read_text().startswith("# VRP summary")
    assert json.loads((tmp_path / "full" / "results.json").read_text()) == full
    assert (tmp_path / "full" / "per_sample.csv").read_text().count("\n") == 25
    # Killed in the per-sample pass (6 questions done: one batch of 4 and half of the next) ...
    part = tmp_path / "part"
    reproduce(_args(part, 4))
    _kill(part / "tiny-paligemma" / "samples.csv", 6)
    (part / "tiny-paligemma" / "interventions.csv").unlink()
    with pytest.raises(DataError, match="exists; pass resume=True"):
        reproduce(_args(part, 4))
    resumed = reproduce(_args(part, 4, resume=True))
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)
    # ... and in the ablation pass: resumed runs give the same results.json.
    _kill(part / "tiny-paligemma" / "interventions.csv", 5)
    resumed = reproduce(_args(part, 4, resume=True))
    assert json.dumps(resumed, sort_keys=True) == json.dumps(full, sort_keys=True)


@pytest.mark.slow
def test_reproduce_runs_on_the_shipped_toy_zoo(tmp_path):
    """The README's main job loads the zoo through HookedVLM.from_pretrained: run it on one toy, small n."""
    args = _args(tmp_path / "toy", 2)
    args.models = ["toy-llava"]
    result = reproduce(args)
    assert result["models"]["toy-llava"]["pope"]["n"] == 12
