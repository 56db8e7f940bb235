"""Prompt templates per family."""

from __future__ import annotations

import pytest

from vlmlens.data import FAMILIES, POPE_SUFFIX, TEMPLATES, format_prompt
from vlmlens.errors import DataError

Q = "Is there a cup in the image?"


def test_families_have_templates() -> None:
    assert FAMILIES == ("llava", "paligemma", "qwen2_vl")
    assert set(TEMPLATES) == set(FAMILIES)


def test_llava() -> None:
    assert format_prompt("llava", Q) == "USER: <image>\nIs there a cup in the image?\nASSISTANT:"
    assert format_prompt("llava", Q, suffix=True) == f"USER: <image>\n{Q}{POPE_SUFFIX}\nASSISTANT:"


def test_paligemma_leaves_bos_and_newline_to_the_processor() -> None:
    assert format_prompt("paligemma", Q) == "<image>Is there a cup in the image?"
    assert format_prompt("paligemma", Q, suffix=True) == f"<image>{Q}\nAnswer the question using a single word or phrase."


def test_qwen2_vl_is_a_chat_message_list() -> None:
    msgs = format_prompt("qwen2_vl", Q, suffix=True)
    assert msgs == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q + POPE_SUFFIX}]}
    ]
    assert format_prompt("qwen2_vl", Q) is not format_prompt("qwen2_vl", Q)  # fresh list each call


def test_braces_in_question_are_kept() -> None:
    assert format_prompt("paligemma", "a {b} c") == "<image>a {b} c"


def test_unknown_family_lists_known_ones() -> None:
    with pytest.raises(DataError, match="no prompt template for family 'llama'; known families: llava, paligemma, qwen2_vl"):
        format_prompt("llama", Q)
