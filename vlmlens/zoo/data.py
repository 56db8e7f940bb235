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

from vlmlens.data import SPLITS, VOCABULARY, SynthConfig, format_prompt, synth_pope
from vlmlens.data.prompts import POPE_SUFFIX
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.tokenizer import Family

CAPTION_QUESTION = "What objects are in the image?"
"""The question of caption examples."""

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
        for name in ("caption_rate", "suffix_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ZooError(f"DataConfig.{name} must be in [0, 1]; got {getattr(self, name)}.")


@dataclass(frozen=True)
class Example:
    """One training example: an image and its turns (tokenized prompt, answer ids).

    The first turn's prompt holds the image; later turns are follow-up questions.
    """

    image: int
    turns: tuple[tuple[int, tuple[int, ...]], ...]
    kind: Literal["qa", "caption"]


@dataclass
class TrainSet:
    """Preprocessed images, tokenized prompts and the examples that combine them.

    Attributes:
        family: Model family.
        pixels: Per image, the image processor's tensors (``pixel_values`` and, for
            Qwen2-VL, ``image_grid_thw``), without the batch axis for LLaVA/PaliGemma.
        image_size: Side of each image in pixels.
        labels: Per image, the multi-hot object-presence vector (vocabulary order).
        prompts: Per tokenized prompt, its token-level tensors (``input_ids`` and the
            family's type ids), 1-D.
        examples: All examples, QA first, then captions.
    """

    family: Family
    pixels: list[dict[str, torch.Tensor]]
    image_size: list[int]
    labels: torch.Tensor
    prompts: list[dict[str, torch.Tensor]]
    examples: list[Example]
    pad_id: int

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
    prompt_index: dict[tuple[str, int], int] = {}
    prompts: list[dict[str, torch.Tensor]] = []
    qa: list[Example] = []
    captions: list[Example] = []

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
            present = sorted(set(truth.names), key=OBJECT_ORDER.__getitem__)
            vec = [0.0] * len(VOCABULARY)
            for name in present:
                vec[OBJECT_ORDER[name]] = 1.0
            labels.append(vec)
            turn = (prompt_id(CAPTION_QUESTION, size), answer_ids(processor, " ".join(present)))
            captions.append(Example(image=row[truth.image_id], turns=(turn,), kind="caption"))
        per_image: dict[str, list[tuple[str, str]]] = {}
        for split in SPLITS:
            for item in splits[split].items:
                pairs = per_image.setdefault(item.image, [])
                if (item.text, item.label) not in pairs:
                    pairs.append((item.text, item.label))
        for image, pairs in per_image.items():
            order = rng.permutation(len(pairs))
            # Each question once; groups of `turns` questions form one conversation.
            for start in range(0, len(order), cfg.turns):
                turns = []
                for j, k in enumerate(order[start : start + cfg.turns]):
                    text, label = pairs[k]
                    question = text + (POPE_SUFFIX if rng.random() < cfg.suffix_rate else "")
                    pid = prompt_id(question, size if j == 0 else None)
                    turns.append((pid, answer_ids(processor, ANSWER_WORDS[label])))
                qa.append(Example(image=row[image], turns=tuple(turns), kind="qa"))
    return TrainSet(
        family=family,
        pixels=pixels,
        image_size=sizes,
        labels=torch.tensor(labels),
        prompts=prompts,
        examples=qa + captions,
        pad_id=processor.tokenizer.pad_token_id,
    )


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


def collate(ts: TrainSet, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """A right-padded training batch with labels on the answer tokens only.

    Args:
        ts: The training set.
        indices: Example indices.

    Returns:
        Model inputs including ``labels`` (``-100`` on prompt and padding); for
        PaliGemma ``token_type_ids`` (0 = bidirectional prefix, 1 = answer), for Qwen2-VL
        ``mm_token_type_ids`` and ``image_grid_thw``.
    """
    examples = [ts.examples[i] for i in indices]
    seqs, labs, types, mm = [], [], [], []
    for e in examples:
        seq, lab, typ, mmt = [], [], [], []
        for prompt, answer in e.turns:
            p = ts.prompts[prompt]
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
    pix = [ts.pixels[e.image] for e in examples]
    if ts.family == "qwen2_vl":
        batch["pixel_values"] = torch.cat([p["pixel_values"] for p in pix])
        batch["image_grid_thw"] = torch.stack([p["image_grid_thw"] for p in pix])
    else:
        batch["pixel_values"] = torch.stack([p["pixel_values"] for p in pix])
    return batch


def _pad(rows: Sequence[torch.Tensor], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
