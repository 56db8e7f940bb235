"""The activation store: write equals run_with_cache, resume after a crash loses and repeats nothing."""

import json
from types import SimpleNamespace

import pytest
import torch

from vlmlens.data import synth_pope
from vlmlens.errors import DataError, InputError, SiteNotFoundError
from vlmlens.ops import ActivationStore, run_with_cache, write_store
from vlmlens.testing import tiny_images

SITES = ["text.blocks.1.hook_resid_post", "text.blocks.0.mlp.hook_post", "projector.hook_out",
         "vision.blocks.0.hook_resid_post"]
TEXT_SITES = SITES[:2]


@pytest.fixture(scope="module")
def dataset():
    return synth_pope("adversarial", n_images=2, seed=0).subset(10)


class Crashing:
    """A dataset whose ``image()`` raises after ``limit`` calls: a run killed mid-way."""

    def __init__(self, dataset, limit):
        self.items, self._dataset, self._left = dataset.items, dataset, limit

    def image(self, item):
        if self._left == 0:
            raise KeyboardInterrupt("simulated kill")
        self._left -= 1
        return self._dataset.image(item)


class Listed:
    """A minimal dataset: questions over random images, explicit ids."""

    def __init__(self, questions, ids=None):
        ids = ids or list(range(1, len(questions) + 1))
        self.items = [SimpleNamespace(question_id=i, text=q) for i, q in zip(ids, questions)]
        self._images = dict(zip(ids, tiny_images(len(questions))))

    def image(self, item):
        return self._images[item.question_id]


def direct(model, dataset, sites, batch_size, positions="last"):
    """run_with_cache on the same batches, per-sample axes as the store keeps them."""
    out = {site: [] for site in sites}
    items = dataset.items
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = model.prepare([dataset.image(i) for i in chunk], [i.text for i in chunk])
        _, cache = run_with_cache(model, batch, sites=sites, positions=positions)
        for site in sites:
            act = cache[site]
            if not site.startswith("text") and act.shape[0] != len(chunk):  # Qwen2-VL: ``1 patch ...``, all images
                act = act[0].reshape(len(chunk), -1, *act.shape[2:])
            out[site].append(act)
    return {site: torch.cat(parts) for site, parts in out.items()}


def test_write_then_read_equals_run_with_cache(model, dataset, tmp_path):
    info = write_store(model, dataset, tmp_path, sites=SITES, batch_size=4, shard_size=4, progress=False)
    assert (info.n_rows, info.n_shards, info.new_rows) == (10, 3, 10)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["model"]["family"] == model.family
    store = ActivationStore(tmp_path)
    assert len(store) == 10
    assert store.sites == tuple(sorted((model.site(s) for s in SITES), key=model.site_order))
    assert store.question_ids.tolist() == [i.question_id for i in dataset.items]
    want = direct(model, dataset, SITES, batch_size=4)
    for site in SITES:
        got = store.load(site)
        assert got.shape == want[site].shape, site
        assert torch.equal(got, want[site]), site
        assert store.shape(site) == tuple(got.shape[1:])
        batches = list(store.iter_batches(site, 3))
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        assert torch.equal(torch.cat(batches), got)


def test_shards_split_batches_and_dtype(model, dataset, tmp_path):
    write_store(model, dataset, tmp_path, sites=TEXT_SITES, batch_size=3, shard_size=4, dtype=torch.float16,
                progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 2]
    store = ActivationStore(tmp_path)
    got = store.load(TEXT_SITES[0])
    assert got.dtype == torch.float16
    want = direct(model, dataset, TEXT_SITES, batch_size=3)[TEXT_SITES[0]]
    assert torch.equal(got, want.half())


def test_resume_after_kill_loses_and_repeats_nothing(model, dataset, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    write_store(model, dataset, full, sites=TEXT_SITES, batch_size=3, shard_size=4, progress=False)
    # Killed while reading the 3rd batch: one 4-row shard is complete, 2 buffered rows are lost.
    with pytest.raises(KeyboardInterrupt):
        write_store(model, Crashing(dataset, 7), killed, sites=TEXT_SITES, batch_size=3, shard_size=4, progress=False)
    assert ActivationStore(killed).question_ids.tolist() == [1, 2, 3, 4]
    # A run killed between writing a shard file and listing it leaves an unlisted file behind.
    (killed / "shard-00001.safetensors").write_bytes(b"partial garbage")
    (killed / "shard-00007.safetensors.tmp").write_bytes(b"partial garbage")
    info = write_store(model, dataset, killed, sites=TEXT_SITES, batch_size=3, shard_size=4, progress=False)
    assert (info.n_rows, info.new_rows) == (10, 6)
    assert not (killed / "shard-00007.safetensors.tmp").exists()
    a, b = ActivationStore(full), ActivationStore(killed)
    assert b.question_ids.tolist() == a.question_ids.tolist() == [i.question_id for i in dataset.items]
    for site in TEXT_SITES:
        # Resumed batches group samples differently, so allow float rounding only.
        torch.testing.assert_close(b.load(site), a.load(site), atol=1e-5, rtol=1e-5)
    again = write_store(model, dataset, killed, sites=TEXT_SITES, batch_size=3, shard_size=4, progress=False)
    assert (again.n_rows, again.new_rows) == (10, 0)
    assert len(ActivationStore(killed).question_ids.unique()) == 10


def test_resume_false_rewrites(model, dataset, tmp_path):
    small = synth_pope("adversarial", n_images=2, seed=0).subset(3)
    write_store(model, small, tmp_path, sites=TEXT_SITES[:1], progress=False)
    info = write_store(model, small, tmp_path, sites=TEXT_SITES[:1], resume=False, progress=False)
    assert (info.n_rows, info.new_rows, info.n_shards) == (3, 3, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00000.safetensors"]


def test_errors(model, dataset, tmp_path):
    small = synth_pope("adversarial", n_images=2, seed=0).subset(3)
    write_store(model, small, tmp_path, sites=TEXT_SITES[:1], progress=False)
    store = ActivationStore(tmp_path)
    with pytest.raises(SiteNotFoundError, match=r"text.blocks.0.hook_resid_pre is not in the store .* stored sites: "
                                                r"text.blocks.1.hook_resid_post"):
        store.load("text.blocks.0.hook_resid_pre")
    with pytest.raises(DataError, match=r"written with sites=\['text.blocks.1.hook_resid_post'\], this call has "
                                        r"sites=\['text.blocks.0.hook_resid_post'\]"):
        write_store(model, small, tmp_path, sites=["text.blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(DataError, match="written with positions='last', this call has positions='image'"):
        write_store(model, small, tmp_path, sites=TEXT_SITES[:1], positions="image", progress=False)
    with pytest.raises(DataError, match="has no manifest.json: it is not an activation store"):
        ActivationStore(tmp_path / "nothing")
    with pytest.raises(InputError, match="shard_size must be an int >= 1, got 0"):
        write_store(model, small, tmp_path / "x", sites=TEXT_SITES, shard_size=0, progress=False)
    with pytest.raises(InputError, match="write_store needs sites="):
        write_store(model, small, tmp_path / "x", sites=None, progress=False)
    # Questions of different token counts pad to different lengths per batch.
    with pytest.raises(InputError, match="every sample of a store must have the same shape"):
        write_store(model, Listed(["Is there a cat?", "Is there a cat or a dog in the image today?"]), tmp_path / "all",
                    sites=TEXT_SITES[:1], positions="all", batch_size=1, progress=False)
    with pytest.raises(DataError, match="the dataset repeats question_id 1"):
        write_store(model, Listed(["Is there a cat?"] * 2, ids=[1, 1]), tmp_path / "dup", sites=TEXT_SITES,
                    progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0]["rows"] = 5
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="holds 3 rows, its manifest says 5"):
        ActivationStore(tmp_path).load(TEXT_SITES[0])


def test_worker_processes_write_the_same_store(model, dataset, tmp_path):
    write_store(model, dataset, tmp_path / "thread", sites=SITES, batch_size=4, shard_size=4, progress=False)
    write_store(model, dataset, tmp_path / "procs", sites=SITES, batch_size=4, shard_size=4, progress=False,
                workers=2)
    a, b = ActivationStore(tmp_path / "thread"), ActivationStore(tmp_path / "procs")
    assert b.question_ids.tolist() == a.question_ids.tolist() == [i.question_id for i in dataset.items]
    for site in SITES:
        assert torch.equal(b.load(site), a.load(site)), site
    with pytest.raises(InputError, match="workers must be an int >= 0"):
        write_store(model, dataset, tmp_path / "bad", sites=SITES, workers=-1)
