"""circuits/ scripts are users of the library: run them on tiny models (notebooks: tests/notebooks)."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports_only_public_api(path: Path) -> None:
    import vlmlens

    for line in path.read_text().splitlines():
        code = line.split("#")[0]
        if code.startswith("from vlmlens import"):
            names = [n.strip() for n in code.removeprefix("from vlmlens import").split(",")]
            assert set(names) <= set(vlmlens.__all__), line


def _run(name: str, argv: list[str]) -> dict:
    path = ROOT / "circuits" / name / "run.py"
    _imports_only_public_api(path)
    module = runpy.run_path(str(path), run_name="circuits_script")
    return module["main"](argv)


@pytest.mark.slow
def test_reliability_neuron_search_runs(tmp_path):
    results = _run("reliability_neurons", ["--models", "tiny-llava", "tiny-paligemma", "--n-images", "4", "--k", "3",
                                           "--ks", "1", "3", "--n-random", "2", "--n-resamples", "50",
                                           "--methods", "dla", "atp", "--out", str(tmp_path)])
    assert [r["family"] for r in results["models"].values()] == ["llava", "paligemma"]
    for r in results["models"].values():
        for method in ("dla", "atp"):
            assert len(r["methods"][method]["top"]) == 3 and 0 <= r["methods"][method]["mean_depth"] <= 1
    assert (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_fusion_comparison_script_runs(tmp_path):
    result = _run("fusion_comparison", ["--models", "tiny-llava", "tiny-qwen2_vl", "--n-images", "4", "--quick",
                                        "--out", str(tmp_path)])
    assert set(result["models"]) == {"tiny-llava", "tiny-qwen2_vl"}
    assert "tiny-llava vs tiny-qwen2_vl" in result["differences"]
    assert (tmp_path / "report.html").read_text().count("plotly") > 0 and (tmp_path / "summary.md").exists()
