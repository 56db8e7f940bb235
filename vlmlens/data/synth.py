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

Examples:
    >>> ds = synth_pope("popular", n_images=4, seed=1)
    >>> len(ds), ds.labels[:2], ds[0].text.startswith("Is there a")
    (24, ('yes', 'no'), True)
    >>> ds.image(0).size, ds.ground_truth(ds[0]).scene_type in ("kitchen", "street", "park", "office")
    ((64, 64), True)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import UInt8
from PIL import Image

from vlmlens.data.objects import SCENE_TYPES
from vlmlens.data.pope import SPLITS, PopeDataset, PopeItem, Split, load_pope
from vlmlens.data.render import render_scene
from vlmlens.data.sampling import make_scene, object_weights, pope_questions
from vlmlens.data.scene import SceneTruth
from vlmlens.data.synth_config import SynthConfig
from vlmlens.errors import DataError

TRUTH_FORMAT = "synthpope-truth/1"


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
        if self.split not in SPLITS:
            raise DataError(f"SynthPope.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
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
        return Image.fromarray(self.array(item.image))

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
            Image.fromarray(self.array(truth.image_id)).save(idir / truth.image_id, format="PNG")
        tfile.write_text(truth_text, encoding="utf-8")
        lines = (
            json.dumps({"question_id": i.question_id, "image": i.image, "text": i.text, "label": i.label})
            for i in self.items
        )
        qfile.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return SynthExport(questions_file=qfile, image_dir=idir, truth_file=tfile)


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

    Examples:
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
    weights = [object_weights(i, cfg.off_scene_rate) for i in range(len(SCENE_TYPES))]
    scenes = [make_scene(cfg, i, weights) for i in range(cfg.n_images)]
    items = pope_questions(split, cfg, scenes)
    return SynthPope(items=tuple(items), split=split, truths={t.image_id: t for t in scenes}, config=cfg)


def load_synth(directory: str | Path, split: Split = "adversarial") -> PopeDataset:
    """Read back a :meth:`SynthPope.export` folder as a dataset with ground truth.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = synth_pope("random", 2).export(d)
        >>> load_synth(d, "random").ground_truth("synth_00000.png").image_id
        'synth_00000.png'
    """
    d = Path(directory)
    return load_pope(d / f"{split}.json", d / "images", truth_file=d / "truth.json", split=split)
