"""POPE from the Hugging Face Hub copy ``lmms-lab/POPE``, offline only.

That copy holds all three splits in one ``test`` table (9000 rows) with columns
``question_id`` (string), ``question``, ``answer``, ``image_source``, ``image`` (embedded
COCO image) and ``category`` (the split). vlmlens never downloads: fetch it once where
there is network, e.g.::

    pip install datasets
    huggingface-cli download lmms-lab/POPE --repo-type dataset

and :func:`load_pope_hf` reads the parquet files from the local Hub cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from PIL import Image

from vlmlens.data.pope import SPLITS, PopeDataset, PopeItem, parse_object_name
from vlmlens.errors import DataError

HF_REPO = "lmms-lab/POPE"
"""Hub id of the dataset read by :func:`load_pope_hf`."""

_HOW_TO_GET = (
    "with network access run `pip install datasets` and "
    f"`huggingface-cli download {HF_REPO} --repo-type dataset` (or "
    f"huggingface_hub.snapshot_download('{HF_REPO}', repo_type='dataset')), "
    "passing the same cache_dir if you use one"
)


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class HFPopeDataset(PopeDataset):
    """A :class:`PopeDataset` whose images are embedded in a Hugging Face table.

    Attributes:
        table: The ``datasets.Dataset`` rows of this split (with the ``image`` column).
        row_of: Row of ``table`` holding each image, by image name.
    """

    table: Any = field(default=None, repr=False)
    row_of: Mapping[str, int] = field(default_factory=dict, repr=False)

    def _open(self, item: PopeItem) -> Image.Image:
        try:
            row = self.row_of[item.image]
        except KeyError:
            raise DataError(f"image {item.image!r} is not in the Hugging Face table") from None
        image = self.table[row]["image"]
        if not isinstance(image, Image.Image):
            raise DataError(f"row {row} of {HF_REPO} holds no decodable image (got {type(image).__name__})")
        return image.convert("RGB")


def load_pope_hf(split: str, cache_dir: str | Path | None = None) -> HFPopeDataset:
    """Load one POPE split from a locally cached copy of ``lmms-lab/POPE``.

    Nothing is downloaded: the Hub cache is read with ``local_files_only=True``.

    Args:
        split: ``"random"``, ``"popular"`` or ``"adversarial"``.
        cache_dir: Hugging Face Hub cache folder; ``None`` uses the default cache.

    Returns:
        A dataset of 3000 questions whose :meth:`~PopeDataset.image` returns the embedded
        COCO images.

    Raises:
        DataError: On an unknown split; if the ``datasets`` package is not installed; if
            the dataset is not in the local cache (the message says how to get it); or
            if a row is malformed.
    """
    if split not in SPLITS:
        raise DataError(f"unknown POPE split {split!r}; known: {', '.join(SPLITS)}")
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"load_pope_hf needs the `datasets` package, which is not installed; {_HOW_TO_GET}. "
            "Alternatively use load_pope() with the POPE JSON Lines files and the COCO val2014 images."
        ) from None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        root = snapshot_download(
            HF_REPO,
            repo_type="dataset",
            cache_dir=cache_dir,
            local_files_only=True,
            allow_patterns=["data/test-*.parquet"],
        )
    except LocalEntryNotFoundError:
        raise DataError(
            f"{HF_REPO} is not in the local Hugging Face cache "
            f"({'default cache' if cache_dir is None else cache_dir}) and vlmlens never downloads; {_HOW_TO_GET}"
        ) from None
    files = sorted(Path(root).glob("data/test-*.parquet"))
    if not files:
        raise DataError(f"{HF_REPO} snapshot at {root} holds no data/test-*.parquet files; {_HOW_TO_GET}")

    table = datasets.Dataset.from_parquet([str(f) for f in files], cache_dir=None if cache_dir is None else str(cache_dir))
    meta = table.remove_columns([c for c in table.column_names if c == "image"])
    rows = [i for i, c in enumerate(meta["category"]) if c == split]
    if not rows:
        raise DataError(f"{HF_REPO} has no rows with category {split!r}; its categories: {sorted(set(meta['category']))}")
    table = table.select(rows)
    meta = meta.select(rows)

    items: list[PopeItem] = []
    row_of: dict[str, int] = {}
    for r, rec in enumerate(meta):
        where = f"{HF_REPO} row {rows[r]}"
        try:
            qid = int(rec["question_id"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: question_id {rec['question_id']!r} is not an integer") from None
        label = str(rec["answer"]).strip()
        if label not in ("yes", "no"):
            raise DataError(f"{where}: answer must be 'yes' or 'no', got {rec['answer']!r}")
        image = str(rec["image_source"])
        row_of.setdefault(image, r)
        items.append(
            PopeItem(
                question_id=qid,
                image=image,
                text=str(rec["question"]),
                label=label,  # type: ignore[arg-type]
                object_name=parse_object_name(str(rec["question"])),
            )
        )
    return HFPopeDataset(items=tuple(items), split=split, table=table, row_of=row_of)
