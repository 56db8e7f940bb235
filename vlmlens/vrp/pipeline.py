"""The VRP measurement pipeline over (model, dataset): per-sample pass, then statistics.

The per-sample pass runs batch by batch and appends to ``samples.csv`` and one feature
shard per batch, so a killed run resumes without redoing or losing samples. The final
statistics are computed from those files only.

Measured per sample: greedy answer and correctness (POPE parser); the aggregated
attention map M of the last prompt position over the image patches (H_s, normalised
H_s, C_k, attention mass on the queried object); logit-lens yes/no and truth margins per
layer, for the real image and a blank grey one; the answer after greying out the top /
bottom / random share of patches (ranked by last-layer attention) in pixel space.
Across samples: POPE metrics, R_pb of C_k and H_s with correctness (Fisher and bootstrap
CIs), per-layer hidden-state probes (AUROC with CI and shuffled control), peak visual
layer, masking accuracy drops with exact McNemar tests.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vlmlens.data import parse_yes_no, pope_metrics
from vlmlens.errors import DataError
from vlmlens.ops import MaskPixels, run_with_cache, run_with_interventions, top_patches
from vlmlens.sites import Point, Site, Tower
from vlmlens.vrp.attention import cluster_count, object_attention_mass, spatial_entropy
from vlmlens.vrp.probes import ProbeConfig, probe_layers
from vlmlens.vrp.stats import mcnemar_exact, point_biserial

__all__ = ["VRPConfig", "run_samples", "summarize"]

logger = logging.getLogger(__name__)
MASKS = ("top", "bottom", "random")


@dataclass(frozen=True, kw_only=True)
class VRPConfig:
    """Parameters of a VRP run (VRP.md marks the choices).

    Attributes:
        batch_size: samples per forward.
        mask_fraction: share of patches greyed out in the masking test.
        attention_layers: ``"second_half"`` or ``"all"`` text layers for the map M.
        seed: seeds the random masks, probes and bootstraps.
        probe: the hidden-state probe settings.
    """

    batch_size: int = 8
    mask_fraction: float = 0.3
    attention_layers: str = "second_half"
    seed: int = 0
    probe: ProbeConfig = ProbeConfig()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.mask_fraction < 1:
            raise DataError(f"mask_fraction must be in (0, 1), got {self.mask_fraction}")
        if self.attention_layers not in ("second_half", "all"):
            raise DataError(f"attention_layers must be 'second_half' or 'all', got {self.attention_layers!r}")


def _token_ids(model: Any, words: tuple[str, ...]) -> list[int]:
    ids = set()
    for word in words:
        for text in (word, " " + word):
            tokens = model.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(tokens) == 1:
                ids.add(tokens[0])
    return sorted(ids)


def _first_token_answers(model: Any, logits: torch.Tensor, layout: Any) -> list[str]:
    last = torch.tensor(layout.last_prompt)
    tokens = logits[torch.arange(len(last)), last].argmax(-1)
    return [parse_yes_no(t) for t in model.tokenizer.batch_decode(tokens[:, None], skip_special_tokens=True)]


def run_samples(model: Any, dataset: Any, config: VRPConfig, out: Path, *, resume: bool = False,
                name: str = "model") -> Path:
    """Per-sample measurements, appended batch by batch to ``out/samples.csv`` (+ feature shards).

    Returns:
        The folder holding ``samples.csv`` and ``features/``.
    """
    out.mkdir(parents=True, exist_ok=True)
    table = out / "samples.csv"
    (out / "features").mkdir(exist_ok=True)
    done: set[int] = set()
    if table.exists():
        if not resume:
            raise DataError(f"{table} exists; pass resume=True (--resume) to continue it or choose another --out")
        with table.open() as f:
            done = {int(row["question_id"]) for row in csv.DictReader(f)}
    items = [item for item in dataset.items if item.question_id not in done]
    yes_ids, no_ids = _token_ids(model, ("yes", "Yes")), _token_ids(model, ("no", "No"))
    layers = list(range(model.n_layers // 2 if config.attention_layers == "second_half" else 0, model.n_layers))
    resid = [Site(Tower.TEXT, Point.RESID_POST, layer) for layer in range(model.n_layers)]
    patterns = [Site(Tower.TEXT, Point.PATTERN, layer) for layer in range(model.n_layers)]
    rng = np.random.default_rng(config.seed)
    header = None if done else True
    batches = [items[i : i + config.batch_size] for i in range(0, len(items), config.batch_size)]
    for chunk in tqdm(batches, desc=f"VRP {name}", unit="batch"):
        images = [dataset.image(item) for item in chunk]
        batch = model.prepare(images, [item.text for item in chunk], suffix=True)
        greedy = model.generate(batch, max_new_tokens=2)
        logits, cache = run_with_cache(model, batch, sites=resid + patterns, positions="last")
        blank = model.prepare([Image.new("RGB", im.size, (128, 128, 128)) for im in images],
                              [item.text for item in chunk], suffix=True)
        _, blank_cache = run_with_cache(model, blank, sites=resid, positions="last")
        margins = _margins(model, cache, yes_ids, no_ids)
        blank_margins = _margins(model, blank_cache, yes_ids, no_ids)
        rows, maps_last = [], []
        for b, item in enumerate(chunk):
            positions = batch.layout.image_positions(b)
            grid = batch.layout.grid(b)
            attn = torch.stack([cache[p][b][:, positions].mean(0) for p in patterns])  # layer n_img
            m = attn[layers].mean(0)
            m = (m / m.sum()).view(grid).numpy()
            maps_last.append(attn[-1].view(grid))
            truth = dataset.ground_truth(item)
            mass = float("nan")
            if truth is not None and item.object_name and truth.has(item.object_name):
                mass = object_attention_mass(m, truth.patch_mask(item.object_name, grid))
            answer = parse_yes_no(greedy.texts[b])
            sign = 1.0 if item.label == "yes" else -1.0
            rows.append({
                "question_id": item.question_id, "image": item.image, "label": item.label,
                "answer": answer, "correct": int(answer == item.label), "raw": greedy.texts[b].strip(),
                "confidence": float(greedy.scores[b].mean()),
                "H_s": spatial_entropy(m), "H_s_norm": spatial_entropy(m, normalized=True),
                "C_k": cluster_count(m), "object_mass": mass,
                "margins": json.dumps([round(float(sign * x), 5) for x in margins[:, b]]),
                "blank_margins": json.dumps([round(float(sign * x), 5) for x in blank_margins[:, b]]),
            })
        first = _first_token_answers(model, logits, batch.layout)
        for kind in MASKS:
            chosen = []
            for b in range(len(chunk)):
                scores = maps_last[b]
                if kind == "random":
                    scores = torch.from_numpy(rng.random(scores.shape))
                chosen.append(top_patches(scores, config.mask_fraction, largest=kind != "bottom"))
            masked = run_with_interventions(model, batch, [MaskPixels(patches=chosen)])
            for row, base, after in zip(rows, first, _first_token_answers(model, masked, batch.layout)):
                row["first_correct"] = int(base == row["label"])
                row[f"mask_{kind}_correct"] = int(after == row["label"])
        shard = out / "features" / f"{chunk[0].question_id}.npz"
        np.savez(shard, question_id=np.array([i.question_id for i in chunk]),
                 resid=torch.stack([cache[s] for s in resid], 1).numpy())
        with table.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if header:
                writer.writeheader()
                header = False
            writer.writerows(rows)
    return out


def _margins(model: Any, cache: Any, yes_ids: list[int], no_ids: list[int]) -> np.ndarray:
    """Logit-lens yes-minus-no margin per layer: ``layer batch`` (final norm applied once)."""
    resid = cache.stack(Point.RESID_POST)  # layer batch d_model
    with torch.no_grad():
        logits = model.unembed(model.final_norm(resid.to(model.device))).float().cpu()
    return (logits[..., yes_ids].max(-1).values - logits[..., no_ids].max(-1).values).numpy()


def summarize(folder: Path, config: VRPConfig) -> dict[str, Any]:
    """Statistics over the per-sample files of one model's run."""
    with (folder / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{folder / 'samples.csv'} holds no samples")
    correct = np.array([int(r["correct"]) for r in rows])
    metrics = pope_metrics([r["answer"] for r in rows], [r["label"] for r in rows])
    result: dict[str, Any] = {"n": len(rows), "pope": metrics.to_dict()}
    for key in ("C_k", "H_s", "H_s_norm", "confidence"):
        values = np.array([float(r[key]) for r in rows])
        if np.ptp(values) > 0 and 0 < correct.sum() < len(correct):
            result[f"rpb_{key}"] = _corr(point_biserial(correct, values, seed=config.seed))
    mass = np.array([float(r["object_mass"]) for r in rows])
    result["object_mass_mean"] = float(np.nanmean(mass)) if np.isfinite(mass).any() else None
    margins = np.array([json.loads(r["margins"]) for r in rows])
    blank = np.array([json.loads(r["blank_margins"]) for r in rows])
    result["truth_margin_by_layer"] = margins.mean(0).round(4).tolist()
    result["peak_visual_layer"] = int(np.argmax((margins - blank).mean(0)))
    by_id = {int(r["question_id"]): i for i, r in enumerate(rows)}
    feats = np.zeros((len(rows), *np.load(next((folder / "features").glob("*.npz")))["resid"].shape[1:]),
                     dtype=np.float32)
    for shard in (folder / "features").glob("*.npz"):
        data = np.load(shard)
        for qid, vec in zip(data["question_id"], data["resid"]):
            if int(qid) in by_id:
                feats[by_id[int(qid)]] = vec
    if 0 < correct.sum() < len(correct) and min(correct.sum(), len(correct) - correct.sum()) >= 4:
        probes = probe_layers(np.moveaxis(feats, 1, 0), correct.astype(bool), config.probe)
        result["probe"] = _probe_dict(probes)
    first = np.array([int(r["first_correct"]) for r in rows])
    result["masking"] = {
        kind: _mcnemar(mcnemar_exact(first, np.array([int(r[f"mask_{kind}_correct"]) for r in rows])))
        for kind in MASKS
    }
    return result


def _corr(c: Any) -> dict[str, Any]:
    return {"r": c.r, "p": c.p, "n": c.n, "fisher_ci": list(c.fisher_ci), "bootstrap_ci": list(c.bootstrap_ci)}


def _mcnemar(m: Any) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in asdict(m).items()}


def _probe_dict(p: Any) -> dict[str, Any]:
    frame = p.to_frame()
    return {"best_layer": int(p.best_layer), "by_layer": json.loads(frame.to_json(orient="records"))}
