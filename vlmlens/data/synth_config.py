"""Configuration of SynthPOPE generation: one frozen, validated dataclass.

Examples:
    >>> from vlmlens.data.synth_config import SynthConfig
    >>> SynthConfig(image_size=96).clutter
    (3, 5)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmlens.data.objects import VOCABULARY
from vlmlens.errors import DataError


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Knobs of SynthPOPE generation (shared by all three splits).

    Attributes:
        n_images: Number of images (POPE uses 500).
        seed: Seed of everything random; same seed, same bytes.
        image_size: Side of the square images, in pixels.
        questions_per_image: Yes questions per image, and as many no questions.
        object_scale: ``(min, max)`` of an object's longer side, as a fraction of the
            image side.
        clutter: ``(min, max)`` objects per image (inclusive). ``min`` must be at least
            ``questions_per_image``.
        noise: Standard deviation of Gaussian pixel noise, as a fraction of 255.
        contrast: Objects' colour strength against the backdrop, in ``(0, 1]``.
        occlusion: Largest fraction of an object's silhouette (in pixels) that objects
            drawn over it may hide, in ``[0, 1)``; ``0`` keeps the objects' boxes apart
            with a one-pixel gap. Every object keeps at least ``1 - occlusion`` of itself
            in view, so yes answers stay answerable.
        off_scene_rate: Chance that an object comes from outside its scene type.
        scene_background: Tint each backdrop by scene type (a context cue); else grey.

    Examples:
        >>> SynthConfig(image_size=96, noise=0.0).object_scale
        (0.18, 0.3)
    """

    n_images: int = 500
    seed: int = 0
    image_size: int = 64
    questions_per_image: int = 3
    object_scale: tuple[float, float] = (0.18, 0.3)
    clutter: tuple[int, int] = (3, 5)
    noise: float = 0.04
    contrast: float = 1.0
    occlusion: float = 0.0
    off_scene_rate: float = 0.15
    scene_background: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, need: str) -> None:
            raise DataError(f"SynthConfig.{name} must be {need}, got {getattr(self, name)!r}")

        if not _is_int(self.n_images) or self.n_images < 1:
            fail("n_images", "an int >= 1")
        if not _is_int(self.seed) or self.seed < 0:
            fail("seed", "an int >= 0")
        if not _is_int(self.image_size) or not 16 <= self.image_size <= 1024:
            fail("image_size", "an int in [16, 1024] (pixels)")
        if not _is_int(self.questions_per_image) or self.questions_per_image < 1:
            fail("questions_per_image", "an int >= 1")
        s = self.object_scale
        if not (isinstance(s, tuple) and len(s) == 2 and all(_is_num(x) for x in s) and 0.05 <= s[0] <= s[1] <= 0.6):
            fail("object_scale", "a tuple (min, max) with 0.05 <= min <= max <= 0.6")
        if s[0] * self.image_size < 6:
            raise DataError(
                f"SynthConfig.object_scale min {s[0]} gives objects of {s[0] * self.image_size:.1f} px at "
                f"image_size {self.image_size}; need >= 6 px: raise image_size or object_scale"
            )
        c, q, v = self.clutter, self.questions_per_image, len(VOCABULARY)
        if not (isinstance(c, tuple) and len(c) == 2 and all(_is_int(x) for x in c) and c[0] <= c[1]):
            fail("clutter", "a tuple (min, max) of ints with min <= max")
        if c[0] < q:
            raise DataError(
                f"SynthConfig.clutter min {c[0]} is below questions_per_image {q}: every image needs at least "
                f"{q} objects for its yes questions; raise clutter or lower questions_per_image"
            )
        if c[1] + q > v:
            raise DataError(
                f"SynthConfig.clutter max {c[1]} leaves fewer than {q} absent objects (vocabulary has {v}) "
                "for the no questions; lower clutter or questions_per_image"
            )
        if not _is_num(self.noise) or not 0.0 <= self.noise <= 0.5:
            fail("noise", "a number in [0, 0.5] (fraction of 255)")
        if not _is_num(self.contrast) or not 0.0 < self.contrast <= 1.0:
            fail("contrast", "a number in (0, 1]")
        if not _is_num(self.occlusion) or not 0.0 <= self.occlusion < 1.0:
            fail("occlusion", "a number in [0, 1)")
        if not _is_num(self.off_scene_rate) or not 0.0 <= self.off_scene_rate <= 1.0:
            fail("off_scene_rate", "a probability in [0, 1]")
        if not isinstance(self.scene_background, bool):
            fail("scene_background", "a bool")
        if self.occlusion == 0.0 and c[1] * s[1] ** 2 > 0.5:
            raise DataError(
                f"SynthConfig is too crowded to keep objects apart: clutter max {c[1]} objects of up to "
                f"{s[1]:.2f} of the image side; lower clutter or object_scale, or allow occlusion > 0"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise DataError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown SynthConfig key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
