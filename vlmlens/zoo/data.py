"""Training examples for the toy zoo: SynthPOPE questions and object-list captions.

Images are rendered and preprocessed once; prompts are tokenized once per distinct
(prompt, image size); a batch is then only an index lookup plus padding. Every
example is a prompt (in the family's template) followed by a short answer and the
end-of-sequence token; the loss covers the answer and the end token only.

Two kinds of examples:

* ``"qa"``: a POPE question (``"Is there a cup in the image?"``) answered ``"Yes"`` or
  ``"No"``, from the three SynthPOPE splits of the training images;
* ``"caption"``: ``"What objects are in the image?"`` answered with the present
  objects in vocabulary order (``"cup bowl knife"``), the alignment objective that
  makes the yes/no task learnable for tiny models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

from vlmlens.data import (
    SPLITS,
    VOCABULARY,
    SceneTruth,
    SynthConfig,
    format_prompt,
    synth_pope,
)
from vlmlens.data.objects import shape_mask
from vlmlens.data.prompts import POPE_SUFFIX
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.tokenizer import Family

CAPTION_QUESTION = "What objects are in the image?"
"""The question of caption examples."""

ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
NOT_THERE = "none"

ANSWER_WORDS: dict[str, str] = {"yes": "Yes", "no": "No"}
"""How the toy models spell their answers (LLaVA-1.5 style)."""

OBJECT_ORDER: dict[str, int] = {k.name: i for i, k in enumerate(VOCABULARY)}


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What the training set is made of.

    Attributes:
        n_images: Training images per image size.
        seed: SynthPOPE seed of the training images; keep it away from test seeds
            (the zoo evaluates on seed 0).
        image_sizes: Image sides in pixels; one SynthPOPE set per size.
        synth: SynthPOPE knobs shared by training and evaluation (``n_images``, ``seed``
            and ``image_size`` are overridden).
        caption_rate: Share of caption examples in the sampled stream.
        grounding_rate: Share of grounding examples ("Where is the cup?" answered with
            the 3x3 cell of its box centre, e.g. "top left", or "none"), half about
            present objects, half about absent ones.
        suffix_rate: Share of questions that carry POPE's "Answer the question using a
            single word or phrase." suffix.
        turns: Questions per QA example, asked as a multi-turn conversation about the
            same image (LLaVA-1.5 trains on such conversations); more answers per image
            pass for the same compute. PaliGemma has no multi-turn format and needs 1.
    """

    n_images: int = 2000
    seed: int = 1000
    image_sizes: tuple[int, ...] = (64,)
    synth: SynthConfig = field(default_factory=SynthConfig)
    caption_rate: float = 0.25
    grounding_rate: float = 0.0
    suffix_rate: float = 0.0
    turns: int = 1

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ZooError(f"DataConfig.n_images must be >= 1; got {self.n_images}.")
        if self.seed < 1:
            raise ZooError(
                f"DataConfig.seed must be >= 1 (seed 0 is the zoo's test set); got {self.seed}."
            )
        if not self.image_sizes or any(s < 16 for s in self.image_sizes):
            raise ZooError(f"DataConfig.image_sizes must be sides >= 16 px; got {self.image_sizes}.")
        if self.turns < 1:
            raise ZooError(f"DataConfig.turns must be >= 1; got {self.turns}.")
        if self.caption_rate + self.grounding_rate > 1.0:
            raise ZooError(
                f"caption_rate + grounding_rate must be <= 1; got {self.caption_rate} + {self.grounding_rate}."
            )
        for name in ("caption_rate", "grounding_rate", "suffix_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ZooError(f"DataConfig.{name} must be in [0, 1]; got {getattr(self, name)}.")


@dataclass(frozen=True)
class Example:
    """One training example: an image and its turns (tokenized prompt, answer ids).

    The first turn's prompt holds the image; later turns are follow-up questions.
    ``asked`` is the vocabulary index of the object the first question names
    (``-100`` for captions).
    """

    image: int
    turns: tuple[tuple[int, tuple[int, ...]], ...]
    kind: Literal["qa", "caption", "grounding"]
    asked: int = -100


@dataclass
class TrainSet:
    """Preprocessed images, tokenized prompts and the examples that combine them.

    Attributes:
        family: Model family.
        pixels: Per image, the image processor's tensors (``pixel_values`` and, for
            Qwen2-VL, ``image_grid_thw``), without the batch axis for LLaVA/PaliGemma.
        image_size: Side of each image in pixels.
        labels: Per image, the multi-hot object-presence vector (vocabulary order).
        segments: Per image, the visible object at each pixel (0 = backdrop, else
            1 + the object's vocabulary index), from the ground truth.
        prompts: Per tokenized prompt, its token-level tensors (``input_ids`` and the
            family's type ids), 1-D.
        examples: All examples, QA first, then captions.
        pad_id: The padding token id.
        segments: Per image, the visible object at each pixel (see :func:`object_map`).
        image_token_id: The image placeholder token, which :func:`collate` drops from
            text-only batches (``None``: unknown, no text-only batches).
    """

    family: Family
    pixels: list[dict[str, torch.Tensor]]
    image_size: list[int]
    labels: torch.Tensor
    prompts: list[dict[str, torch.Tensor]]
    examples: list[Example]
    pad_id: int
    segments: list[np.ndarray] = field(default_factory=list)
    image_token_id: int | None = None

    def by_kind(self, kind: str) -> list[int]:
        """Indices of the examples of one kind."""
        return [i for i, e in enumerate(self.examples) if e.kind == kind]


def prompt_text(family: Family, processor: ProcessorMixin, question: str) -> str:
    """The processor-ready prompt string of a question in a family's template."""
    prompt = format_prompt(family, question)
    if isinstance(prompt, str):
        return prompt
    return processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)


def answer_ids(processor: ProcessorMixin, text: str) -> tuple[int, ...]:
    """Token ids of an answer followed by the end-of-sequence token."""
    tok = processor.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.unk_token_id in ids:
        raise ZooError(f"Answer {text!r} has words outside the zoo vocabulary.")
    return (*ids, tok.eos_token_id)


def build_train_set(family: Family, processor: ProcessorMixin, cfg: DataConfig) -> TrainSet:
    """Render the training images and tokenize every example.

    Args:
        family: Model family.
        processor: The family's processor.
        cfg: What to build.

    Returns:
        The :class:`TrainSet`.
    """
    rng = np.random.default_rng(cfg.seed)
    pixels: list[dict[str, torch.Tensor]] = []
    sizes: list[int] = []
    labels: list[list[float]] = []
    segments: list[np.ndarray] = []
    prompt_index: dict[tuple[str, int], int] = {}
    prompts: list[dict[str, torch.Tensor]] = []
    qa: list[Example] = []
    captions: list[Example] = []
    grounding: list[Example] = []

    def prompt_id(question: str, size: int | None) -> int:
        key = (question, size if size is not None else 0)
        if key not in prompt_index:
            prompt_index[key] = len(prompts)
            if size is None:
                prompts.append(_tokenize_follow_up(family, processor, question))
            else:
                prompts.append(_tokenize_prompt(family, processor, question, size))
        return prompt_index[key]

    if family == "paligemma" and cfg.turns > 1:
        raise ZooError("PaliGemma has no multi-turn format; use DataConfig(turns=1).")

    for size_i, size in enumerate(cfg.image_sizes):
        seed = cfg.seed + 7919 * size_i  # distinct scenes per size, still disjoint from 0
        splits = {
            s: synth_pope(s, cfg.n_images, config=cfg.synth, seed=seed, image_size=size)
            for s in SPLITS
        }
        base = splits[SPLITS[0]]
        offset = len(pixels)
        names = [t.image_id for t in base.scenes]
        images = [base.image(n) for n in names]
        pixels.extend(_preprocess(family, processor, images))
        sizes.extend([size] * len(images))
        row = {n: offset + i for i, n in enumerate(names)}
        for truth in base.scenes:
            segments.append(object_map(truth))
            present = sorted(set(truth.names), key=OBJECT_ORDER.__getitem__)
            vec = [0.0] * len(VOCABULARY)
            for name in present:
                vec[OBJECT_ORDER[name]] = 1.0
            labels.append(vec)
            turn = (prompt_id(CAPTION_QUESTION, size), answer_ids(processor, " ".join(present)))
            captions.append(Example(image=row[truth.image_id], turns=(turn,), kind="caption"))
            if cfg.grounding_rate > 0:
                absent = [k.name for k in VOCABULARY if k.name not in present]
                asked = [(o, where(truth, o, size)) for o in present]
                picks = rng.choice(len(absent), size=len(asked), replace=False)
                asked += [(absent[i], NOT_THERE) for i in picks]
                for name, place in asked:
                    turn = (prompt_id(f"Where is the {name}?", size), answer_ids(processor, place))
                    grounding.append(
                        Example(
                            image=row[truth.image_id], turns=(turn,), kind="grounding", asked=OBJECT_ORDER[name]
                        )
                    )
        for split in SPLITS:
            # Every split's questions, yes questions included each time: the three splits
            # share them, and keeping them per split keeps the answers balanced 50/50.
            per_image: dict[str, list[tuple[str, str, str]]] = {}
            for item in splits[split].items:
                per_image.setdefault(item.image, []).append((item.text, item.label, item.object_name))
            for image, pairs in per_image.items():
                order = rng.permutation(len(pairs))
                for start in range(0, len(order), cfg.turns):
                    turns = []
                    asked = OBJECT_ORDER[pairs[order[start]][2]]
                    for j, k in enumerate(order[start : start + cfg.turns]):
                        text, label, _ = pairs[k]
                        question = text + (POPE_SUFFIX if rng.random() < cfg.suffix_rate else "")
                        pid = prompt_id(question, size if j == 0 else None)
                        turns.append((pid, answer_ids(processor, ANSWER_WORDS[label])))
                    qa.append(Example(image=row[image], turns=tuple(turns), kind="qa", asked=asked))
    return TrainSet(
        family=family,
        pixels=pixels,
        image_size=sizes,
        labels=torch.tensor(labels),
        prompts=prompts,
        examples=qa + captions + grounding,
        pad_id=processor.tokenizer.pad_token_id,
        segments=segments,
        image_token_id=processor.tokenizer.image_token_id,
    )


def where(truth: SceneTruth, name: str, size: int) -> str:
    """The 3x3 cell of the centre of an object's box, e.g. ``"top left"``."""
    x0, y0, x1, y1 = next(o.bbox for o in truth.objects if o.name == name)
    row = min(2, int(3 * (y0 + y1) / 2 / size))
    col = min(2, int(3 * (x0 + x1) / 2 / size))
    return f"{ROWS[row]} {COLUMNS[col]}"


def object_map(truth: SceneTruth) -> np.ndarray:
    """Which object is visible at each pixel: 0 for the backdrop, else 1 + vocabulary index."""
    w, h = truth.size
    out = np.zeros((h, w), dtype=np.uint8)
    for obj in truth.objects:  # paint order: later objects cover earlier ones
        x0, y0, x1, y1 = obj.bbox
        mask = shape_mask(obj.name, obj.bbox)
        out[y0:y1, x0:x1][mask] = 1 + OBJECT_ORDER[obj.name]
    return out


def cell_labels(segment: np.ndarray, cell: int, min_cover: float = 0.2) -> np.ndarray:
    """The dominant object of each ``cell`` x ``cell`` block of an object map.

    Args:
        segment: An :func:`object_map`.
        cell: Block side in pixels (the patch size, or patch x merge for Qwen2-VL).
        min_cover: Least share of the block an object must cover to label it.

    Returns:
        Row-major labels of shape ``(rows * cols,)``: 0 for backdrop, else 1 + index.
    """
    h, w = segment.shape
    blocks = segment.reshape(h // cell, cell, w // cell, cell).transpose(0, 2, 1, 3).reshape(-1, cell * cell)
    n_classes = len(VOCABULARY) + 1
    counts = np.stack([(blocks == k).sum(axis=1) for k in range(1, n_classes)], axis=1)
    best = counts.argmax(axis=1)
    covered = counts.max(axis=1) >= min_cover * cell * cell
    return np.where(covered, best + 1, 0).astype(np.int64)


def _preprocess(
    family: Family, processor: ProcessorMixin, images: Sequence[Image.Image]
) -> list[dict[str, torch.Tensor]]:
    out: list[dict[str, torch.Tensor]] = []
    chunk = 256
    for start in range(0, len(images), chunk):
        batch = processor.image_processor(images=list(images[start : start + chunk]), return_tensors="pt")
        pv = batch["pixel_values"]
        if family == "qwen2_vl":
            grid = batch["image_grid_thw"]
            counts = grid.prod(dim=-1).tolist()
            for part, g in zip(torch.split(pv, counts), grid):
                out.append({"pixel_values": part.clone(), "image_grid_thw": g.clone()})
        else:
            out.extend({"pixel_values": p.clone()} for p in pv)
    return out


def _tokenize_prompt(
    family: Family, processor: ProcessorMixin, question: str, size: int
) -> dict[str, torch.Tensor]:
    dummy = Image.new("RGB", (size, size), (128, 128, 128))
    enc = processor(images=[dummy], text=[prompt_text(family, processor, question)], return_tensors="pt")
    keep = ("input_ids", "token_type_ids", "mm_token_type_ids")
    return {k: enc[k][0] for k in keep if k in enc}


def _tokenize_follow_up(family: Family, processor: ProcessorMixin, question: str) -> dict[str, torch.Tensor]:
    # A later turn of a conversation, after the previous answer's end token.
    if family == "llava":
        text = f"USER: {question}\nASSISTANT:"
    else:
        text = f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    ids = processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    out = {"input_ids": ids}
    if family == "qwen2_vl":
        out["mm_token_type_ids"] = torch.zeros_like(ids)
    return out


def collate(ts: TrainSet, indices: Sequence[int], *, text_only: bool = False) -> dict[str, torch.Tensor]:
    """A right-padded training batch with labels on the answer tokens only.

    Args:
        ts: The training set.
        indices: Example indices.
        text_only: Withhold the images: drop the image placeholder tokens from the
            prompts and return no pixels (text-only language-model training on the
            same questions and answers).

    Returns:
        Model inputs including ``labels`` (``-100`` on prompt and padding); for
        PaliGemma ``token_type_ids`` (0 = bidirectional prefix, 1 = answer), for Qwen2-VL
        ``mm_token_type_ids`` and ``image_grid_thw``. Also, not model inputs:
        ``aux_pos`` (the last prompt position of the first turn), ``aux_asked`` (the
        asked object, ``-100`` for none) and ``aux_presence`` (multi-hot objects).

    Raises:
        ZooError: For ``text_only`` on a training set without an image token id.
    """
    if text_only and ts.image_token_id is None:
        raise ZooError("Text-only batches need TrainSet.image_token_id; rebuild it with build_train_set.")
    examples = [ts.examples[i] for i in indices]
    used = {prompt for e in examples for prompt, _ in e.turns}
    prompts = {i: _without_images(ts.prompts[i], ts.image_token_id) if text_only else ts.prompts[i] for i in used}
    seqs, labs, types, mm = [], [], [], []
    aux_pos = [len(prompts[e.turns[0][0]]["input_ids"]) - 1 for e in examples]
    for e in examples:
        seq, lab, typ, mmt = [], [], [], []
        for prompt, answer in e.turns:
            p = prompts[prompt]
            ans = torch.tensor(answer, dtype=torch.long)
            seq += [p["input_ids"], ans]
            lab += [torch.full_like(p["input_ids"], -100), ans]
            if "token_type_ids" in p:
                typ += [p["token_type_ids"], torch.ones_like(ans)]
            if "mm_token_type_ids" in p:
                mmt += [p["mm_token_type_ids"], torch.zeros_like(ans)]
        seqs.append(torch.cat(seq))
        labs.append(torch.cat(lab))
        if typ:
            types.append(torch.cat(typ))
        if mmt:
            mm.append(torch.cat(mmt))
    width = max(len(s) for s in seqs)
    batch = {
        "input_ids": _pad(seqs, width, ts.pad_id),
        "attention_mask": _pad([torch.ones_like(s) for s in seqs], width, 0),
        "labels": _pad(labs, width, -100),
    }
    if types:
        batch["token_type_ids"] = _pad(types, width, 1)
    if mm:
        batch["mm_token_type_ids"] = _pad(mm, width, 0)
    batch["aux_pos"] = torch.tensor(aux_pos)
    batch["aux_asked"] = torch.tensor([e.asked for e in examples])
    batch["aux_presence"] = ts.labels[[e.image for e in examples]]
    if text_only:
        return batch
    pix = [ts.pixels[e.image] for e in examples]
    if ts.family == "qwen2_vl":
        batch["pixel_values"] = torch.cat([p["pixel_values"] for p in pix])
        batch["image_grid_thw"] = torch.stack([p["image_grid_thw"] for p in pix])
    else:
        batch["pixel_values"] = torch.stack([p["pixel_values"] for p in pix])
    return batch


def _without_images(prompt: dict[str, torch.Tensor], image_token_id: int | None) -> dict[str, torch.Tensor]:
    keep = prompt["input_ids"] != image_token_id
    return {k: v[keep] for k, v in prompt.items()}


def _pad(rows: Sequence[torch.Tensor], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
