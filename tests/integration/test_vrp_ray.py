"""The VRP on Ray: 2 CPU actors give the single-process run's tables and numbers, through a
killed actor and a killed driver."""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vlmlens import vrp
from vlmlens.data import synth_pope
from vlmlens.testing import tiny_vlm
from vlmlens.vrp.cli import reproduce
from vlmlens.vrp.store import SampleStore

pytestmark = pytest.mark.slow

CONFIG = vrp.VRPConfig(
    batch_size=4, n_resamples=50,
    consistency=vrp.ConsistencyConfig(k=3, ks=(2, 3), max_new_tokens=2),
    masking=vrp.MaskingConfig(fraction=0.3, sensitivity=(0.3,)),
    ablation=vrp.AblationConfig(k=2, ks=(1, 2), random_draws=1),
    destruction=vrp.DestructionConfig(n_dims=2, fractions=(0.5,)),
    identify=vrp.IdentifyConfig(enabled=True, max_new_tokens=3),
    probe=vrp.ProbeConfig(test_size=0.5, cv_folds=2, cv_repeats=1, n_permutations=5),
    mlp_probe=vrp.ProbeConfig(kind="mlp", test_size=0.5, cv_folds=2, cv_repeats=1, n_permutations=5),
)  # fmt: skip
FACTORY = functools.partial(tiny_vlm, "llava")
TABLES = ("samples", "interventions", "identify")


class DieOnce:
    """A dataset whose ``image()`` of one question kills its process the first time (a marker file remembers)."""

    def __init__(self, dataset, question_id: int, marker: Path) -> None:
        self.dataset, self.items = dataset, dataset.items
        self.question_id, self.marker = question_id, str(marker)

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, item):
        if item.question_id == self.question_id and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # as if the actor's node went away
        return self.dataset.image(item)

    def ground_truth(self, item):
        return self.dataset.ground_truth(item)


@pytest.fixture(scope="module")
def data():
    return synth_pope("adversarial", 4, seed=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The single-process run, one torch thread like each actor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return vrp.run(FACTORY(), data, CONFIG, out=tmp_path_factory.mktemp("single"), name="tiny")
    finally:
        torch.set_num_threads(threads)


def _same(result: vrp.VRPResult, reference: vrp.VRPResult) -> None:
    """The same stored tables and features, and every reported number."""
    assert json.dumps(result.results, sort_keys=True) == json.dumps(reference.results, sort_keys=True)
    pd.testing.assert_frame_equal(result.samples, reference.samples)
    qids = reference.samples["question_id"].tolist()
    mine, theirs = SampleStore(result.folder), SampleStore(reference.folder)
    for table in TABLES:
        pd.testing.assert_frame_equal(mine.read(table, qids), theirs.read(table, qids))
    for name in ("resid", "mlp_out", "mlp_post"):
        assert np.array_equal(mine.features(name, qids), theirs.features(name, qids)), name


def test_two_actors_give_the_single_process_run(cluster, data, reference, tmp_path):
    result = vrp.run_ray(FACTORY, data, CONFIG, out=tmp_path, name="tiny", ray=vrp.RayConfig(workers=2))
    assert result.results["identification"]["n"] == len(data)  # every pass ran, the last one included
    _same(result, reference)
    again = vrp.run_ray(FACTORY, data, CONFIG, out=tmp_path, name="tiny", resume=True)  # complete: reads the store
    _same(again, reference)


def test_a_killed_actor_is_replaced_and_its_batch_rerun(cluster, data, reference, tmp_path, caplog):
    dataset = DieOnce(data, data.items[9].question_id, tmp_path / "died")  # batch 2 of the per-sample pass
    result = vrp.run_ray(FACTORY, dataset, CONFIG, out=tmp_path / "run", name="tiny", ray=vrp.RayConfig(workers=2))
    assert (tmp_path / "died").exists()  # the actor did die
    assert "died" in caplog.text
    _same(result, reference)


DRIVER = """
import functools, sys, time
from vlmlens import vrp
from vlmlens.data import synth_pope
from vlmlens.testing import tiny_vlm
sys.path.insert(0, {test_dir!r})
from test_vrp_ray import CONFIG

class Slow:
    def __init__(self, dataset):
        self.dataset, self.items = dataset, dataset.items
    def __len__(self):
        return len(self.dataset)
    def image(self, item):
        time.sleep(0.3)
        return self.dataset.image(item)
    def ground_truth(self, item):
        return self.dataset.ground_truth(item)

vrp.run_ray(functools.partial(tiny_vlm, "llava"), Slow(synth_pope("adversarial", 4, seed=0)), CONFIG,
            out={out!r}, name="tiny", ray=vrp.RayConfig(workers=2))
"""


def test_a_killed_driver_resumes_with_nothing_lost_or_repeated(cluster, data, reference, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(test_dir=str(Path(__file__).parent), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,  # its own Ray, its own group
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and len(samples.read_text().splitlines()) > 1:
            break
        time.sleep(0.2)
    try:
        assert proc.poll() is None, "the driver ended before it could be killed"
        assert samples.exists(), "no batch finished in time"
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, mid-pass, with no chance to clean up
        proc.wait()
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # then what it left behind (its Ray processes)
        except ProcessLookupError:
            pass
    kept = len(pd.read_csv(samples))
    assert 0 < kept < len(data)
    result = vrp.run_ray(FACTORY, data, CONFIG, out=out, name="tiny", resume=True, ray=vrp.RayConfig(workers=2))
    _same(result, reference)


def test_the_reproduce_command_on_ray_writes_the_single_process_results(cluster, tmp_path, monkeypatch):
    def args(out, **extra):
        return argparse.Namespace(models=["tiny-llava"], quick=False, n=2, split="adversarial", pope=None,
                                  images=None, out=out, resume=False, batch_size=4, seed=0, resamples=50,
                                  threads=1, no_report=True, **extra)

    single = reproduce(args(tmp_path / "single"))
    monkeypatch.setattr(vrp.runner, "run", None)  # the Ray path must not run a model in this process
    spread = reproduce(args(tmp_path / "ray", ray_workers=2))
    assert json.dumps(spread, sort_keys=True) == json.dumps(single, sort_keys=True)
    assert spread["models"]["tiny-llava"]["n"] == 12
