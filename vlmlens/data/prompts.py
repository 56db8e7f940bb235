"""Prompt templates per model family, as data.

Each template is the exact input handed to the family's Hugging Face processor:

* ``llava``: ``"USER: <image>\\n{question}\\nASSISTANT:"`` (LLaVA-1.5 chat format). The
  processor expands ``<image>`` into the 576 image tokens.
* ``paligemma``: ``"<image>{question}"``. The processor expands ``<image>`` into the image
  tokens, inserts ``<bos>`` after them and appends the ``"\\n"`` that ends the prefix, so
  neither is in the template.
* ``qwen2_vl``: a chat message list, ``[{"role": "user", "content": [{"type": "image"},
  {"type": "text", "text": question}]}]``, to pass through
  ``processor.apply_chat_template(messages, add_generation_prompt=True)``.

Examples:
    >>> format_prompt("llava", "Is there a cup in the image?")
    'USER: <image>\\nIs there a cup in the image?\\nASSISTANT:'
    >>> format_prompt("paligemma", "Is there a cup in the image?", suffix=True)
    '<image>Is there a cup in the image?\\nAnswer the question using a single word or phrase.'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vlmlens.errors import DataError

Family = Literal["llava", "paligemma", "qwen2_vl"]
FAMILIES: tuple[str, ...] = ("llava", "paligemma", "qwen2_vl")
"""Model families with a prompt template."""

POPE_SUFFIX = "\nAnswer the question using a single word or phrase."
"""The instruction commonly appended to POPE questions."""

Messages = list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class PromptTemplate:
    """How one family wants a single-image question.

    Attributes:
        family: Family name.
        kind: ``"text"``: :attr:`text` is a format string with ``{question}``;
            ``"chat"``: the prompt is a chat message list for the processor's template.
        text: The format string (``kind == "text"``), else ``None``.
    """

    family: str
    kind: Literal["text", "chat"]
    text: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "text" and (self.text is None or "{question}" not in self.text):
            raise DataError(f"text template of {self.family!r} must contain '{{question}}', got {self.text!r}")
        if self.kind == "chat" and self.text is not None:
            raise DataError(f"chat template of {self.family!r} takes no text, got {self.text!r}")

    def format(self, question: str) -> str | Messages:
        """Fill in the question: a string for text templates, a message list for chat ones."""
        if self.kind == "text":
            # str.replace, not str.format: a question may itself contain braces.
            return (self.text or "").replace("{question}", question)
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


TEMPLATES: dict[str, PromptTemplate] = {
    "llava": PromptTemplate(family="llava", kind="text", text="USER: <image>\n{question}\nASSISTANT:"),
    "paligemma": PromptTemplate(family="paligemma", kind="text", text="<image>{question}"),
    "qwen2_vl": PromptTemplate(family="qwen2_vl", kind="chat"),
}
"""Prompt template of each family in :data:`FAMILIES`."""


def format_prompt(family: str, question: str, *, suffix: bool = False) -> str | Messages:
    """The prompt for one question in a family's format.

    Args:
        family: One of :data:`FAMILIES`.
        question: The question text.
        suffix: Append :data:`POPE_SUFFIX` to the question.

    Returns:
        A string for ``llava`` and ``paligemma``; a chat message list for ``qwen2_vl``.

    Raises:
        DataError: On an unknown family (the message lists the known ones).

    Examples:
        >>> format_prompt("qwen2_vl", "Is there a bus in the image?")[0]["content"][1]
        {'type': 'text', 'text': 'Is there a bus in the image?'}
    """
    try:
        template = TEMPLATES[family]
    except (KeyError, TypeError):
        raise DataError(f"no prompt template for family {family!r}; known families: {', '.join(FAMILIES)}") from None
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    return template.format(question + POPE_SUFFIX if suffix else question)
