"""The examples in vlmlens.data docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "vlmlens.data",
    "vlmlens.data.answers",
    "vlmlens.data.cli",
    "vlmlens.data.objects",
    "vlmlens.data.pope",
    "vlmlens.data.prompts",
    "vlmlens.data.render",
    "vlmlens.data.scene",
    "vlmlens.data.synth",
    "vlmlens.data.synth_config",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # examples that write files write here
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
