"""The VRP per-sample pass (phase 1): every measurement that needs one question at a time.

Batch by batch (batches fixed by dataset order), for each question:

* the greedy answer and K sampled answers, decoded from one shared prefill
  (:func:`vlmlens.vrp.sampling.decode_shared`); correctness by the POPE parser; token
  confidence; the self-consistency samples;
* the aggregated attention map M of the last prompt position over the image patches and
  its H_s (nats and normalised), C_k, per-layer H_s and the attention mass on the
  queried object's patches;
* logit-lens yes/no and truth margins per layer, for the real image and a blank grey one;
* the first-token answer after greying out the top / bottom / random share of patches
  (ranked by last-layer attention), for every masking share swept;
* features for the probes and the ablation ranking: the residual stream, the MLP output
  and the MLP neurons at the last prompt position of every layer.

Rows go to ``samples.csv`` and arrays to one feature shard per batch (see
:mod:`vlmlens.vrp.store`), so a killed run resumes without redoing or losing samples.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmlens.data import parse_yes_no
from vlmlens.errors import DataError, InputError
from vlmlens.ops import MaskPixels, run_with_cache, sweep, top_patches
from vlmlens.sites import Point, Site, Tower
from vlmlens.vrp.attention import (
    aggregate_attention,
    attention_layers,
    cluster_count,
    entropy_evolution,
    object_attention_mass,
    spatial_entropy,
)
from vlmlens.vrp.batches import as_batches
from vlmlens.vrp.config import MaskingConfig, VRPConfig
from vlmlens.vrp.consistency import consistency_score, token_confidence
from vlmlens.vrp.margins import truth_margin, yes_no_margin
from vlmlens.vrp.sampling import decode_shared
from vlmlens.vrp.store import SampleStore

__all__ = ["FEATURES", "MASKS", "AnswerTokens", "answer_tokens", "batches_of", "mask_column", "mask_columns",
           "measure_batch", "per_layer_logits", "run_samples"]

logger = logging.getLogger(__name__)
MASKS = ("top", "bottom", "random")
FEATURES = {"resid": Point.RESID_POST, "mlp_out": Point.MLP_OUT, "mlp_post": Point.MLP_POST}
"""Feature shard name -> the site (every text layer, last prompt position) it stores."""


def mask_column(kind: str, fraction: float, draw: int = 0) -> str:
    """Column of ``samples.csv`` holding the first-token correctness under one mask.

    Random masks are numbered by their draw (``MaskingConfig.draws``); ranked ones have one.

    Examples:
        >>> mask_column("top", 0.3)
        'mask_top_30_correct'
        >>> mask_column("random", 0.3, draw=2)
        'mask_random_30_d2_correct'
    """
    tag = f"_d{draw}" if kind == "random" else ""
    return f"mask_{kind}_{round(fraction * 100):02d}{tag}_correct"


MASK_STREAM = 4
"""Purpose tag of the random masks' seeds, ``[seed, 4, question_id, draw]`` (probe nulls use 1,
the ablation's random dims 1 and 2, destruction 3), so no two purposes share a random stream."""


def mask_columns(kind: str, fraction: float, masking: MaskingConfig) -> list[str]:
    """Every column of one mask kind at one share: one for ranked masks, one per draw for random ones."""
    draws = masking.draws(fraction) if kind == "random" else 1
    return [mask_column(kind, fraction, draw) for draw in range(draws)]


def batches_of(items: Sequence[Any], size: int) -> list[tuple[int, list[Any]]]:
    """Fixed batches ``(index, items)`` in dataset order (the same in resumed runs)."""
    return [(i // size, list(items[i : i + size])) for i in range(0, len(items), size)]


@dataclass(frozen=True, kw_only=True, eq=False)
class AnswerTokens:
    """Token ids of the answers and the POPE answer of every single token of a tokenizer.

    Attributes:
        yes: Ids of the "yes" variants (case, leading space).
        no: Ids of the "no" variants.
        by_token: ``vocab`` array, 1 where the token alone parses as "yes".
    """

    yes: tuple[int, ...]
    no: tuple[int, ...]
    by_token: np.ndarray

    def __post_init__(self) -> None:
        if not self.yes or not self.no:
            raise DataError(
                f"the tokenizer has no single-token 'yes' ({self.yes}) or 'no' ({self.no}); the logit-lens "
                "margins need both as single tokens."
            )

    @classmethod
    def of(cls, model: Any) -> AnswerTokens:
        """Read them from a model's tokenizer."""
        from vlmlens.circuits.behaviour import AnswerIds

        tokenizer = model.tokenizer
        vocab = model.unembed.weight.shape[0]
        texts = tokenizer.batch_decode([[t] for t in range(min(vocab, len(tokenizer)))], skip_special_tokens=True)
        by_token = np.ones(vocab, dtype=np.int8)
        by_token[: len(texts)] = [parse_yes_no(t) == "yes" for t in texts]
        try:
            answers = AnswerIds.of(model)
        except InputError:  # no single-token spelling on one side: __post_init__ says so in VRP's words
            return cls(yes=(), no=(), by_token=by_token)
        return cls(yes=answers.yes, no=answers.no, by_token=by_token)

    def first_answers(self, logits: torch.Tensor) -> list[str]:
        """POPE answer of the argmax token of each sample's answer logits (``batch vocab``)."""
        tokens = logits.argmax(-1).numpy()
        return np.where(self.by_token[tokens] == 1, "yes", "no").tolist()


def answer_tokens(model: Any) -> AnswerTokens:
    """:meth:`AnswerTokens.of` as a module-level function (what a Ray actor is sent by name)."""
    return AnswerTokens.of(model)


def per_layer_logits(model: Any, cache: Any) -> np.ndarray:
    """Logit lens at the cached last positions: ``batch layer vocab`` (final norm applied once)."""
    resid = cache.stack(Point.RESID_POST)  # layer batch d_model
    with torch.no_grad():
        logits = model.unembed(model.final_norm(resid.to(model.device))).float().cpu()
    return logits.transpose(0, 1).numpy()


def _margins(logits: np.ndarray, tokens: AnswerTokens, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(yes_no, truth)`` margins, each ``batch layer``."""
    yes_no = yes_no_margin(logits, tokens.yes, tokens.no)
    truth_yes, truth_no = truth_margin(logits, tokens.yes), truth_margin(logits, tokens.no)
    truth = np.where(np.array([lab == "yes" for lab in labels])[:, None], truth_yes, truth_no)
    return yes_no, truth


def _round(values: np.ndarray, digits: int = 5) -> str:
    return json.dumps(np.round(np.asarray(values, dtype=np.float64), digits).tolist())


def _mask_conditions(maps_last: list[torch.Tensor], qids: Sequence[int], config: VRPConfig) -> tuple[list, list]:
    """One MaskPixels condition per (kind, share, draw); random scores seeded per question and draw."""
    def random_scores(draw: int) -> list[torch.Tensor]:
        return [torch.from_numpy(np.random.default_rng([config.seed, MASK_STREAM, int(q), draw]).random(tuple(m.shape)))
                for q, m in zip(qids, maps_last)]

    names, conditions = [], []
    for fraction in config.masking.fractions:
        masks = [(mask_column(kind, fraction), maps_last, kind == "top") for kind in ("top", "bottom")]
        masks += [(column, random_scores(draw), True)
                  for draw, column in enumerate(mask_columns("random", fraction, config.masking))]
        for name, scores, largest in masks:
            names.append(name)
            conditions.append([MaskPixels(patches=[top_patches(s, fraction, largest=largest) for s in scores])])
    return names, conditions


def measure_batch(model: Any, dataset: Any, chunk: Sequence[Any], config: VRPConfig, tokens: AnswerTokens,
                  index: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every phase-1 measurement of one batch of questions.

    Args:
        model: A HookedVLM.
        dataset: The dataset the questions come from (images and ground truth).
        chunk: The batch's questions (:class:`vlmlens.data.PopeItem`).
        config: The run's settings.
        tokens: The model's answer tokens (:meth:`AnswerTokens.of`).
        index: The batch index, written into each row.

    Returns:
        ``(rows, arrays)``: one ``samples.csv`` row per question, and the feature arrays
        (``question_id`` plus each of :data:`FEATURES`, ``batch layer width``).
    """
    n_layers = model.n_layers
    images = [dataset.image(item) for item in chunk]
    questions = [item.text for item in chunk]
    qids = [item.question_id for item in chunk]
    labels = [item.label for item in chunk]
    batch = model.prepare(images, questions, suffix=config.suffix)
    cc = config.consistency
    decoded = decode_shared(model, batch, k=cc.k_max, max_new_tokens=cc.max_new_tokens,
                            temperature=cc.temperature, top_p=cc.top_p, seed=config.seed, keys=qids)
    patterns = [Site(Tower.TEXT, Point.PATTERN, layer) for layer in range(n_layers)]
    feature_sites = {name: [Site(Tower.TEXT, point, layer) for layer in range(n_layers)]
                     for name, point in FEATURES.items()}
    sites = patterns + [s for group in feature_sites.values() for s in group]
    logits, cache = run_with_cache(model, batch, sites=sites, positions="last", last=True)
    blank = model.prepare([Image.new("RGB", im.size, (128, 128, 128)) for im in images], questions, suffix=config.suffix)
    _, blank_cache = run_with_cache(model, blank, sites=feature_sites["resid"], positions="last", last=True)
    yes_no, truth = _margins(per_layer_logits(model, cache), tokens, labels)
    yes_no_blank, truth_blank = _margins(per_layer_logits(model, blank_cache), tokens, labels)
    first = tokens.first_answers(logits)
    layers = list(attention_layers(config.attention_layers, n_layers, model.family))
    sweep_layers = {column: list(attention_layers(choice, n_layers, model.family))
                    for column, choice in config.attention_sweep.layer_columns().items()}
    rows, maps_last = [], []
    for b, item in enumerate(chunk):
        positions = batch.layout.image_positions(b)
        grid = batch.layout.grid(b)
        pattern_rows = torch.stack([cache[p][b][:, positions] for p in patterns])  # layer head image_token
        m = aggregate_attention(pattern_rows, grid, layers=layers)
        per_layer = pattern_rows.mean(1).reshape(n_layers, *grid)
        h_layers, _ = entropy_evolution(per_layer)
        maps_last.append(per_layer[-1])
        truth_scene = dataset.ground_truth(item)
        mass = float("nan")
        if truth_scene is not None and item.object_name and truth_scene.has(item.object_name):
            mass = object_attention_mass(m, truth_scene.patch_mask(item.object_name, grid))
        answer = parse_yes_no(decoded.greedy[b])
        majority, share = consistency_score(decoded.samples[b][: cc.k], yes_no=True)
        rows.append({
            "question_id": item.question_id, "batch": index, "image": item.image, "label": item.label,
            "object_name": item.object_name or "", "answer": answer, "correct": int(answer == item.label),
            "raw": decoded.greedy[b].strip(), "confidence": token_confidence(decoded.greedy_logprobs[b]),
            "S_SC": share, "consistency_answer": majority, "samples": json.dumps(list(decoded.samples[b])),
            "H_s": spatial_entropy(m), "H_s_norm": spatial_entropy(m, normalized=True), "C_k": cluster_count(m),
            "object_mass": mass, "H_s_layers": _round(h_layers),
            "yes_no_margin": _round(yes_no[b]), "yes_no_margin_blank": _round(yes_no_blank[b]),
            "truth_margin": _round(truth[b]), "truth_margin_blank": _round(truth_blank[b]),
            "grid": json.dumps(list(grid)), "attention_map": _round(m, 6),
            "first_answer": first[b], "first_correct": int(first[b] == item.label),
        })  # fmt: skip
        for column, chosen in sweep_layers.items():
            ms = m if chosen == layers else aggregate_attention(pattern_rows, grid, layers=chosen)
            rows[-1].update({f"C_k{column}": cluster_count(ms), f"H_s_norm{column}": spatial_entropy(ms, normalized=True)})
        for column, (pct, eps) in config.attention_sweep.dbscan_columns().items():
            rows[-1][f"C_k{column}"] = cluster_count(m, percentile=pct, eps=eps)
    names, conditions = _mask_conditions(maps_last, qids, config)
    masked = sweep(model, batch, conditions, last=True)
    for name, condition_logits in zip(names, masked):
        for row, after in zip(rows, tokens.first_answers(condition_logits)):
            row[name] = int(after == row["label"])
    arrays = {"question_id": np.array(qids)}
    for name, group in feature_sites.items():
        arrays[name] = torch.stack([cache[s] for s in group], 1).float().numpy()
    return rows, arrays


def run_samples(model: Any, dataset: Any, config: VRPConfig, store: SampleStore, *, resume: bool = False,
                name: str = "model", progress: bool | None = None) -> SampleStore:
    """The per-sample pass over ``dataset``, appended batch by batch to ``store``.

    Args:
        model: A HookedVLM, or where the batches run (:mod:`vlmlens.vrp.batches`, e.g. on Ray).
        dataset: A :class:`vlmlens.data.PopeDataset` (SynthPOPE or POPE).
        config: The run's settings.
        store: Where rows and features go.
        resume: Continue a table that exists (finished batches are kept, others redone).
        name: Shown on the progress bar.
        progress: Show it (``None``: for at least 8 batches; :mod:`vlmlens.progress`).

    Returns:
        ``store``.

    Raises:
        DataError: if the table exists and ``resume`` is false, or the dataset is empty.
    """
    if len(dataset) == 0:
        raise DataError("the dataset is empty; nothing to measure.")
    if store.exists("samples") and not resume:
        raise DataError(f"{store.table_path('samples')} exists; pass resume=True (--resume) to continue it "
                        "or choose another --out")
    batches = batches_of(dataset.items, config.batch_size)
    done = store.done_batches("samples", {i: len(chunk) for i, chunk in batches})
    todo = [(i, chunk) for i, chunk in batches if i not in done]
    if not todo:
        return store
    runner = as_batches(model)
    shared = {"dataset": dataset, "config": config, "tokens": runner.call(answer_tokens),
              "folder": store.folder.resolve()}  # actors may run elsewhere: an absolute path (a shared filesystem)
    for index, rows in runner.map(_samples_task, todo, shared, desc=f"VRP {name}: per-sample", progress=progress):
        store.append("samples", index, rows)  # after the task wrote the batch's feature shard
    return store


def _samples_task(model: Any, index: int, chunk: Sequence[Any], *, dataset: Any, config: VRPConfig,
                  tokens: AnswerTokens, folder: Path) -> list[dict[str, Any]]:
    """One batch of the per-sample pass: writes its feature shard, returns its rows."""
    rows, arrays = measure_batch(model, dataset, chunk, config, tokens, index)
    SampleStore(folder).write_shard(index, arrays)
    return rows
