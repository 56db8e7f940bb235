"""The activation store, data-parallel on Ray: one HookedVLM replica per actor.

:func:`write_store_ray` splits a dataset into ``workers`` contiguous blocks of items; Ray
actors (:class:`~vlmlens.ray_pool.ActorPool`, one per block, or as many as the cluster holds
at once) each write a block with :func:`~vlmlens.ops.write_store` into its own part folder
(``part-00``, ``part-01``, ...) of the output folder. When every part is complete it writes
the output folder's ``manifest.json`` listing the parts' shards in dataset order, so
:class:`~vlmlens.ops.ActivationStore` reads the whole store as if one process had written
it: the same rows in the same order.

Nothing is lost or written twice when something dies:

* each part is an ordinary resumable store (shards and manifest written atomically);
* a part whose actor dies (a crash, ``ray.kill``, a lost node) goes to a fresh actor, up to
  ``max_restarts`` times, which resumes it after its last complete shard;
* a driver that dies leaves the parts as they were; the same call run again resumes every
  part and then writes the merged manifest.

Ray is an optional extra (``pip install vlmlens[ray]``). With Ray not yet initialised, the
call starts a local Ray instance for its own duration and shuts it down after. Models are
built inside the actors by ``model_factory``, a picklable zero-argument callable such as
``functools.partial(HookedVLM.from_pretrained, "llava-hf/llava-1.5-7b-hf", dtype="bfloat16",
device="cuda")``, with ``gpus_per_worker=1`` for one GPU per actor.

Examples:
    >>> import functools
    >>> from vlmlens.data import synth_pope
    >>> from vlmlens.testing import tiny_vlm
    >>> info = write_store_ray(functools.partial(tiny_vlm, "llava"), synth_pope("random", 2), "/tmp/store",
    ...                        sites=["text.blocks.1.hook_resid_post"])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmlens.errors import DataError, InputError
from vlmlens.ops.cache import SiteSpec
from vlmlens.ops.positions import Positions
from vlmlens.ops.store import (
    IDENTITY,
    MANIFEST,
    StoreInfo,
    checked_items,
    delete_store,
    read_manifest,
    write_json,
    write_store,
)
from vlmlens.ray_pool import ActorPool, RayConfig, import_ray, ray_session
from vlmlens.sites import Site

__all__ = ["RayConfig", "RayStoreConfig", "write_store_ray"]

logger = logging.getLogger(__name__)

PART = "part-{:02d}"
"""The folder of one actor's block of items, under the output folder."""

PLAN = "ray_plan.json"
"""The item order and blocks of a Ray store, written by its first run."""


RayStoreConfig = RayConfig
"""The name this config had before the VRP ran on Ray too (:class:`vlmlens.ray_pool.RayConfig`)."""


class _Block:
    """Items ``start:stop`` of a dataset (a dataset in the sense of ``write_store``)."""

    def __init__(self, dataset: Any, start: int, stop: int) -> None:
        self.dataset = dataset
        self.items = list(dataset.items[start:stop])

    def image(self, item: Any) -> Any:
        return self.dataset.image(item)


def _write_part(model: Any, start: int, stop: int, out: str, *, dataset: Any, options: dict[str, Any]) -> None:
    """An actor's task: write items ``start:stop`` into the part store ``out`` (resuming it)."""
    write_store(model, _Block(dataset, start, stop), out, progress=False, resume=True, **options)


def _plan(out: Path, ids: list[int], workers: int) -> list[tuple[int, int]]:
    """The blocks of this run, recorded in ``PLAN`` by the first run into ``out``; a later run
    (a resume) must split the same items the same way, or parts would overlap."""
    blocks = _blocks(len(ids), workers)
    plan = {"question_ids": [int(i) for i in ids], "blocks": [list(b) for b in blocks]}
    path = out / PLAN
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != plan:
            raise DataError(
                f"{out} holds a Ray store split into {len(recorded['blocks'])} parts over "
                f"{len(recorded['question_ids'])} items; this call splits {len(ids)} items into {len(blocks)} parts. "
                "Resume with the same dataset and workers, or choose another out_dir")
        return blocks
    write_json(path, plan)
    return blocks


def _blocks(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` blocks of ``n`` items, as even as possible, none empty."""
    k = min(workers, n)
    edges = [round(i * n / k) for i in range(k + 1)] if k else [0]
    return list(itertools.pairwise(edges))


def write_store_ray(
    model_factory: Callable[[], Any],
    dataset: Any,
    out_dir: str | Path,
    *,
    sites: SiteSpec,
    positions: Positions = "last",
    batch_size: int = 8,
    shard_size: int = 256,
    suffix: bool = False,
    dtype: Any = None,
    workers: int = 0,
    resume: bool = True,
    config: RayConfig | None = None,
) -> StoreInfo:
    """:func:`~vlmlens.ops.write_store` spread over Ray actors (module docs).

    Args:
        model_factory: builds the HookedVLM inside each actor (picklable, no arguments).
        dataset: as for ``write_store``; it is pickled to every actor.
        out_dir: the store's folder; ``part-NN`` folders and the merged manifest go here.
        sites, positions, batch_size, shard_size, suffix, dtype: as for ``write_store``
            (every part uses them; a part refuses to resume under other values).
        workers: input-processing processes per actor (``write_store``'s ``workers``).
        resume: continue the Ray store in ``out_dir``; with ``False`` its parts, plan and
            manifest are deleted first (and the items may be split anew).
        config: workers and their resources (:class:`~vlmlens.ray_pool.RayConfig`).

    Returns:
        A :class:`~vlmlens.ops.StoreInfo` of the merged store (``new_rows``: rows this call wrote).

    Raises:
        InputError: Ray is not installed, or bad arguments.
        DataError: a part holds a store written with other settings, or a part's actor died
            more than ``max_restarts`` times.
    """
    ray = import_ray("write_store_ray")
    config = config or RayConfig()
    if sites is None:
        raise InputError("write_store_ray needs sites=...: a name, a list, or a predicate on Site")
    items = checked_items(dataset)  # refuses repeated question ids, as write_store does
    if not items:
        raise InputError("write_store_ray got an empty dataset: there is nothing to store")
    out = Path(out_dir).resolve()  # the actors' part folders: an absolute path (on a shared filesystem)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists() and "parts" not in read_manifest(out):
        raise DataError(f"{out} holds a store written by write_store in one process; extend it with write_store, "
                        "or choose another out_dir")
    if not resume:
        _delete(out)
    options = {"sites": sites, "positions": positions, "batch_size": batch_size, "shard_size": shard_size,
               "suffix": suffix, "dtype": dtype, "workers": workers}
    blocks = _plan(out, [item.question_id for item in items], config.workers)
    before = sum(read_manifest(out / PART.format(i))["n_rows"] for i in range(len(blocks))
                 if (out / PART.format(i) / MANIFEST).exists())
    tasks = [(PART.format(i), (start, stop, str(out / PART.format(i)))) for i, (start, stop) in enumerate(blocks)]
    with ray_session(ray, len(blocks), config) as actors, ActorPool(ray, model_factory, config, size=actors) as pool:
        for _ in pool.map(_write_part, tasks, {"dataset": dataset, "options": options}):
            pass
    return _merge(out, len(blocks), before)


def _delete(out: Path) -> None:
    """Remove a Ray store's parts (their listed shards and manifests), plan and merged manifest."""
    for part in sorted(out.glob("part-[0-9][0-9]")):
        if (part / MANIFEST).exists():
            delete_store(part, read_manifest(part))
    for name in (PLAN, MANIFEST):
        (out / name).unlink(missing_ok=True)


def _merge(out: Path, n_parts: int, before: int) -> StoreInfo:
    """Write the manifest listing every part's shards, in part order (= dataset order).

    ``before``: the rows the parts held before this call (``new_rows`` is what it added).
    """
    parts = [read_manifest(out / PART.format(i)) for i in range(n_parts)]
    head = parts[0]
    for i, part in enumerate(parts[1:], 1):
        for key in (*IDENTITY, "shapes"):
            if part.get(key) != head.get(key):
                raise DataError(f"{PART.format(i)} of {out} has {key}={part.get(key)!r} but {PART.format(0)} has "
                                f"{head.get(key)!r}; every part of a store must match (with positions='all', "
                                "pad every batch to one length)")
    merged = {key: value for key, value in head.items() if key not in ("shards", "n_rows")}
    merged["shards"] = [{"file": f"{PART.format(i)}/{shard['file']}", "rows": shard["rows"]}
                        for i, part in enumerate(parts) for shard in part["shards"]]
    merged["n_rows"] = sum(part["n_rows"] for part in parts)
    merged["parts"] = [PART.format(i) for i in range(n_parts)]
    write_json(out / MANIFEST, merged)
    return StoreInfo(path=out, sites=tuple(Site.parse(s) for s in head["sites"]), n_rows=merged["n_rows"],
                     n_shards=len(merged["shards"]), new_rows=merged["n_rows"] - before)
