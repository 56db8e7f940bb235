"""POPE question files: typed items, a dataset, and a strict loader.

A POPE question file is JSON Lines (despite the ``.json`` suffix), one question a line::

    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
     "text": "Is there a snowboard in the image?", "label": "yes"}

:func:`load_pope` checks every line and raises :class:`~vlmlens.errors.DataError` naming
the file and the 1-based line number of the first bad one; nothing is silently dropped.

Examples:
    >>> import json, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> row = {"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "no"}
    >>> _ = (d / "coco_pope_random.json").write_text(json.dumps(row) + "\\n")
    >>> ds = load_pope(d / "coco_pope_random.json", None, check_images=False)
    >>> len(ds), ds.split, ds[0].object_name, ds.labels
    (1, 'random', 'dog', ('no',))
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from vlmlens.data.scene import SceneTruth, load_truth
from vlmlens.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

Label = Literal["yes", "no"]
Split = Literal["random", "popular", "adversarial"]
SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
"""The three POPE splits (negative-sampling strategies)."""

REQUIRED_KEYS: tuple[str, ...] = ("question_id", "image", "text", "label")

# "an" is accepted before any word: the real random split has "Is there an traffic light ...".
_QUESTION = re.compile(r"^Is there an? (?P<object>.+?) in the image\?$")


def parse_object_name(question: str) -> str | None:
    """The object of a POPE question ``"Is there a/an X in the image?"``, else ``None``.

    Examples:
        >>> parse_object_name("Is there a dining table in the image?")
        'dining table'
        >>> parse_object_name("What colour is the bus?") is None
        True
    """
    m = _QUESTION.match(question)
    return m.group("object") if m else None


@dataclass(frozen=True, kw_only=True)
class PopeItem:
    """One POPE question.

    Attributes:
        question_id: Integer id from the file (unique within a dataset).
        image: Image file name as written in the file.
        text: The question.
        label: Ground-truth answer, ``"yes"`` or ``"no"``.
        object_name: Object asked about, parsed from the standard question wording;
            ``None`` when the text does not follow it.
        image_path: Where the image lives on disk, or ``None`` (no image directory, an
            in-memory synthetic image, or an image embedded in a Hugging Face dataset).
            Not part of equality: the same question stored elsewhere is the same item.
    """

    question_id: int
    image: str
    text: str
    label: Label
    object_name: str | None = None
    image_path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.question_id, int) or isinstance(self.question_id, bool):
            raise DataError(f"question_id must be an int, got {self.question_id!r}")
        if not isinstance(self.image, str) or not self.image:
            raise DataError(f"image must be a non-empty string, got {self.image!r}")
        if not isinstance(self.text, str) or not self.text:
            raise DataError(f"text must be a non-empty string, got {self.text!r}")
        if self.label not in ("yes", "no"):
            raise DataError(f"label must be 'yes' or 'no' (lowercase, as in POPE), got {self.label!r}")


@dataclass(frozen=True, kw_only=True, eq=False)
class PopeDataset:
    """An ordered, immutable collection of POPE questions with access to their images.

    Attributes:
        items: The questions, in file order.
        split: ``"random"``, ``"popular"``, ``"adversarial"`` or ``None`` when unknown.
        truths: Per-image ground truth by image name (SynthPOPE only), else ``None``.

    Examples:
        >>> ds = PopeDataset(items=(PopeItem(question_id=1, image="a.jpg",
        ...                  text="Is there a cat in the image?", label="yes"),))
        >>> [it.label for it in ds], ds.ground_truth("a.jpg") is None
        (['yes'], True)
    """

    items: tuple[PopeItem, ...]
    split: str | None = None
    truths: Mapping[str, SceneTruth] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.items, tuple) or not all(isinstance(i, PopeItem) for i in self.items):
            raise DataError(
                f"items must be a tuple of PopeItem, got {type(self.items).__name__}; wrap a list with tuple(...)"
            )
        if len({i.question_id for i in self.items}) != len(self.items):
            raise DataError("question_id values must be unique within a dataset; found duplicates")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PopeItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> PopeItem:
        """The question at position ``index`` (negative counts from the end)."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(
                f"index a PopeDataset with an int, got {type(index).__name__}; use .select(indices) for many"
            )
        return self.items[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, questions={len(self)}, images={len(self.image_names)})"

    @property
    def labels(self) -> tuple[Label, ...]:
        """Ground-truth labels, in item order."""
        return tuple(i.label for i in self.items)

    @property
    def image_names(self) -> tuple[str, ...]:
        """Distinct image names, in order of first appearance."""
        return tuple(dict.fromkeys(i.image for i in self.items))

    @functools.cached_property
    def _first_item_of(self) -> dict[str, PopeItem]:
        out: dict[str, PopeItem] = {}
        for i in self.items:
            out.setdefault(i.image, i)
        return out

    def item(self, key: PopeItem | int) -> PopeItem:
        """Resolve a position or an item to an item of this dataset."""
        return key if isinstance(key, PopeItem) else self[key]

    def image(self, key: PopeItem | int | str) -> Image.Image:
        """The image of a question, as an RGB PIL image.

        Args:
            key: A :class:`PopeItem`, a position in this dataset, or an image name.

        Returns:
            A fully loaded RGB ``PIL.Image.Image``.

        Raises:
            DataError: If the image cannot be found or read.
        """
        if isinstance(key, str):
            try:
                return self._open(self._first_item_of[key])
            except KeyError:
                raise DataError(f"no question in this dataset uses image {key!r}") from None
        return self._open(self.item(key))

    def ground_truth(self, image: PopeItem | int | str) -> SceneTruth | None:
        """Per-image ground truth (object boxes and masks) if the dataset has it.

        Args:
            image: An image name, an item, or a position.

        Returns:
            The :class:`SceneTruth`, or ``None`` for real POPE (COCO) data.

        Raises:
            DataError: If the dataset has truths but none for this image.
        """
        if self.truths is None:
            return None
        name = image if isinstance(image, str) else self.item(image).image
        try:
            return self.truths[name]
        except KeyError:
            raise DataError(f"no ground truth for image {name!r} in this dataset") from None

    def select(self, indices: Iterable[int]) -> PopeDataset:
        """A new dataset of the questions at ``indices`` (in the order given).

        Raises:
            DataError: If an index is out of range or repeated.
        """
        idx = list(indices)
        n = len(self.items)
        bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
        if bad:
            raise DataError(f"select: indices must be ints in [-{n}, {n}), got {bad[:5]}")
        norm = [i % n for i in idx]
        if len(set(norm)) != len(norm):
            raise DataError("select: indices must not repeat (question ids must stay unique)")
        return self._with_items(tuple(self.items[i] for i in norm))

    def subset(self, n: int) -> PopeDataset:
        """The first ``n`` questions (file order keeps each image's questions together).

        Raises:
            DataError: If ``n`` is not in ``[1, len(self)]``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self):
            raise DataError(f"subset: n must be an int in [1, {len(self)}], got {n!r}")
        return self._with_items(self.items[:n])

    def to_frame(self) -> pd.DataFrame:
        """The questions as a pandas DataFrame, one row per item."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "question_id": i.question_id,
                    "image": i.image,
                    "text": i.text,
                    "label": i.label,
                    "object_name": i.object_name,
                }
                for i in self.items
            ]
        )

    def _with_items(self, items: tuple[PopeItem, ...]) -> PopeDataset:
        truths = self.truths
        if truths is not None:
            used = {i.image for i in items}
            truths = {k: v for k, v in truths.items() if k in used}
        return dataclasses.replace(self, items=items, truths=truths)

    def _open(self, item: PopeItem) -> Image.Image:
        if item.image_path is None:
            raise DataError(
                f"question {item.question_id} has no image path (image {item.image!r}); "
                "pass image_dir to load_pope"
            )
        try:
            with Image.open(item.image_path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DataError(f"image file not found: {item.image_path}") from None
        except OSError as err:
            raise DataError(f"cannot read image {item.image_path}: {err}") from err


def split_from_filename(path: str | Path) -> str | None:
    """Infer the split from a file name like ``coco_pope_adversarial.json`` or ``random.json``.

    Examples:
        >>> split_from_filename("coco_pope_popular.json"), split_from_filename("q.json")
        ('popular', None)
    """
    stem = Path(path).stem.lower()
    for s in SPLITS:
        if stem == s or stem.endswith("_" + s) or stem.endswith("-" + s):
            return s
    return None


def _parse_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{where}: invalid JSON ({err.msg} at column {err.colno}): {line[:80]!r}; "
            "POPE files hold one JSON object per line"
        ) from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}: {line[:80]!r}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise DataError(
            f"{where}: missing key(s) {missing}; every line needs {list(REQUIRED_KEYS)}, got {sorted(row)}"
        )
    qid = row["question_id"]
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise DataError(f"{where}: question_id must be an integer, got {qid!r}")
    for key in ("image", "text"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise DataError(f"{where}: {key!r} must be a non-empty string, got {row[key]!r}")
    if row["label"] not in ("yes", "no"):
        raise DataError(
            f"{where}: label must be 'yes' or 'no' (lowercase), got {row['label']!r}; fix the file"
        )
    return row


def load_pope(
    questions_file: str | Path,
    image_dir: str | Path | None,
    *,
    check_images: bool = True,
    split: str | None = None,
    truth_file: str | Path | None = None,
) -> PopeDataset:
    """Load a POPE question file (JSON Lines), checking every line.

    Blank lines are skipped (they hold no question). Keys other than the four required
    ones are ignored, with one warning logged per file.

    Args:
        questions_file: Path of the question file.
        image_dir: Folder holding the images named in the file, or ``None`` (then
            :meth:`PopeDataset.image` is unavailable and nothing is checked on disk).
        check_images: Verify now that every image file exists in ``image_dir``.
        split: Split name; inferred from the file name (``coco_pope_random.json``) if ``None``.
        truth_file: Optional ``truth.json`` written by :meth:`SynthPope.export`; gives
            the dataset per-image ground truth.

    Returns:
        A :class:`PopeDataset`.

    Raises:
        DataError: On a missing file, a malformed line (the message names the file and
            1-based line number), a duplicate question id, an empty file, or, with
            ``check_images``, a missing image (the message names it).
    """
    path = Path(questions_file)
    if not path.is_file():
        raise DataError(f"POPE question file not found: {path}")
    img_dir = None if image_dir is None else Path(image_dir)
    if check_images and img_dir is not None and not img_dir.is_dir():
        raise DataError(f"image directory not found: {img_dir}; pass the folder holding the images")
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown POPE split {split!r}; known: {', '.join(SPLITS)}")

    items: list[PopeItem] = []
    first_line: dict[int, int] = {}
    extra_keys: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            row = _parse_line(line, where)
            qid = row["question_id"]
            if qid in first_line:
                raise DataError(f"{where}: duplicate question_id {qid} (first seen on line {first_line[qid]})")
            first_line[qid] = lineno
            extra_keys.update(k for k in row if k not in REQUIRED_KEYS)
            items.append(
                PopeItem(
                    question_id=qid,
                    image=row["image"],
                    text=row["text"],
                    label=row["label"],
                    object_name=parse_object_name(row["text"]),
                    image_path=None if img_dir is None else img_dir / row["image"],
                )
            )
    if not items:
        raise DataError(f"{path}: no questions found (the file is empty)")
    if extra_keys:
        logger.warning("%s: ignoring extra key(s) %s", path, sorted(extra_keys))

    if check_images and img_dir is not None:
        missing = [name for name in dict.fromkeys(i.image for i in items) if not (img_dir / name).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(
                f"image {missing[0]!r} named in {path} is missing from {img_dir}{more}; "
                "put the images there, or pass check_images=False to load questions only"
            )

    truths = None if truth_file is None else load_truth(truth_file)
    return PopeDataset(items=tuple(items), split=split or split_from_filename(path), truths=truths)
