"""The GPU benchmark suite (bench/real_size.py) runs on CPU at tiny size, and its fidelity checks hold."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_real_size_suite_runs_every_part_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "consistency", "real_size"):
        sys.modules.pop(name, None)  # import the bench scripts fresh from bench/
    import real_size

    out = tmp_path / "rows.jsonl"
    rows = real_size.main(["--scale", "tiny", "--repeats", "1", "--samples", "8", "--batch-size", "4",
                           "--out", str(out)])
    assert [r for r in rows if "error" in r] == []
    parts = {(r["family"], r["part"]) for r in rows}
    assert parts == {(f, p) for f in ("llava", "paligemma", "qwen2_vl")
                     for p in ("model", "golden", "forward", "sweep", "atp", "consistency", "store")}
    assert len(out.read_text().splitlines()) == len(rows)  # written as they finished
    budgets = sorted((r["family"], r["tokens"]) for r in rows if r["part"] == "consistency")
    assert budgets == sorted((f, t) for f in ("llava", "paligemma", "qwen2_vl") for t in (3, 10))
    for row in rows:
        if row["part"] == "golden":  # fp32 CPU: no edit and a hand-written edit are bit-identical
            assert row["clean_max_abs"] == 0 and row["ablate_max_abs"] == 0
            assert row["ablation_effect_max_abs"] > 0  # the edit did something
        if row["part"] == "consistency":
            assert row["greedy_identical"] is True
        for key, value in row.items():
            if key.endswith(("_s", "ratio", "vs_greedy", "vs_hf_k", "speedup_vs_loop")):
                assert math.isfinite(value) and value > 0, (row["family"], row["part"], key, value)
