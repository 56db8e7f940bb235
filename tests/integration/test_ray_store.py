"""The activation store on Ray: 2 CPU actors give the single-process store's rows, and survive kills."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from vlmlens.data import synth_pope
from vlmlens.errors import DataError, InputError
from vlmlens.ops import ActivationStore, RayStoreConfig, write_store, write_store_ray
from vlmlens.testing import tiny_vlm

pytestmark = pytest.mark.slow

SITES = ["text.blocks.0.hook_resid_post", "text.blocks.1.hook_resid_post", "vision.blocks.0.hook_resid_post"]
OPTIONS = {"sites": SITES, "positions": "last", "batch_size": 2, "shard_size": 4}
FACTORY = functools.partial(tiny_vlm, "llava")


class DieOnce:
    """A dataset whose ``image()`` of one question kills its process the first time (a marker file remembers)."""

    def __init__(self, dataset, question_id: int, marker: Path) -> None:
        self.dataset, self.items = dataset, dataset.items
        self.question_id, self.marker = question_id, str(marker)

    def image(self, item):
        if item.question_id == self.question_id and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # as if the actor's node went away
        return self.dataset.image(item)


class FailAt:
    """A dataset whose ``image()`` of one question raises (a driver that stops mid-run)."""

    def __init__(self, dataset, question_id: int) -> None:
        self.dataset, self.items, self.question_id = dataset, dataset.items, question_id

    def image(self, item):
        if item.question_id == self.question_id:
            raise RuntimeError("stopped here")
        return self.dataset.image(item)


class _Empty:
    def __init__(self) -> None:
        self.items: list = []

    def image(self, item):
        raise AssertionError("no items")


@pytest.fixture(scope="module")
def data():
    return synth_pope("random", n_images=4, seed=3, image_size=64).subset(20)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The single-process store, one torch thread like each actor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("single")
        write_store(tiny_vlm("llava"), data, out, progress=False, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    return ActivationStore(out)


def _same(store: ActivationStore, reference: ActivationStore) -> None:
    assert store.question_ids.tolist() == reference.question_ids.tolist()  # same rows, same order, none twice
    for site in SITES:
        assert torch.equal(store.load(site), reference.load(site)), site


def test_two_actors_write_the_single_process_rows(cluster, data, reference, tmp_path):
    info = write_store_ray(FACTORY, data, tmp_path, config=RayStoreConfig(workers=2), **OPTIONS)
    assert (info.n_rows, info.new_rows) == (20, 20)
    assert sorted(p.name for p in tmp_path.glob("part-*")) == ["part-00", "part-01"]
    _same(ActivationStore(tmp_path), reference)
    again = write_store_ray(FACTORY, data, tmp_path, config=RayStoreConfig(workers=2), **OPTIONS)
    assert (again.n_rows, again.new_rows) == (20, 0)  # complete: a rerun writes nothing
    with pytest.raises(DataError, match="written by write_store_ray"):  # one process does not extend it
        write_store(tiny_vlm("llava"), data, tmp_path, progress=False, **OPTIONS)
    with pytest.raises(DataError, match="same dataset and workers"):  # another split of a kept store
        write_store_ray(FACTORY, data, tmp_path, config=RayStoreConfig(workers=3), **OPTIONS)
    fresh = write_store_ray(FACTORY, data, tmp_path, config=RayStoreConfig(workers=3), resume=False, **OPTIONS)
    assert (fresh.n_rows, fresh.new_rows) == (20, 20)  # deleted, then written again in three parts
    assert sorted(p.name for p in tmp_path.glob("part-*/manifest.json") for p in [p.parent]) == [
        "part-00", "part-01", "part-02"]
    _same(ActivationStore(tmp_path), reference)


def test_a_killed_actor_is_replaced_and_its_part_resumes(cluster, data, reference, tmp_path, caplog):
    victim = data.items[16].question_id  # in part-01 (items 10-19), after its first shard (items 10-13)
    dataset = DieOnce(data, victim, tmp_path / "died")
    info = write_store_ray(FACTORY, dataset, tmp_path / "store", config=RayStoreConfig(workers=2), **OPTIONS)
    assert (tmp_path / "died").exists()  # the actor did die
    assert "died" in caplog.text
    assert info.n_rows == 20
    _same(ActivationStore(tmp_path / "store"), reference)


def test_a_stopped_run_resumes_where_it_stopped(cluster, data, reference, tmp_path):
    stopped = FailAt(data, data.items[6].question_id)  # part-00 stops after its first shard
    with pytest.raises(RuntimeError, match="stopped here"):
        write_store_ray(FACTORY, stopped, tmp_path, config=RayStoreConfig(workers=2), **OPTIONS)
    assert not (tmp_path / "manifest.json").exists()  # no merged store until every part is complete
    kept = len(ActivationStore(tmp_path / "part-00"))
    assert 0 < kept < 10
    other = tmp_path / "part-01"
    before = kept + (len(ActivationStore(other)) if (other / "manifest.json").exists() else 0)
    info = write_store_ray(FACTORY, data, tmp_path, config=RayStoreConfig(workers=2), **OPTIONS)
    assert info.new_rows == 20 - before  # only what was missing
    _same(ActivationStore(tmp_path), reference)


def test_a_resume_with_another_split_is_refused(data, tmp_path):
    (tmp_path / "ray_plan.json").write_text('{"question_ids": [1], "blocks": [[0, 1]]}')
    with pytest.raises(DataError, match="same dataset and workers"):
        write_store_ray(FACTORY, data, tmp_path, config=RayStoreConfig(workers=3), **OPTIONS)


def test_stores_and_settings_it_cannot_use_are_refused(cluster, data, reference, tmp_path):
    with pytest.raises(DataError, match="written by write_store in one process"):
        write_store_ray(FACTORY, data, reference.path, **OPTIONS)
    with pytest.raises(InputError, match="asks for 4 GPUs but the Ray cluster has"):  # would wait forever
        write_store_ray(FACTORY, data, tmp_path / "gpu", config=RayStoreConfig(workers=1, gpus_per_worker=4),
                        **OPTIONS)
    with pytest.raises(InputError, match="empty dataset"):
        write_store_ray(FACTORY, _Empty(), tmp_path / "empty", **OPTIONS)


def test_bad_config_is_refused():
    with pytest.raises(Exception, match="RayConfig.workers must be an int >= 1"):
        RayStoreConfig(workers=0)
