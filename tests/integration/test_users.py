"""circuits/ and notebooks/ are users of the library: run them on tiny models."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_notebooks_execute():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        namespace: dict = {}
        for cell in cells:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), f"{path.name}", "exec"), namespace)
        assert namespace, path


def _imports_only_public_api(path: Path) -> None:
    import vlmlens

    for line in path.read_text().splitlines():
        if line.startswith("from vlmlens import"):
            names = [n.strip() for n in line.removeprefix("from vlmlens import").split(",")]
            assert set(names) <= set(vlmlens.__all__), line


@pytest.mark.slow
def test_reliability_neuron_search_runs():
    path = ROOT / "circuits" / "reliability_neurons.py"
    _imports_only_public_api(path)
    module = runpy.run_path(str(path))
    results = module["main"](["--models", "tiny-llava", "tiny-paligemma", "--images", "2", "--k", "3"])
    assert [r.family for r in results] == ["llava", "paligemma"]
    for r in results:
        assert len(r.top_neurons) == 3 and 0 <= r.mean_depth <= 1
        assert r.logit_diff_change_top > 0
