"""The behaviour a circuit search explains: yes/no questions about images, grouped by image.

A :class:`Behaviour` holds POPE-style items (image, question, true label) with the image
each belongs to, so every split keeps all questions of an image on one side. The read-out
is the **truth margin** at the answer position: the yes-minus-no logit difference (each
side the logsumexp over the answer's spellings), signed so that positive means the model
leans to the true answer. A question is answered correctly when its truth margin is > 0.

Examples:
    >>> from vlmlens.data import synth_pope
    >>> b = Behaviour.from_dataset(synth_pope("adversarial", n_images=4, seed=0))
    >>> rank, held_out = b.split(0.5, seed=0)
    >>> len(rank) + len(held_out) == len(b), set(rank.groups).isdisjoint(held_out.groups)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, no_type_check

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.errors import InputError
from vlmlens.inputs import Batch

__all__ = ["AnswerIds", "Behaviour"]


@dataclass(frozen=True)
class Behaviour:
    """Yes/no questions about images, with the image each one is about.

    Attributes:
        images: one PIL image per question.
        questions: the question texts.
        labels: ``"yes"`` or ``"no"`` per question.
        groups: the image each question is about (splits never separate a group).
        suffix: append POPE's answer-format suffix to every question.
        source: where the items came from (recorded in results).
    """

    images: tuple[Any, ...]
    questions: tuple[str, ...]
    labels: tuple[str, ...]
    groups: tuple[str, ...]
    suffix: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.questions)
        if not n:
            raise InputError("a Behaviour needs at least one question")
        if not len(self.images) == len(self.labels) == len(self.groups) == n:
            raise InputError(f"images ({len(self.images)}), questions ({n}), labels ({len(self.labels)}) and groups "
                             f"({len(self.groups)}) must be paired, one per question")
        bad = sorted({label for label in self.labels if label not in ("yes", "no")})
        if bad:
            raise InputError(f"labels must be 'yes' or 'no', got {bad}")

    def __len__(self) -> int:
        return len(self.questions)

    @classmethod
    @no_type_check
    def from_dataset(cls, dataset: Any, *, suffix: bool = False) -> Behaviour:
        """All questions of a :class:`vlmlens.data.PopeDataset` (POPE or SynthPOPE)."""
        items = list(dataset.items)
        if not items:
            raise InputError("the dataset has no questions")
        return cls(images=tuple(dataset.image(item) for item in items), questions=tuple(i.text for i in items),
                   labels=tuple(i.label for i in items), groups=tuple(i.image for i in items), suffix=suffix,
                   source=f"{type(dataset).__name__}(split={getattr(dataset, 'split', None)!r}, n={len(items)})")

    @property
    def truth_sign(self) -> Float[Tensor, " batch"]:
        """+1 where the true answer is yes, -1 where it is no."""
        return torch.tensor([1.0 if label == "yes" else -1.0 for label in self.labels])

    def subset(self, rows: Sequence[int], tag: str) -> Behaviour:
        """The questions at ``rows``, in that order."""
        pick = [int(r) for r in rows]
        return Behaviour(images=tuple(self.images[r] for r in pick), questions=tuple(self.questions[r] for r in pick),
                         labels=tuple(self.labels[r] for r in pick), groups=tuple(self.groups[r] for r in pick),
                         suffix=self.suffix, source=f"{self.source} {tag}")

    def split(self, fraction: float = 0.5, *, seed: int = 0) -> tuple[Behaviour, Behaviour]:
        """Two disjoint parts by image: about ``fraction`` of the images, and the rest.

        Raises:
            InputError: if ``fraction`` is not in (0, 1) or there are fewer than two images.
        """
        if not 0.0 < fraction < 1.0:
            raise InputError(f"fraction must be in (0, 1), got {fraction}")
        names = sorted(set(self.groups))
        if len(names) < 2:
            raise InputError(f"splitting by image needs at least two images, got {len(names)}")
        order = np.random.default_rng(seed).permutation(len(names))
        cut = min(max(1, round(fraction * len(names))), len(names) - 1)
        first = {names[i] for i in order[:cut]}
        rows = [r for r, g in enumerate(self.groups) if g in first]
        rest = [r for r, g in enumerate(self.groups) if g not in first]
        return (self.subset(rows, f"[images split {fraction:g}, seed {seed}: part 1]"),
                self.subset(rest, f"[images split {fraction:g}, seed {seed}: part 2]"))

    def batches(self, model: Any, batch_size: int) -> Iterator[tuple[range, Batch]]:
        """``(rows, batch)`` chunks in order, prepared by ``model.prepare``."""
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            rows = range(start, min(start + batch_size, len(self)))
            yield rows, model.prepare([self.images[r] for r in rows], [self.questions[r] for r in rows],
                                      suffix=self.suffix)


@dataclass(frozen=True)
class AnswerIds:
    """Token ids of the answers' spellings: each side's logit is the logsumexp over them.

    Attributes:
        yes: ids of "yes" spellings that are single tokens ("yes", "Yes", " yes" ...).
        no: ids of the "no" spellings.
    """

    yes: tuple[int, ...]
    no: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.yes or not self.no:
            raise InputError(f"need at least one single-token spelling of yes and of no, got yes={self.yes}, "
                             f"no={self.no}")

    @classmethod
    def of(cls, model: Any) -> AnswerIds:
        """Every single-token spelling of yes / no in the model's tokenizer."""
        tokenizer = model.tokenizer
        special = set(tokenizer.all_special_ids)

        def ids(words: tuple[str, ...]) -> tuple[int, ...]:
            found = set()
            for word in words:
                for text in (word, " " + word):
                    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
                    if len(tokens) == 1 and tokens[0] not in special:
                        found.add(int(tokens[0]))
            return tuple(sorted(found))

        return cls(yes=ids(("yes", "Yes", "YES")), no=ids(("no", "No", "NO")))

    def last_logits(self, logits: Float[Tensor, "*cond batch seq vocab"], batch: Batch) -> Float[Tensor, "*cond batch vocab"]:
        last = torch.as_tensor(batch.layout.last_prompt, device=logits.device)
        return logits[..., torch.arange(len(last), device=logits.device), last, :].float()

    def margin(self, logits: Float[Tensor, "*cond batch seq vocab"], batch: Batch) -> Float[Tensor, "*cond batch"]:
        """Yes-minus-no margin at each sample's last prompt position."""
        rows = self.last_logits(logits, batch)
        return rows[..., list(self.yes)].logsumexp(-1) - rows[..., list(self.no)].logsumexp(-1)

    def direction_weights(self, logits: Float[Tensor, "batch seq vocab"], batch: Batch) -> Float[Tensor, "batch vocab"]:
        """d margin / d logits at the last position: softmax weights within each side (+ yes, - no)."""
        rows = self.last_logits(logits, batch)
        out = torch.zeros_like(rows)
        out[:, list(self.yes)] = rows[:, list(self.yes)].softmax(-1)
        out[:, list(self.no)] = -rows[:, list(self.no)].softmax(-1)
        return out
