"""The per-call context that hook points and interventions read while a call runs.

State lives in one place per call (see the style guide): a :class:`Call` says how the
rows of the running batch relate to the prepared batch (stacked sweep copies, or the
return sequences of a generation) and a :class:`Step` says which token positions one
text forward covers (the prompt, or one decoding step after the KV cache). Both are
pushed on a :class:`CallStack` owned by the HookedVLM for exactly the duration of
their call or forward and popped in ``finally`` blocks, so nothing outlives a call.

"Is this a decoding step?" is decided here and nowhere else: :meth:`Step.from_cache`
reads the number of positions already in the KV cache when the language model starts
a forward.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vlmlens.errors import InterventionError

__all__ = ["Call", "Step", "CallStack", "RowOrder"]

RowOrder = Literal["copy", "sample"]
"""``"copy"``: stacked copies follow each other (a sweep, ``torch.cat([batch] * n)``);
``"sample"``: each sample's copies are adjacent (``repeat_interleave``, as ``generate``
expands ``num_return_sequences``)."""


@dataclass(frozen=True, kw_only=True)
class Call:
    """How the running batch's rows map onto the prepared batch's samples.

    Attributes:
        copies: copies of the prepared batch stacked along the batch axis.
        order: how the copies are laid out (see :data:`RowOrder`).
        images_copied: whether the images are copied too. A sweep stacks whole inputs;
            ``generate`` encodes each image once and copies only the language model's rows.
    """

    copies: int = 1
    order: RowOrder = "copy"
    images_copied: bool = True

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise InterventionError(f"a call needs at least one copy of the batch, got copies={self.copies}")

    def at(self, tower: Any) -> Call:
        """The call as seen by one tower: a single copy where the images were not copied."""
        from vlmlens.sites import Tower

        return self if tower is Tower.TEXT or self.images_copied else Call()

    def expand(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Repeat a per-sample tensor (leading axis = samples) to the running rows."""
        if self.copies == 1:
            return per_sample
        if self.order == "copy":
            return per_sample.repeat(self.copies, *([1] * (per_sample.dim() - 1)))
        return per_sample.repeat_interleave(self.copies, 0)

    def rows_of_copy(self, copy: int, per_copy: int) -> torch.Tensor:
        """Row indices of stacked copy ``copy`` when each copy has ``per_copy`` rows."""
        if not 0 <= copy < self.copies:
            raise InterventionError(f"copy {copy} does not exist in a call with {self.copies} copies")
        if self.order == "copy":
            return torch.arange(copy * per_copy, (copy + 1) * per_copy)
        return torch.arange(per_copy) * self.copies + copy


@dataclass(frozen=True)
class Step:
    """The token positions one language-model forward covers: ``[past, past + length)``.

    Attributes:
        past: positions already in the KV cache (0 for the prompt).
        length: positions this forward processes.
    """

    past: int
    length: int

    @classmethod
    def from_cache(cls, cache: Any, length: int) -> Step:
        """The step of a forward given the model's KV cache object (``None``: no cache)."""
        past = int(cache.get_seq_length()) if cache is not None else 0
        return cls(past, length)

    def generated(self, prompt_length: int) -> int:
        """The generation step: tokens generated before this forward (0: the prompt's forward)."""
        return self.past + self.length - prompt_length

    def window(self, prompt: torch.Tensor, axis: int, fill: Any = False) -> torch.Tensor:
        """Cut a prompt-shaped tensor to this step's positions along ``axis``.

        Positions past the end of the prompt (generated tokens) are filled with ``fill``.
        """
        size = prompt.shape[axis]
        start, stop = min(self.past, size), min(self.past + self.length, size)
        part = prompt.narrow(axis, start, stop - start)
        missing = self.length - (stop - start)
        if missing:
            shape = list(prompt.shape)
            shape[axis] = missing
            part = torch.cat([part, torch.full(shape, fill, dtype=prompt.dtype, device=prompt.device)], axis)
        return part


@dataclass
class CallStack:
    """The calls and text forwards in progress on one model, innermost last.

    Attributes:
        calls: entered by vlmlens entry points (sweep, generate) for their duration.
        steps: pushed by the language model's pre-hook, popped when its forward ends.
        results: per ``(tower, layer)``, how many active requests want per-head results.
        patterns: per ``(tower, layer)``, how many active requests need the attention
            pattern (computed with eager attention there; other layers use the model's kernel).
        image_call: per vision layer of a tower that attends image by image (Qwen2-VL),
            the index of the image whose attention is being computed (reset by each
            call of that attention module).
    """

    calls: list[Call] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    results: Counter = field(default_factory=Counter)
    patterns: Counter = field(default_factory=Counter)
    image_call: dict[int, int] = field(default_factory=dict)

    @property
    def call(self) -> Call:
        """The innermost active call (a single plain copy when none is active)."""
        return self.calls[-1] if self.calls else Call()

    @property
    def step(self) -> Step | None:
        """The text forward in progress, or ``None`` outside the language model."""
        return self.steps[-1] if self.steps else None

    @contextlib.contextmanager
    def entered(self, call: Call) -> Iterator[Call]:
        """Make ``call`` the active call while inside."""
        self.calls.append(call)
        try:
            yield call
        finally:
            self.calls.pop()

    @contextlib.contextmanager
    def requesting(self, kind: Literal["result", "pattern"], keys: Any) -> Iterator[None]:
        """Request per-head results or attention patterns for ``keys`` (``(tower, layer)`` pairs)
        while inside; requests nest, and leaving restores what was requested before."""
        counter = self.results if kind == "result" else self.patterns
        keys = list(keys)
        counter.update(keys)
        try:
            yield
        finally:
            counter.subtract(keys)
            for key in keys:
                if counter[key] <= 0:
                    del counter[key]
