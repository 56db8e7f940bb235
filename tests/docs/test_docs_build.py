"""The documentation site, API reference included, builds with warnings as errors.

mkdocstrings (griffe) warns on a docstring that documents a parameter the signature does
not have, a broken cross-reference or a missing page; ``mkdocs.yml`` sets ``strict``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "site" / "api" / "attribution" / "index.html").read_text()
    assert "attribute_residual" in page and "ig_steps" in page  # docstrings made it into the reference
