"""Every tutorial notebook runs top to bottom in a fresh kernel, on the shipped toy zoo.

A cell that raises fails the test with the cell's traceback. Progress bars are silenced
(TQDM_DISABLE); figures are the kernel's inline PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    figures = sum("image/png" in o.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                  for o in cell.get("outputs", []))
    assert figures >= 2, f"{path.name} drew {figures} figures"
