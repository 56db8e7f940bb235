"""TokenLayout: where the image tokens, the question and the padding sit in a batch.

Computed from ``input_ids`` (never from hard-coded offsets): the positions of the
family's image token, cut into images by each image's token count, each image's
patch grid, the last prompt position, the question span, the prefix segment of
prefix-LM families and the padding mask.

Examples:
    >>> import torch
    >>> from vlmlens.layout import TokenLayout
    >>> ids = torch.tensor([[0, 0, 5, 9, 9, 9, 9, 7, 8]])
    >>> mask = (ids != 0).long()
    >>> layout = TokenLayout.from_ids(ids, mask, image_token_id=9, grids=[(2, 2)])
    >>> layout.images[0][0].start, layout.last_prompt
    (3, (8,))
    >>> layout.patch_position(0, row=1, col=0)
    5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from vlmlens.errors import InputError

__all__ = ["ImageSpan", "TokenLayout"]


@dataclass(frozen=True)
class ImageSpan:
    """The contiguous image tokens of one image in one sample.

    Attributes:
        start: first position (inclusive).
        stop: last position + 1.
        grid: (rows, cols) of the patch grid; ``rows * cols == stop - start``.
    """

    start: int
    stop: int
    grid: tuple[int, int]

    @property
    def n_tokens(self) -> int:
        return self.stop - self.start

    def position(self, row: int, col: int) -> int:
        """Sequence position of patch (row, col), row-major."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise InputError(
                f"patch (row={row}, col={col}) is outside the {rows}x{cols} patch grid; "
                f"valid rows 0..{rows - 1}, cols 0..{cols - 1}"
            )
        return self.start + row * cols + col


@dataclass(frozen=True)
class TokenLayout:
    """Per-sample token layout of a batch.

    Attributes:
        seq_len: padded sequence length.
        images: per sample, its images' spans in order.
        last_prompt: per sample, the position whose logits predict the answer.
        question: per sample, the (start, stop) span of the question tokens, or ``None``
            where it could not be located.
        prefix: per sample, the (start, stop) span that attends bidirectionally
            (prefix-LM families: image + prompt), else ``None``.
        padding: ``batch seq`` mask, ``True`` at padding positions.
        padding_side: ``"left"`` or ``"right"``.
    """

    seq_len: int
    images: tuple[tuple[ImageSpan, ...], ...]
    last_prompt: tuple[int, ...]
    question: tuple[tuple[int, int] | None, ...]
    prefix: tuple[tuple[int, int] | None, ...]
    padding: Bool[Tensor, "batch seq"]
    padding_side: str

    @property
    def batch_size(self) -> int:
        return len(self.images)

    @classmethod
    def from_ids(
        cls,
        input_ids: Int[Tensor, "batch seq"],
        attention_mask: Int[Tensor, "batch seq"] | None,
        *,
        image_token_id: int,
        grids: Sequence[tuple[int, int]],
        question_ids: Sequence[Sequence[int]] | None = None,
        prefix_lm: bool = False,
    ) -> TokenLayout:
        """Build the layout of a batch from its token ids.

        Args:
            input_ids: the batch's token ids.
            attention_mask: 1 for real tokens, 0 for padding (``None``: no padding).
            image_token_id: id of the family's image placeholder token.
            grids: (rows, cols) of every image of the batch, in order of appearance
                (sample 0's images first). Each image owns ``rows * cols`` tokens.
            question_ids: per sample, the question's token ids, to locate its span.
            prefix_lm: whether the prompt is a bidirectional prefix (PaliGemma).

        Raises:
            InputError: the image tokens do not match the grids.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        padding = attention_mask == 0
        batch, seq_len = input_ids.shape
        left = bool(padding[:, 0].any())
        images: list[tuple[ImageSpan, ...]] = []
        remaining = list(grids)
        last_prompt, questions, prefixes = [], [], []
        for b in range(batch):
            positions = torch.nonzero(input_ids[b] == image_token_id).flatten().tolist()
            spans = []
            while positions:
                if not remaining:
                    raise InputError(
                        f"sample {b} has more image tokens than the {len(grids)} image grid(s) account for; "
                        "pass one grid per image in the batch"
                    )
                rows, cols = remaining.pop(0)
                count = rows * cols
                run, positions = positions[:count], positions[count:]
                if len(run) != count or run[-1] - run[0] != count - 1:
                    raise InputError(
                        f"sample {b}: expected {count} contiguous image tokens for a {rows}x{cols} grid "
                        f"starting at position {run[0]}, found {len(run)}"
                    )
                spans.append(ImageSpan(run[0], run[-1] + 1, (rows, cols)))
            images.append(tuple(spans))
            real = torch.nonzero(~padding[b]).flatten()
            if real.numel() == 0:
                raise InputError(f"sample {b} is all padding")
            first, last = int(real[0]), int(real[-1])
            last_prompt.append(last)
            prefixes.append((first, last + 1) if prefix_lm else None)
            q = question_ids[b] if question_ids is not None else None
            questions.append(_locate(input_ids[b, first : last + 1].tolist(), q, first) if q else None)
        if remaining:
            raise InputError(f"{len(remaining)} image grid(s) left over: the batch has fewer image tokens than images")
        return cls(
            seq_len=seq_len,
            images=tuple(images),
            last_prompt=tuple(last_prompt),
            question=tuple(questions),
            prefix=tuple(prefixes),
            padding=padding,
            padding_side="left" if left else "right",
        )

    def image_positions(self, sample: int, image: int | None = None) -> Int[Tensor, " n"]:
        """Sequence positions of a sample's image tokens (all images, or one)."""
        spans = self._spans(sample)
        chosen = spans if image is None else (self._span(sample, image),)
        return torch.tensor([p for s in chosen for p in range(s.start, s.stop)], dtype=torch.long)

    def patch_position(self, sample: int, row: int, col: int, image: int = 0) -> int:
        """Sequence position of patch (row, col) of one image of a sample."""
        return self._span(sample, image).position(row, col)

    def grid(self, sample: int, image: int = 0) -> tuple[int, int]:
        """(rows, cols) of one image of a sample."""
        return self._span(sample, image).grid

    def mask(self, kind: str) -> Bool[Tensor, "batch seq"]:
        """A ``batch seq`` mask of ``"image"``, ``"question"``, ``"last"``, ``"prefix"`` or ``"padding"``."""
        out = torch.zeros(self.batch_size, self.seq_len, dtype=torch.bool)
        if kind == "padding":
            return self.padding.clone()
        for b in range(self.batch_size):
            if kind == "image":
                for s in self.images[b]:
                    out[b, s.start : s.stop] = True
            elif kind == "last":
                out[b, self.last_prompt[b]] = True
            elif kind in ("question", "prefix"):
                span = (self.question if kind == "question" else self.prefix)[b]
                if span is None:
                    raise InputError(f"sample {b} has no {kind} span in this layout")
                out[b, span[0] : span[1]] = True
            else:
                raise InputError(f"unknown position kind {kind!r}; use image, question, last, prefix or padding")
        return out

    def _spans(self, sample: int) -> tuple[ImageSpan, ...]:
        if not 0 <= sample < self.batch_size:
            raise InputError(f"sample {sample} is out of range for a batch of {self.batch_size}")
        return self.images[sample]

    def _span(self, sample: int, image: int) -> ImageSpan:
        spans = self._spans(sample)
        if not 0 <= image < len(spans):
            raise InputError(f"sample {sample} has {len(spans)} image(s); image index {image} is out of range")
        return spans[image]


def _locate(row: list[int], question: Sequence[int], offset: int) -> tuple[int, int] | None:
    """Find the question's tokens in a row; tolerate a differently merged first token."""
    q = list(question)
    for skip in (0, 1):
        needle = q[skip:]
        if not needle:
            continue
        for start in range(len(row) - len(needle), -1, -1):
            if row[start : start + len(needle)] == needle:
                begin = max(start - skip, 0)
                return offset + begin, offset + start + len(needle)
    return None
