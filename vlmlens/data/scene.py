"""Ground truth of a synthetic image: which objects are where, down to the pixel.

A :class:`SceneTruth` lists its objects in paint order (later objects are drawn on top),
each with an integer bounding box. Because every SynthPOPE shape is a fixed function of
its box, the visible pixel mask of each object follows from the truth alone; no pixel
arrays are stored, and a truth read back from ``truth.json`` gives the same masks.

Examples:
    >>> from vlmlens.data.scene import SceneObject, SceneTruth
    >>> truth = SceneTruth(
    ...     image_id="demo.png", size=(8, 8), scene_type="kitchen",
    ...     objects=(SceneObject(name="knife", bbox=(0, 0, 4, 8)),),
    ... )
    >>> truth.patch_mask("knife", grid=(2, 2)).tolist()
    [[True, False], [True, False]]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Bool

from vlmlens.data.objects import get_kind, shape_mask
from vlmlens.errors import DataError


@dataclass(frozen=True, kw_only=True)
class SceneObject:
    """One object instance in a synthetic image.

    Attributes:
        name: Object kind (a key of :data:`vlmlens.data.objects.KINDS`).
        bbox: ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
    """

    name: str
    bbox: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"SceneObject.name must be a non-empty string, got {self.name!r}")
        b = self.bbox
        if (
            not isinstance(b, tuple)
            or len(b) != 4
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in b)
        ):
            raise DataError(f"bbox of {self.name!r} must be a tuple of 4 ints (x0, y0, x1, y1), got {b!r}")
        if not (b[0] < b[2] and b[1] < b[3]):
            raise DataError(f"bbox of {self.name!r} must satisfy x0 < x1 and y0 < y1, got {b}")


@dataclass(frozen=True, kw_only=True)
class SceneTruth:
    """Ground truth of one synthetic image.

    Attributes:
        image_id: Image file name, equal to :attr:`PopeItem.image` of its questions.
        size: ``(width, height)`` in pixels (PIL's order).
        objects: The objects, in paint order (later ones drawn on top).
        scene_type: Scene type name (``"kitchen"``, ``"street"``, ...).
    """

    image_id: str
    size: tuple[int, int]
    objects: tuple[SceneObject, ...]
    scene_type: str

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, SceneObject) for o in self.objects):
            raise DataError(
                f"SceneTruth.objects must be a tuple of SceneObject, got {type(self.objects).__name__}"
            )
        if not (isinstance(self.size, tuple) and len(self.size) == 2 and all(isinstance(x, int) for x in self.size)):
            raise DataError(f"SceneTruth.size must be a tuple (width, height) of ints, got {self.size!r}")
        w, h = self.size
        if w < 1 or h < 1:
            raise DataError(f"SceneTruth.size must be positive (width, height), got {self.size}")
        for obj in self.objects:
            x0, y0, x1, y1 = obj.bbox
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise DataError(
                    f"object {obj.name!r} in {self.image_id!r} has bbox {obj.bbox} outside the "
                    f"{w}x{h} image"
                )

    @property
    def names(self) -> tuple[str, ...]:
        """Distinct object names present, in paint order."""
        return tuple(dict.fromkeys(o.name for o in self.objects))

    def has(self, name: str) -> bool:
        """Whether an object called ``name`` is in the image."""
        return any(o.name == name for o in self.objects)

    def visible_masks(self) -> tuple[Bool[np.ndarray, "height width"], ...]:
        """Visible pixel mask of every object (its silhouette minus what later objects cover).

        Returns:
            One ``(height, width)`` boolean mask per entry of :attr:`objects`.
        """
        w, h = self.size
        full = []
        for obj in self.objects:
            m = np.zeros((h, w), dtype=bool)
            x0, y0, x1, y1 = obj.bbox
            m[y0:y1, x0:x1] = shape_mask(obj.name, obj.bbox)
            full.append(m)
        covered = np.zeros((h, w), dtype=bool)
        visible: list[np.ndarray] = [np.empty(0)] * len(full)
        for i in range(len(full) - 1, -1, -1):
            visible[i] = full[i] & ~covered
            covered |= full[i]
        return tuple(visible)

    def object_mask(self, name: str) -> Bool[np.ndarray, "height width"]:
        """Visible pixels of object ``name`` (union over its instances).

        Raises:
            DataError: If no object called ``name`` is in the image.
        """
        self._require(name)
        masks = self.visible_masks()
        out = np.zeros((self.size[1], self.size[0]), dtype=bool)
        for obj, m in zip(self.objects, masks):
            if obj.name == name:
                out |= m
        return out

    def patch_mask(
        self, name: str, grid: tuple[int, int], *, min_coverage: float = 0.0
    ) -> Bool[np.ndarray, "rows cols"]:
        """Which patches of a ``rows x cols`` grid over the image the object covers.

        Patch ``(r, c)`` spans pixel rows ``[r*H//rows, (r+1)*H//rows)`` and the matching
        columns. A patch counts as covered when more than ``min_coverage`` of its pixels
        belong to the object's *visible* mask (occluded parts do not count).

        Args:
            name: Object name; must be present in the image.
            grid: ``(rows, cols)`` of the patch grid, e.g. ``(24, 24)`` for LLaVA-336.
            min_coverage: Fraction in ``[0, 1)``; ``0.0`` means any visible pixel.

        Returns:
            Boolean array of shape ``(rows, cols)``.

        Raises:
            DataError: If the object is absent, or the grid is finer than the image.

        Examples:
            >>> t = SceneTruth(image_id="x.png", size=(4, 4), scene_type="office",
            ...                objects=(SceneObject(name="phone", bbox=(2, 0, 4, 4)),))
            >>> t.patch_mask("phone", grid=(1, 2)).tolist()
            [[False, True]]
        """
        rows, cols = grid
        w, h = self.size
        if not (1 <= rows <= h and 1 <= cols <= w):
            raise DataError(
                f"patch grid {grid} does not fit a {w}x{h} image; need 1 <= rows <= {h} and 1 <= cols <= {w}"
            )
        if not 0.0 <= min_coverage < 1.0:
            raise DataError(f"min_coverage must be in [0, 1), got {min_coverage}")
        mask = self.object_mask(name).astype(np.int64)
        r_edges = np.arange(rows + 1) * h // rows
        c_edges = np.arange(cols + 1) * w // cols
        counts = np.add.reduceat(np.add.reduceat(mask, r_edges[:-1], axis=0), c_edges[:-1], axis=1)
        areas = np.outer(np.diff(r_edges), np.diff(c_edges))
        return counts / areas > min_coverage

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (inverse of :meth:`from_dict`)."""
        return {
            "image_id": self.image_id,
            "size": list(self.size),
            "scene_type": self.scene_type,
            "objects": [{"name": o.name, "bbox": list(o.bbox)} for o in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneTruth:
        """Build a truth from :meth:`to_dict` output; raises DataError when malformed."""
        try:
            return cls(
                image_id=str(data["image_id"]),
                size=(int(data["size"][0]), int(data["size"][1])),
                scene_type=str(data["scene_type"]),
                objects=tuple(
                    SceneObject(name=str(o["name"]), bbox=tuple(int(c) for c in o["bbox"]))  # type: ignore[arg-type]
                    for o in data["objects"]
                ),
            )
        except (KeyError, TypeError, IndexError, ValueError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(
                f"malformed scene truth {str(data)[:120]!r}: {err!r}; expected keys "
                "image_id, size [w, h], scene_type, objects [{name, bbox [x0, y0, x1, y1]}]"
            ) from err

    def _require(self, name: str) -> None:
        if not self.has(name):
            get_kind(name)  # an unknown kind gets the "known objects" message
            raise DataError(
                f"object {name!r} is not in image {self.image_id!r} (objects: {', '.join(self.names) or 'none'}); "
                "check truth.has(name) first"
            )


def load_truth(path: str | Path) -> dict[str, SceneTruth]:
    """Read a ``truth.json`` written by :meth:`SynthPope.export`.

    Args:
        path: The ``truth.json`` file.

    Returns:
        Scene truths by image file name, in file order.

    Raises:
        DataError: If the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ground-truth file not found: {path}; SynthPope.export writes it as DIR/truth.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        scenes = data["scenes"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a SynthPOPE truth file ({err!r}); expected a JSON object with 'scenes'") from err
    truths = [SceneTruth.from_dict(s) for s in scenes]
    return {t.image_id: t for t in truths}
