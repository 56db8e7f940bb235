"""The ``>>>`` examples in docs/ops.md run and print what they say."""

from __future__ import annotations

import doctest
from pathlib import Path

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_ops_md_examples() -> None:
    result = doctest.testfile(str(DOCS / "ops.md"), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15
    assert result.failed == 0
