"""A dataset-scale activation store: stream ``run_with_cache`` over a dataset into safetensors shards.

:func:`write_store` runs the model over a dataset batch by batch and writes the chosen
sites' activations in shards of ``shard_size`` samples (one tensor per site per shard,
plus a ``question_id`` tensor), updating ``manifest.json`` after each shard. Both files
are written to a temporary name and moved into place with ``os.replace``, so a run
killed at any moment leaves a store whose manifest lists only complete shards; running
the same call again resumes after them without losing or duplicating a sample. At most
one shard is held in memory, whatever the dataset size, plus the batches whose inputs are
prepared ahead of the forward (on a thread, or in ``workers`` processes).

:class:`ActivationStore` reads a store back: ``load(site)`` gives ``n ...`` for all
samples in stored order, ``iter_batches(site, batch_size)`` streams it.

Examples:
    >>> import tempfile
    >>> from vlmlens.data import synth_pope
    >>> from vlmlens.testing import tiny_vlm
    >>> model, ds = tiny_vlm("llava"), synth_pope("random", n_images=1).subset(3)
    >>> out = tempfile.mkdtemp()
    >>> info = write_store(model, ds, out, sites=["text.blocks.1.hook_resid_post"], progress=False)
    >>> store = ActivationStore(out)
    >>> len(store), tuple(store.load("text.blocks.1.hook_resid_post").shape)
    (3, (3, 64))
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from vlmlens.errors import DataError, InputError, SiteNotFoundError
from vlmlens.inputs import Batch, prepare_batch
from vlmlens.ops.cache import SiteSpec, run_with_cache, select_sites
from vlmlens.ops.positions import Positions
from vlmlens.progress import progress_bar
from vlmlens.sites import Site, Tower

__all__ = ["STORE_FORMAT", "ActivationStore", "StoreInfo", "write_store"]

logger = logging.getLogger(__name__)

STORE_FORMAT = "vlmlens-activation-store/1"
"""The ``format`` field of a store's manifest; readers refuse other values."""

MANIFEST = "manifest.json"
_IDS = "question_id"
_SHARD_GLOB = "shard-*.safetensors"
# Header fields that must match for a run to resume an existing store.
IDENTITY = ("model", "sites", "positions", "suffix", "dtype")


@runtime_checkable
class StoreDataset(Protocol):
    """What :func:`write_store` needs from a dataset (a :class:`~vlmlens.data.PopeDataset` fits).

    Attributes:
        items: the samples in order; each has an int ``question_id`` (unique) and a ``text``.
    """

    items: Sequence[Any]

    def image(self, item: Any) -> Any:
        """The PIL image (or list of images) of one item."""


@dataclass(frozen=True, kw_only=True)
class StoreInfo:
    """What :func:`write_store` left on disk.

    Attributes:
        path: the store's folder (open it with :class:`ActivationStore`).
        sites: the stored sites, in forward order.
        n_rows: samples in the store.
        n_shards: complete shards in the store.
        new_rows: samples this call wrote (0 when resuming a complete store).
    """

    path: Path
    sites: tuple[Site, ...]
    n_rows: int
    n_shards: int
    new_rows: int

    def __post_init__(self) -> None:
        if not 0 <= self.new_rows <= self.n_rows:
            raise DataError(f"StoreInfo.new_rows must be in [0, n_rows={self.n_rows}], got {self.new_rows}")
        if self.n_shards < 0:
            raise DataError(f"StoreInfo.n_shards must be >= 0, got {self.n_shards}")


def write_store(
    model: Any,
    dataset: StoreDataset,
    out_dir: str | Path,
    *,
    sites: SiteSpec,
    positions: Positions = "last",
    batch_size: int = 8,
    shard_size: int = 256,
    suffix: bool = False,
    dtype: torch.dtype | None = None,
    resume: bool = True,
    progress: bool = True,
    workers: int = 0,
) -> StoreInfo:
    """Cache sites over a whole dataset into safetensors shards, resumably.

    Args:
        model: a HookedVLM.
        dataset: ``items`` (each with ``question_id`` and ``text``) and ``image(item)``,
            e.g. :func:`vlmlens.data.synth_pope` or :func:`vlmlens.data.load_pope`.
        out_dir: the store's folder (created if missing).
        sites: which sites (see :data:`vlmlens.ops.cache.SiteSpec`); ``None`` is refused
            (every site of a model is rarely what a store should hold).
        positions: text positions kept per sample, as in :func:`run_with_cache`. Every
            sample must give the same shape: ``"last"``, ``"image"`` (equal-size images) or
            fixed indices; ``"all"`` works only when every batch pads to the same length.
        batch_size: samples per forward.
        shard_size: samples per shard file (and the most ever buffered in memory).
        suffix: append POPE's answer instruction to each question (as ``model.prepare``).
        dtype: store activations in this dtype (e.g. ``torch.float16``); ``None`` keeps the model's.
        resume: continue an existing store in ``out_dir`` (skipping stored question ids); with
            ``False`` an existing store there is deleted and written again.
        progress: show a tqdm progress bar.
        workers: processes that read and process inputs ahead of the forward (a
            ``DataLoader``); 0 uses one thread in this process. Worth it where the image
            processing of a batch takes longer than its forward (small models on a GPU); the
            dataset must then work in a forked process.

    Returns:
        A :class:`StoreInfo` describing the store.

    Raises:
        InputError: bad arguments, or a site gives samples of different shapes.
        DataError: ``out_dir`` holds a store written with a different model, sites,
            positions, suffix or dtype; or the dataset repeats a question id.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be an int >= 1, got {shard_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InputError(f"workers must be an int >= 0 (0: prepare on a thread), got {workers!r}")
    if sites is None:
        raise InputError("write_store needs sites=...: a name, a list, or a predicate such as "
                         "lambda s: s.point.short == 'resid_post'")
    items = checked_items(dataset)
    chosen = select_sites(model, sites)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(model, chosen, positions, suffix, dtype)
    manifest = read_manifest(out) if (out / MANIFEST).exists() else None
    if manifest is not None and "parts" in manifest:
        raise DataError(f"{out} holds a store written by write_store_ray (in parts); extend it with write_store_ray "
                        "and the same arguments, or choose another out_dir")
    if manifest is not None and not resume:
        delete_store(out, manifest)
        manifest = None
    if manifest is not None:
        _check_identity(out, manifest, header)
    else:
        manifest = {"format": STORE_FORMAT, **header, "shapes": None, "n_rows": 0, "shards": []}
    _remove_stale(out, manifest)
    done = set(_stored_ids(out, manifest).tolist())
    todo = [item for item in items if item.question_id not in done]
    if done:
        logger.info("resuming %s: %d of %d samples already stored", out, len(items) - len(todo), len(items))

    writer = _ShardWriter(out, manifest, chosen, shard_size)
    bar = progress_bar(total=len(items), initial=len(items) - len(todo), desc=f"store {out.name}", unit="sample",
                       progress=progress)
    with bar, contextlib.closing(_prepared(model, dataset, todo, batch_size, suffix, workers)) as batches:
        for chunk, batch in batches:
            # last=True: the store keeps no logits, so only the answer position is unembedded (a full
            # batch seq vocab tensor would be copied to the host for nothing: 1 GB a batch for PaliGemma).
            _, cache = run_with_cache(model, batch, sites=chosen, positions=positions, device="cpu", last=True)
            acts = {site: _per_sample(model, site, cache[site], batch) for site in chosen}
            if dtype is not None:
                acts = {site: act.to(dtype) for site, act in acts.items()}
            writer.add(acts, torch.tensor([item.question_id for item in chunk], dtype=torch.int64))
            bar.update(len(chunk))
        writer.finish()
    return StoreInfo(path=out, sites=tuple(chosen), n_rows=manifest["n_rows"],
                     n_shards=len(manifest["shards"]), new_rows=writer.new_rows)


class _ShardWriter:
    """Buffers at most one shard of rows and writes each full shard atomically."""

    def __init__(self, out: Path, manifest: dict[str, Any], sites: list[Site], shard_size: int) -> None:
        self.out, self.manifest, self.sites, self.shard_size = out, manifest, sites, shard_size
        self.parts: dict[Site, list[Tensor]] = {site: [] for site in sites}
        self.ids: list[Tensor] = []
        self.rows = 0
        self.new_rows = 0
        shapes = manifest["shapes"]
        self.shapes: dict[Site, tuple[tuple[int, ...], str]] | None = None if shapes is None else {
            Site.parse(name): (tuple(entry["shape"]), entry["dtype"]) for name, entry in shapes.items()}

    def add(self, acts: dict[Site, Tensor], ids: Int[Tensor, " batch"]) -> None:
        self._check_shapes(acts)
        for site in self.sites:
            self.parts[site].append(acts[site])
        self.ids.append(ids)
        self.rows += len(ids)
        while self.rows >= self.shard_size:
            self._flush(self.shard_size)

    def finish(self) -> None:
        if self.rows:
            self._flush(self.rows)

    def _check_shapes(self, acts: dict[Site, Tensor]) -> None:
        seen = {site: (tuple(act.shape[1:]), str(act.dtype).removeprefix("torch.")) for site, act in acts.items()}
        if self.shapes is None:
            self.shapes = seen
            self.manifest["shapes"] = {str(s): {"shape": list(shape), "dtype": dt} for s, (shape, dt) in seen.items()}
            return
        for site, (shape, dt) in seen.items():
            want_shape, want_dt = self.shapes[site]
            if shape != want_shape or dt != want_dt:
                raise InputError(
                    f"{site}: this batch gives per-sample shape {shape} ({dt}), earlier samples gave {want_shape} "
                    f"({want_dt}); every sample of a store must have the same shape. With positions='all' the "
                    "padded length varies between batches: store positions='last', 'image' or fixed indices instead"
                )

    def _flush(self, n: int) -> None:
        tensors: dict[str, Tensor] = {}
        for site in self.sites:
            joined = torch.cat(self.parts[site])
            tensors[str(site)] = joined[:n].contiguous()
            self.parts[site] = [joined[n:].clone()] if len(joined) > n else []
        ids = torch.cat(self.ids)
        tensors[_IDS] = ids[:n].clone()
        self.ids = [ids[n:].clone()] if len(ids) > n else []
        self.rows -= n
        shards = self.manifest["shards"]
        name = f"shard-{len(shards):05d}.safetensors"
        tmp = self.out / f"{name}.tmp"
        save_file(tensors, str(tmp), metadata={"format": STORE_FORMAT})
        os.replace(tmp, self.out / name)
        # The manifest names a shard only once its file is complete, so a crash in
        # between leaves an unlisted file that the next run overwrites.
        shards.append({"file": name, "rows": n})
        self.manifest["n_rows"] += n
        write_json(self.out / MANIFEST, self.manifest)
        self.new_rows += n


class ActivationStore:
    """Read a store written by :func:`write_store`.

    Rows are in stored order (dataset order for an uninterrupted run; a resumed run
    appends the samples it had not stored yet); ``question_ids[i]`` names row ``i``.

    Args:
        path: the store's folder.

    Raises:
        DataError: no manifest, an unknown format, or a shard file missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST).exists():
            raise DataError(f"{self.path} has no {MANIFEST}: it is not an activation store, or no shard of it "
                            "was completed yet; write one with vlmlens.ops.write_store()")
        self.manifest = read_manifest(self.path)
        for shard in self.manifest["shards"]:
            if not (self.path / shard["file"]).exists():
                raise DataError(f"store {self.path} lists shard {shard['file']} but the file is missing; "
                                "re-run write_store(..., resume=False) to rebuild it")
        self._ids: Tensor | None = None

    @property
    def sites(self) -> tuple[Site, ...]:
        """The stored sites, in forward order."""
        return tuple(Site.parse(name) for name in self.manifest["sites"])

    @property
    def positions(self) -> Any:
        """The ``positions`` the store was written with (as JSON: a name, an int or a list)."""
        return self.manifest["positions"]

    @property
    def model_info(self) -> dict[str, Any]:
        """Family, architecture, name and sizes of the model that wrote the store."""
        return dict(self.manifest["model"])

    @property
    def question_ids(self) -> Int[Tensor, " n"]:
        """The question id of every row, in stored order."""
        if self._ids is None:
            self._ids = _stored_ids(self.path, self.manifest)
        return self._ids

    def __len__(self) -> int:
        return int(self.manifest["n_rows"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={len(self)}, sites={len(self.sites)})"

    def shape(self, site: Site | str) -> tuple[int, ...]:
        """Shape of one row of a site (without the sample axis)."""
        key = self._key(site)
        return tuple(self.manifest["shapes"][key]["shape"]) if self.manifest["shapes"] else ()

    def load(self, site: Site | str) -> Tensor:
        """All rows of one site: ``n ...``, shards read in order into one preallocated tensor.

        Raises:
            SiteNotFoundError: the site is not in this store (the message lists the stored ones).
            DataError: a shard's row count disagrees with the manifest.
        """
        key = self._key(site)
        entry = self.manifest["shapes"]
        if entry is None:
            return torch.empty(0)
        out = torch.empty((len(self), *entry[key]["shape"]), dtype=getattr(torch, entry[key]["dtype"]))
        offset = 0
        for shard in self.manifest["shards"]:
            with safe_open(self.path / shard["file"], framework="pt") as f:
                part = f.get_tensor(key)
            self._check_rows(shard, part.shape[0])
            out[offset : offset + len(part)] = part
            offset += len(part)
        return out

    def iter_batches(self, site: Site | str, batch_size: int) -> Iterator[Tensor]:
        """Rows of one site in order, ``batch_size`` at a time (the last batch may be smaller).

        Only the rows of the current batch are read from disk (memory-mapped slices).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        key = self._key(site)
        pending: list[Tensor] = []
        count = 0
        for shard in self.manifest["shards"]:
            with safe_open(self.path / shard["file"], framework="pt") as f:
                sliced = f.get_slice(key)
                rows = sliced.get_shape()[0]
                self._check_rows(shard, rows)
                start = 0
                while start < rows:
                    take = min(batch_size - count, rows - start)
                    pending.append(sliced[start : start + take])
                    count += take
                    start += take
                    if count == batch_size:
                        yield torch.cat(pending) if len(pending) > 1 else pending[0]
                        pending, count = [], 0
        if pending:
            yield torch.cat(pending)

    def _key(self, site: Site | str) -> str:
        name = str(Site.parse(site))
        if name not in self.manifest["sites"]:
            stored = ", ".join(self.manifest["sites"][:8]) + (" ..." if len(self.manifest["sites"]) > 8 else "")
            raise SiteNotFoundError(f"{name} is not in the store at {self.path}; stored sites: {stored}")
        return name

    def _check_rows(self, shard: dict[str, Any], rows: int) -> None:
        if rows != shard["rows"]:
            raise DataError(f"shard {shard['file']} of {self.path} holds {rows} rows, its manifest says "
                            f"{shard['rows']}; the store was changed after writing: rebuild it with resume=False")


# ---------------------------------------------------------------- helpers
class _Chunks(torch.utils.data.Dataset):
    """Chunks of items, each read and processed into a CPU :class:`Batch` (in a worker process)."""

    def __init__(self, model: Any, dataset: Any, chunks: list[list[Any]], suffix: bool) -> None:
        self.adapter, self.config, self.processor = model.adapter, model.hf_model.config, model.processor
        self.dataset, self.chunks, self.suffix = dataset, chunks, suffix

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> Batch:
        chunk = self.chunks[index]
        return prepare_batch(self.adapter, self.config, self.processor, [self.dataset.image(i) for i in chunk],
                             [item.text for item in chunk], suffix=self.suffix)


def _prepared(model: Any, dataset: Any, todo: list[Any], batch_size: int, suffix: bool, workers: int
              ) -> Iterator[tuple[list[Any], Batch]]:
    """Each chunk of ``todo`` with its prepared batch, in order, prepared ahead of the caller.

    With ``workers=0`` the next chunk's images are read and processed on a worker thread
    while the caller runs the current one (one batch ahead). With ``workers > 0``, a
    ``torch.utils.data.DataLoader`` prepares chunks in that many processes (two batches
    ahead each), for input processing that takes longer than the forward.
    """
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    prepared = _Chunks(model, dataset, chunks, suffix)
    if workers > 0 and chunks:
        loader = torch.utils.data.DataLoader(prepared, batch_size=None, num_workers=min(workers, len(chunks)))
        for chunk, batch in zip(chunks, loader, strict=True):
            yield chunk, batch.to(model.device)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmlens-store") as pool:
        ahead = pool.submit(prepared.__getitem__, 0) if chunks else None
        for i, chunk in enumerate(chunks):
            batch = ahead.result()
            ahead = pool.submit(prepared.__getitem__, i + 1) if i + 1 < len(chunks) else None
            yield chunk, batch.to(model.device)


def checked_items(dataset: Any) -> list[Any]:
    if getattr(dataset, "items", None) is None or not callable(getattr(dataset, "image", None)):
        raise InputError(f"write_store needs a dataset with .items and .image(item) (e.g. vlmlens.data.synth_pope), "
                         f"got {type(dataset).__name__}")
    items = list(dataset.items)
    ids = [item.question_id for item in items]
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"the dataset repeats question_id {repeated}; a store keys samples by question id, "
                        "so ids must be unique")
    return items


def _positions_json(positions: Positions) -> Any:
    if positions is None:
        return "all"
    if isinstance(positions, (str, int)) and not isinstance(positions, bool):
        return positions
    if isinstance(positions, slice):
        return {"slice": [positions.start, positions.stop, positions.step]}
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        raise InputError("a bool position mask belongs to one batch; a store needs positions that hold for "
                         "every batch: a name ('last', 'image', 'question'), an int or a list of ints")
    return [int(p) for p in torch.as_tensor(positions).reshape(-1).tolist()]


def _header(model: Any, sites: list[Site], positions: Positions, suffix: bool, dtype: torch.dtype | None) -> dict:
    config = getattr(model.hf_model, "config", None)
    return {
        "model": {
            "family": model.family,
            "architecture": model.adapter.architecture,
            "name": getattr(config, "_name_or_path", "") or None,
            "n_layers": model.n_layers,
            "n_vision_layers": model.n_vision_layers,
            "d_model": model.d_model,
        },
        "sites": [str(s) for s in sites],
        "positions": _positions_json(positions),
        "suffix": bool(suffix),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
    }


def _per_sample(model: Any, site: Site, act: Tensor, batch: Batch) -> Tensor:
    """Give every site a leading sample axis.

    Text sites have one already. Vision and projector sites have one axis of images
    (one image per sample is required) or, for families whose vision tower has no batch
    axis (Qwen2-VL), a leading axis of 1 over all patches, split here into equal
    per-sample runs (its per-image attention sites are cached ``image ...`` already).
    """
    n = len(batch)
    if site.tower is Tower.TEXT:
        return act
    counts = [len(sample) for sample in batch.layout.images]
    if model.adapter.vision.batched:
        if act.shape[0] != n or any(c != 1 for c in counts):
            raise InputError(f"{site}: a store of vision or projector sites needs exactly one image per sample; "
                             f"got {sum(counts)} images for {n} samples")
        return act
    if model.runs_per_image(site):  # cached per image: ``image ...``
        if act.shape[0] != n or any(c != 1 for c in counts):
            raise InputError(f"{site}: a store of per-image vision attention sites needs exactly one image per "
                             f"sample; got {sum(counts)} images for {n} samples")
        return act
    tokens = {sum(span.n_tokens for span in sample) for sample in batch.layout.images}
    flat = act[0]  # ``1 patch ...``: every image's patches in one sequence
    if len(tokens) != 1 or flat.shape[0] % n:
        raise InputError(
            f"{site} has shape {tuple(act.shape)}: the {model.family} vision tower packs all images into one "
            "sequence, which splits into per-sample rows only when every sample's images have the same size; "
            "store it with images of equal size"
        )
    return flat.reshape(n, flat.shape[0] // n, *flat.shape[1:])


def read_manifest(out: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{out / MANIFEST} is not valid JSON ({err}); the store is damaged") from None
    if manifest.get("format") != STORE_FORMAT:
        raise DataError(f"{out / MANIFEST} has format {manifest.get('format')!r}, expected {STORE_FORMAT!r}; "
                        "it was written by another tool or version")
    return manifest


def _check_identity(out: Path, manifest: dict[str, Any], header: dict[str, Any]) -> None:
    for field in IDENTITY:
        if manifest.get(field) != header[field]:
            raise DataError(
                f"the store at {out} was written with {field}={manifest.get(field)!r}, this call has "
                f"{field}={header[field]!r}; resume only with the same model, sites, positions, suffix and dtype, "
                "or pass resume=False to overwrite it, or choose another out_dir"
            )


def _stored_ids(out: Path, manifest: dict[str, Any]) -> Int[Tensor, " n"]:
    parts = []
    for shard in manifest["shards"]:
        path = out / shard["file"]
        if not path.exists():
            raise DataError(f"store {out} lists shard {shard['file']} but the file is missing; "
                            "pass resume=False to rebuild the store")
        with safe_open(path, framework="pt") as f:
            parts.append(f.get_tensor(_IDS))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def _remove_stale(out: Path, manifest: dict[str, Any]) -> None:
    """Delete shard files the manifest does not list (left by a run killed mid-shard)."""
    listed = {shard["file"] for shard in manifest["shards"]}
    for path in [*out.glob(_SHARD_GLOB), *out.glob(f"{_SHARD_GLOB}.tmp"), out / f"{MANIFEST}.tmp"]:
        if path.exists() and path.name not in listed:
            path.unlink()


def delete_store(out: Path, manifest: dict[str, Any]) -> None:
    for shard in manifest["shards"]:
        (out / shard["file"]).unlink(missing_ok=True)
    (out / MANIFEST).unlink()


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
