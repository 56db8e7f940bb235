"""SynthPOPE: procedurally drawn scenes with POPE-style questions and full ground truth.

Each image is a *scene type* (kitchen, street, park, office) holding 3-5 objects drawn
mostly from that type's own objects, sometimes from others, so objects co-occur the way
COCO objects do and overall object frequencies are uneven. Questions follow POPE exactly:
``questions_per_image`` yes questions about present objects and as many no questions
about absent ones, chosen per split:

* ``random``: absent objects drawn uniformly;
* ``popular``: the absent objects that appear in the most images of the dataset;
* ``adversarial``: the absent objects that co-occur most often (over the dataset's
  ground truth) with the objects present in the image.

The yes questions and the images are identical across splits for the same config.
Everything is seeded: the same config gives byte-identical images and questions.

Example:
    >>> ds = synth_pope("popular", n_images=4, seed=1)
    >>> len(ds), ds.labels[:2], ds[0].text.startswith("Is there a")
    (24, ('yes', 'no'), True)
    >>> ds.image(0).size, ds.ground_truth(ds[0]).scene_type in ("kitchen", "street", "park", "office")
    ((64, 64), True)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import UInt8
from PIL import Image

from vlmlens.data.objects import SCENE_TYPES, VOCABULARY, pope_question, shape_mask
from vlmlens.data.pope import SPLITS, PopeDataset, PopeItem, Split, load_pope
from vlmlens.data.render import render_scene
from vlmlens.data.scene import SceneObject, SceneTruth
from vlmlens.errors import DataError

TRUTH_FORMAT = "synthpope-truth/1"
_PLACE_TRIES = 200  # random positions tried per object before the layout restarts
_LAYOUT_RESTARTS = 50


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

    Example:
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


@dataclass(frozen=True, kw_only=True)
class SynthExport:
    """Where :meth:`SynthPope.export` wrote things (pass them to :func:`load_pope`)."""

    questions_file: Path
    image_dir: Path
    truth_file: Path


@dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class SynthPope(PopeDataset):
    """A SynthPOPE split: a :class:`PopeDataset` whose images are rendered on access.

    Attributes:
        config: The generation config; with :attr:`truths` it determines every pixel.
    """

    config: SynthConfig

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.truths is None:
            raise DataError("SynthPope needs truths (one SceneTruth per image)")
        missing = [n for n in self.image_names if n not in self.truths]
        if missing:
            raise DataError(f"SynthPope has questions about images without ground truth: {missing[:3]}")

    @property
    def scenes(self) -> tuple[SceneTruth, ...]:
        """Ground truth of every image, in image order."""
        return tuple((self.truths or {}).values())

    def array(self, key: PopeItem | int | str) -> UInt8[np.ndarray, "height width 3"]:
        """The image as an RGB uint8 array (what :meth:`image` wraps in PIL)."""
        name = key if isinstance(key, str) else self.item(key).image
        truth = (self.truths or {}).get(name)
        if truth is None:
            raise DataError(f"no image named {name!r} in this SynthPope")
        c = self.config
        return render_scene(truth, seed=c.seed, noise=c.noise, contrast=c.contrast, scene_background=c.scene_background)

    def _open(self, item: PopeItem) -> Image.Image:
        return Image.fromarray(self.array(item.image), mode="RGB")

    def export(self, directory: str | Path, *, overwrite: bool = False) -> SynthExport:
        """Write POPE-format questions, PNG images and ground truth to ``directory``.

        Writes ``{split}.json`` (JSON Lines: question_id, image, text, label),
        ``images/<image>`` (lossless PNG) and ``truth.json`` (config and scenes). The three
        splits of one config can share a directory: images and truth are identical.
        Round trip: ``load_pope(e.questions_file, e.image_dir)`` gives equal items and
        identical pixels.

        Args:
            directory: Output folder (created if needed).
            overwrite: Replace an existing question file or a different ``truth.json``.

        Returns:
            The written paths.

        Raises:
            DataError: If files from another export are in the way and ``overwrite`` is False.
        """
        out = Path(directory)
        qfile = out / f"{self.split}.json"
        tfile = out / "truth.json"
        idir = out / "images"
        truth_text = json.dumps(
            {"format": TRUTH_FORMAT, "config": self.config.to_dict(), "scenes": [t.to_dict() for t in self.scenes]},
            indent=1,
        )
        if not overwrite:
            if qfile.exists():
                raise DataError(f"{qfile} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
            if tfile.exists() and tfile.read_text(encoding="utf-8") != truth_text:
                raise DataError(
                    f"{tfile} holds a different SynthPOPE dataset (other config or images); "
                    "export to an empty folder or pass overwrite=True"
                )
        idir.mkdir(parents=True, exist_ok=True)
        for truth in self.scenes:
            Image.fromarray(self.array(truth.image_id), mode="RGB").save(idir / truth.image_id, format="PNG")
        tfile.write_text(truth_text, encoding="utf-8")
        lines = (
            json.dumps({"question_id": i.question_id, "image": i.image, "text": i.text, "label": i.label})
            for i in self.items
        )
        qfile.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return SynthExport(questions_file=qfile, image_dir=idir, truth_file=tfile)


def _object_weights(scene_index: int, off_scene_rate: float) -> np.ndarray:
    """Probability of each vocabulary object being drawn into a scene of this type."""
    names = [k.name for k in VOCABULARY]
    popularity = np.zeros(len(names))  # overall frequency of each object across types
    for st in SCENE_TYPES:
        total = sum(w for _, w in st.objects)
        for n, w in st.objects:
            popularity[names.index(n)] += st.prior * w / total
    own = np.zeros(len(names))
    for n, w in SCENE_TYPES[scene_index].objects:
        own[names.index(n)] = w
    other = np.where(own > 0, 0.0, popularity)
    return (1.0 - off_scene_rate) * own / own.sum() + off_scene_rate * other / other.sum()


def _place(
    rng: np.random.Generator, shapes: list[np.ndarray], size: int, occlusion: float
) -> list[tuple[int, int, int, int]] | None:
    """Random boxes for silhouettes (box-sized masks), placed and painted in order.

    With ``occlusion == 0`` boxes keep a one-pixel gap. Otherwise a box may overlap
    earlier ones as long as no earlier silhouette ends up more than ``occlusion`` hidden
    (counted in pixels). Returns None when an object finds no place.
    """
    placed: list[tuple[int, int, int, int]] = []
    hidden: list[np.ndarray] = []  # per placed object: its silhouette pixels covered so far (frame-sized)
    frames: list[np.ndarray] = []  # per placed object: its silhouette (frame-sized)
    for sil in shapes:
        bh, bw = sil.shape
        for _ in range(_PLACE_TRIES):
            x0 = int(rng.integers(0, size - bw + 1))
            y0 = int(rng.integers(0, size - bh + 1))
            cand = (x0, y0, x0 + bw, y0 + bh)
            if occlusion == 0.0:
                ok = all(
                    cand[2] < p[0] or p[2] < cand[0] or cand[3] < p[1] or p[3] < cand[1] for p in placed
                )
                updates: list[tuple[int, tuple[slice, slice], np.ndarray]] = []
            else:
                ok, updates = True, []
                for j, p in enumerate(placed):
                    ox0, oy0, ox1, oy1 = max(cand[0], p[0]), max(cand[1], p[1]), min(cand[2], p[2]), min(cand[3], p[3])
                    if ox0 >= ox1 or oy0 >= oy1:
                        continue
                    region = (slice(oy0, oy1), slice(ox0, ox1))
                    over = sil[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] & frames[j][region]
                    new = hidden[j][region] | over
                    total = hidden[j].sum() - hidden[j][region].sum() + new.sum()
                    if total > occlusion * frames[j].sum():
                        ok = False
                        break
                    updates.append((j, region, new))
            if ok:
                for j, region, new in updates:
                    hidden[j][region] = new
                frame = np.zeros((size, size), dtype=bool)
                frame[cand[1] : cand[3], cand[0] : cand[2]] = sil
                frames.append(frame)
                hidden.append(np.zeros((size, size), dtype=bool))
                placed.append(cand)
                break
        else:
            return None
    return placed


def _make_scene(cfg: SynthConfig, index: int, weights: list[np.ndarray]) -> SceneTruth:
    rng = np.random.default_rng([cfg.seed, index, 0])
    priors = np.array([st.prior for st in SCENE_TYPES])
    st = int(rng.choice(len(SCENE_TYPES), p=priors / priors.sum()))
    n = int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))
    available = np.ones(len(VOCABULARY), dtype=bool)
    chosen: list[int] = []
    for _ in range(n):
        w = weights[st] * available
        if w.sum() <= 0:  # the scene type's objects ran out and off_scene_rate is 0
            w = available.astype(float)
        k = int(rng.choice(len(VOCABULARY), p=w / w.sum()))
        available[k] = False
        chosen.append(k)
    for _ in range(_LAYOUT_RESTARTS):
        boxes = []
        for k in chosen:
            side = rng.uniform(*cfg.object_scale) * cfg.image_size
            a = VOCABULARY[k].aspect
            bw, bh = (side, side / a) if a >= 1 else (side * a, side)
            boxes.append((max(3, int(round(bw))), max(3, int(round(bh)))))
        # Place big boxes first (easier packing); they are also painted first.
        order = sorted(range(n), key=lambda i: -boxes[i][0] * boxes[i][1])
        shapes = [shape_mask(VOCABULARY[chosen[i]].name, (0, 0, *boxes[i])) for i in order]
        placed = _place(rng, shapes, cfg.image_size, cfg.occlusion)
        if placed is not None:
            objects = tuple(SceneObject(name=VOCABULARY[chosen[i]].name, bbox=b) for i, b in zip(order, placed))
            return SceneTruth(
                image_id=f"synth_{index:05d}.png",
                size=(cfg.image_size, cfg.image_size),
                objects=objects,
                scene_type=SCENE_TYPES[st].name,
            )
    raise DataError(
        f"could not lay out image {index}: {n} objects of scale {cfg.object_scale} in {cfg.image_size} px "
        f"with occlusion {cfg.occlusion}; lower clutter or object_scale, or raise occlusion"
    )


def _questions(split: str, cfg: SynthConfig, scenes: list[SceneTruth]) -> list[PopeItem]:
    names = [k.name for k in VOCABULARY]
    col = {n: i for i, n in enumerate(names)}
    present = np.zeros((len(scenes), len(names)), dtype=np.int64)
    for s, truth in enumerate(scenes):
        present[s, [col[n] for n in truth.names]] = 1
    freq = present.sum(axis=0)  # images containing each object
    cooc = present.T @ present  # images containing both objects
    q = cfg.questions_per_image
    items: list[PopeItem] = []
    for s, truth in enumerate(scenes):
        rng = np.random.default_rng([cfg.seed, s, 1])
        here = [col[n] for n in truth.names]
        absent = [i for i in range(len(names)) if i not in here]
        positives = [here[i] for i in rng.permutation(len(here))[:q]]
        if split == "random":
            negatives = [absent[i] for i in rng.permutation(len(absent))[:q]]
        elif split == "popular":
            negatives = sorted(absent, key=lambda i: (-freq[i], i))[:q]
        else:
            score = cooc[here].sum(axis=0)
            negatives = sorted(absent, key=lambda i: (-score[i], -freq[i], i))[:q]
        for pos, neg in zip(positives, negatives):
            for k, label in ((pos, "yes"), (neg, "no")):
                items.append(
                    PopeItem(
                        question_id=len(items) + 1,
                        image=truth.image_id,
                        text=pope_question(names[k]),
                        label=label,  # type: ignore[arg-type]
                        object_name=names[k],
                    )
                )
    return items


def synth_pope(
    split: Split = "adversarial",
    n_images: int | None = None,
    *,
    config: SynthConfig | None = None,
    seed: int | None = None,
    image_size: int | None = None,
    questions_per_image: int | None = None,
    object_scale: tuple[float, float] | None = None,
    clutter: tuple[int, int] | None = None,
    noise: float | None = None,
    contrast: float | None = None,
    occlusion: float | None = None,
    off_scene_rate: float | None = None,
    scene_background: bool | None = None,
) -> SynthPope:
    """Generate one SynthPOPE split.

    Knobs left as ``None`` come from ``config`` (default :class:`SynthConfig()`:
    500 images of 64 px, seed 0, 3 yes + 3 no questions per image, objects 0.18-0.3 of
    the image side, 3-5 objects per image, noise 0.04, contrast 1, no occlusion, 15%
    off-scene objects, scene-tinted backdrops); any knob given overrides the config.

    Args:
        split: ``"random"``, ``"popular"`` or ``"adversarial"`` negative sampling.
        n_images: Number of images.
        config: Base configuration.
        seed: See :class:`SynthConfig` for this and the other knobs.
        image_size: Image side in pixels.
        questions_per_image: Yes (and no) questions per image.
        object_scale: ``(min, max)`` object size as a fraction of the image side.
        clutter: ``(min, max)`` objects per image.
        noise: Pixel noise standard deviation (fraction of 255).
        contrast: Object colour strength in ``(0, 1]``.
        occlusion: Largest hidden fraction of an object's silhouette.
        off_scene_rate: Chance an object comes from another scene type.
        scene_background: Tint backdrops by scene type.

    Returns:
        A :class:`SynthPope` of ``n_images * 2 * questions_per_image`` questions; images
        are rendered when accessed.

    Raises:
        DataError: On an unknown split or an invalid knob (the message names it).

    Example:
        >>> ds = synth_pope("random", 2, image_size=32, object_scale=(0.2, 0.3), noise=0.0)
        >>> len(ds), ds.array(0).shape
        (12, (32, 32, 3))
    """
    if split not in SPLITS:
        raise DataError(f"unknown SynthPOPE split {split!r}; known: {', '.join(SPLITS)}")
    given = {
        "n_images": n_images,
        "seed": seed,
        "image_size": image_size,
        "questions_per_image": questions_per_image,
        "object_scale": object_scale,
        "clutter": clutter,
        "noise": noise,
        "contrast": contrast,
        "occlusion": occlusion,
        "off_scene_rate": off_scene_rate,
        "scene_background": scene_background,
    }
    cfg = dataclasses.replace(config or SynthConfig(), **{k: v for k, v in given.items() if v is not None})
    weights = [_object_weights(i, cfg.off_scene_rate) for i in range(len(SCENE_TYPES))]
    scenes = [_make_scene(cfg, i, weights) for i in range(cfg.n_images)]
    items = _questions(split, cfg, scenes)
    return SynthPope(items=tuple(items), split=split, truths={t.image_id: t for t in scenes}, config=cfg)


def load_synth(directory: str | Path, split: Split = "adversarial") -> PopeDataset:
    """Read back a :meth:`SynthPope.export` folder as a dataset with ground truth.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = synth_pope("random", 2).export(d)
        >>> load_synth(d, "random").ground_truth("synth_00000.png").image_id
        'synth_00000.png'
    """
    d = Path(directory)
    return load_pope(d / f"{split}.json", d / "images", truth_file=d / "truth.json", split=split)

