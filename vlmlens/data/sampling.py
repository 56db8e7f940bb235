"""Random scene layouts and POPE negative sampling for SynthPOPE.

Scene ``i`` is drawn from a generator seeded by ``(seed, i, 0)`` and its questions from
``(seed, i, 1)``, so a scene does not depend on how many others are generated, and the
yes questions are the same in every split. Negatives per split follow POPE:

* ``random``: absent objects drawn uniformly;
* ``popular``: the absent objects present in the most images of the dataset;
* ``adversarial``: the absent objects that co-occur most often (summed over the image's
  present objects, counted over the dataset's ground truth) with the image's objects.

Ties break by overall frequency (adversarial), then by vocabulary order.
"""

from __future__ import annotations

import numpy as np

from vlmlens.data.objects import SCENE_TYPES, VOCABULARY, pope_question, shape_mask
from vlmlens.data.pope import PopeItem
from vlmlens.data.scene import SceneObject, SceneTruth
from vlmlens.data.synth_config import SynthConfig
from vlmlens.errors import DataError

_PLACE_TRIES = 200  # random positions tried per object before the layout restarts
_LAYOUT_RESTARTS = 50


def object_weights(scene_index: int, off_scene_rate: float) -> np.ndarray:
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


def make_scene(cfg: SynthConfig, index: int, weights: list[np.ndarray]) -> SceneTruth:
    """Draw scene ``index``: its type, its objects and their non-clashing boxes.

    Args:
        cfg: Generation config.
        index: Image index (names the image ``synth_{index:05d}.png``).
        weights: :func:`object_weights` of each scene type, in ``SCENE_TYPES`` order.

    Raises:
        DataError: If the objects cannot be laid out (too crowded for the settings).
    """
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


def pope_questions(split: str, cfg: SynthConfig, scenes: list[SceneTruth]) -> list[PopeItem]:
    """POPE questions for the scenes: per image, yes/no alternating, ids from 1."""
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
