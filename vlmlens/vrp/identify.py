"""The object-identification readout of the neuron ablation (the paper's -8.3 pp).

The paper scores its top-5 probe-neuron ablation on object-identification questions, not
on POPE's yes/no. Here the model is asked once per image to name the objects in it
(:data:`IDENTIFY_QUESTION`, the zoo's caption task, greedy), clean and under each
ablation condition at the reported k; each POPE question of that image is then scored
from the list: right when the queried object is named exactly when it is present
(:func:`named`). The ablation drop on this readout goes through the same tests as the
first-token one (:func:`vlmlens.vrp.ablation.ablation_result`).

Examples:
    >>> named("There is a dog and two dining tables.", "dining table"), named("a hotdog", "dog")
    (True, False)

Limits: a negation ("there is no dog") still names the dog; real VLMs asked to list objects
rarely write one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vlmlens.errors import DataError
from vlmlens.vrp.batches import as_batches
from vlmlens.vrp.config import VRPConfig
from vlmlens.vrp.store import SampleStore

__all__ = [
    "ALIASES",
    "IDENTIFY_QUESTION",
    "correct_column",
    "identification_result",
    "image_batches",
    "named",
    "run_identification",
    "text_column",
]

IDENTIFY_QUESTION = "What objects are in the image?"
"""The question asked once per image (the toy zoo was trained on it; real VLMs answer it in prose)."""

def text_column(condition: str) -> str:
    """Column of ``identify.csv`` with each image's answer under one condition (``"clean"`` or a plan name)."""
    return f"identify_text_{condition}"


def correct_column(condition: str) -> str:
    """Column of ``identify.csv`` with each question's identification correctness under one condition."""
    return f"identify_{condition}_correct"


ALIASES: dict[str, tuple[str, ...]] = {
    "person": ("people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "player", "skier"),
    "knife": ("knives",),
    "mouse": ("mice",),
    "tv": ("television", "monitor"),
    "airplane": ("plane", "aeroplane", "jet"),
    "couch": ("sofa",),
    "motorcycle": ("motorbike",),
    "cell phone": ("phone", "mobile phone", "smartphone"),
    "dining table": ("table",),
}
"""Other names of POPE's (COCO's) objects counted as naming them (**choice**: irregular plurals
and the everyday words a VLM uses, e.g. "a man" for person)."""


def _pattern(name: str) -> str:
    """Whole words, case-insensitive, spaces or hyphens between words, singular or plural."""
    words = name.lower().split()
    return r"(?<![a-z])" + r"[\s-]+".join(map(re.escape, words)) + r"(?:e?s)?(?![a-z])"


def named(text: str, object_name: str, vocabulary: Sequence[str] = ()) -> bool:
    """Whether ``text`` names the object, by its name or one of its :data:`ALIASES`.

    Longer names of the ``vocabulary`` (the dataset's objects) that contain the object's
    name are blanked out first, so "a hot dog" does not name a dog nor "a teddy bear" a bear.

    Examples:
        >>> named("two people and a teddy bear", "person"), named("a teddy bear", "bear", ["teddy bear"])
        (True, False)
    """
    name = object_name.lower().strip()
    if not name:
        raise DataError("an empty object name cannot be looked for in an answer.")
    lowered = text.lower()
    for other in sorted({v.lower().strip() for v in vocabulary}, key=len, reverse=True):
        if other != name and re.search(_pattern(name), other):
            lowered = re.sub(_pattern(other), " | ", lowered)
    return any(re.search(_pattern(n), lowered) for n in (name, *ALIASES.get(name, ())))


def image_batches(items: Sequence[Any], n_images: int) -> list[tuple[int, list[Any]]]:
    """Fixed batches of every question of ``n_images`` images (in order of first appearance)."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(item.image, []).append(item)
    ordered = list(groups.values())
    return [(i // n_images, [item for group in ordered[i : i + n_images] for item in group])
            for i in range(0, len(ordered), n_images)]


def _conditions(plan: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """The plan's ablation conditions at the reported k (top and its random draws, both sites)."""
    return [c for c in plan["conditions"] if c["group"].startswith("ablate_") and c["size"] == k]


def run_identification(model: Any, dataset: Any, config: VRPConfig, store: SampleStore, plan: Mapping[str, Any], *,
                       name: str = "model", progress: bool | None = None) -> SampleStore:
    """Ask each image for its objects, clean and under every reported-k ablation; rows to ``identify.csv``.

    Batches hold the questions of ``batch_size`` images (one prompt per image); finished
    batches are kept, so a killed run resumes.

    Raises:
        DataError: if a question has no parsed object name (not POPE's wording).
    """
    from vlmlens.vrp.ablation import plan_interventions

    missing = [item.question_id for item in dataset.items if not item.object_name]
    if missing:
        raise DataError(f"the identification readout needs each question's object (POPE's 'Is there a ... in the "
                        f"image?'); questions {missing[:5]} have none. Turn VRPConfig.identify off for this data.")
    batches = image_batches(dataset.items, config.batch_size)
    done = store.done_batches("identify", {i: len(chunk) for i, chunk in batches})
    todo = [(i, chunk) for i, chunk in batches if i not in done]
    if not todo:
        return store
    shared = {"dataset": dataset, "tokens": config.identify.max_new_tokens,
              "conditions": dict(zip(*plan_interventions({"conditions": _conditions(plan, config.ablation.k)}, config))),
              "vocabulary": sorted({item.object_name for item in dataset.items})}
    for index, rows in as_batches(model).map(_identify_task, todo, shared, desc=f"VRP {name}: identification",
                                             progress=progress):
        store.append("identify", index, rows)
    return store


def _identify_task(model: Any, index: int, chunk: Sequence[Any], *, dataset: Any, tokens: int,
                   conditions: Mapping[str, list[Any]], vocabulary: Sequence[str]) -> list[dict[str, Any]]:
    """One batch of the identification pass: each image's answer, clean and under every condition."""
    images = list(dict.fromkeys(item.image for item in chunk))  # one prompt per image, in order
    at = {image: i for i, image in enumerate(images)}
    first = {item.image: item for item in reversed(chunk)}
    batch = model.prepare([dataset.image(first[image]) for image in images], [IDENTIFY_QUESTION] * len(images))
    texts = {"clean": model.generate(batch, tokens).texts}
    for condition, edit in conditions.items():
        texts[condition] = model.generate(batch, tokens, interventions=edit).texts
    rows = []
    for item in chunk:
        row: dict[str, Any] = {"question_id": item.question_id, "batch": index}
        for condition, answers in texts.items():
            answer = answers[at[item.image]].strip()
            row[text_column(condition)] = answer
            row[correct_column(condition)] = int(named(answer, item.object_name, vocabulary) == (item.label == "yes"))
        rows.append(row)
    return rows


def identification_result(table: pd.DataFrame, plan: Mapping[str, Any], config: VRPConfig, *,
                          groups: np.ndarray | None) -> dict[str, Any]:
    """The clean identification accuracy and the reported-k ablation drops on it (JSON-ready).

    Args:
        table: ``identify.csv`` in dataset order.
        plan: The phase-2 plan (:func:`vlmlens.vrp.ablation.make_plan`).
        config: The run's settings.
        groups: Each question's image, for the image-level tests (``None``: none).
    """
    from dataclasses import replace

    from vlmlens.vrp.ablation import ablation_result
    from vlmlens.vrp.analysis import to_jsonable

    k = config.ablation.k
    renamed = table.rename(columns={correct_column(c["name"]): c["name"] for c in _conditions(plan, k)})
    reported = {"conditions": _conditions(plan, k)}
    single_k = replace(config.ablation, ks=(k,))
    clean = table[correct_column("clean")].to_numpy()
    kw = {"groups": groups, "n_resamples": config.n_resamples, "seed": config.seed}
    return {"question": IDENTIFY_QUESTION, "clean_accuracy": float(clean.mean()), "n": len(clean),
            **{point: to_jsonable(ablation_result(clean, renamed, reported, f"ablate_{point}", single_k, **kw))
               for point in ("mlp_out", "mlp_post")}}
