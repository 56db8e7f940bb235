"""The per-sample store: appends by batch, keeps only finished batches, reads in dataset order."""

import numpy as np
import pytest

from vlmlens.errors import DataError
from vlmlens.vrp.store import SampleStore


def _rows(batch: int, qids: list[int]) -> list[dict]:
    return [{"question_id": q, "batch": batch, "value": q / 10, "text": ""} for q in qids]


def test_append_and_read_back_in_dataset_order(tmp_path) -> None:
    store = SampleStore(tmp_path / "run")
    store.append("samples", 0, _rows(0, [3, 1]), {"question_id": np.array([3, 1]), "resid": np.eye(2)[[0, 1]]})
    store.append("samples", 1, _rows(1, [2]), {"question_id": np.array([2]), "resid": np.array([[5.0, 5.0]])})
    frame = store.read("samples", [1, 2, 3])
    assert frame["question_id"].tolist() == [1, 2, 3]
    assert frame["text"].tolist() == ["", "", ""]  # empty strings stay strings
    np.testing.assert_array_equal(store.features("resid", [2, 3]), [[5.0, 5.0], [1.0, 0.0]])
    with pytest.raises(DataError, match=r"lacks questions \[9\]; resume the run"):
        store.read("samples", [1, 9])
    with pytest.raises(DataError, match=r"no stored 'resid' features for questions \[9\]"):
        store.features("resid", [9])
    with pytest.raises(DataError, match=r"has no feature 'mlp_out'"):
        store.features("mlp_out", [1])


def test_unfinished_batches_are_dropped_and_counted_as_not_done(tmp_path) -> None:
    store = SampleStore(tmp_path)
    store.append("samples", 0, _rows(0, [1, 2]))
    store.append("samples", 1, _rows(1, [3, 4]))
    lines = store.table_path("samples").read_text().splitlines(keepends=True)
    store.table_path("samples").write_text("".join(lines[:4]))  # killed while writing batch 1
    assert store.done_batches("samples", {0: 2, 1: 2}) == {0}
    assert store.read("samples")["question_id"].tolist() == [1, 2]  # the half batch is gone
    store.append("samples", 1, _rows(1, [3, 4]))
    assert store.done_batches("samples", {0: 2, 1: 2}) == {0, 1}
    assert store.read("samples")["question_id"].tolist() == [1, 2, 3, 4]


def test_a_table_with_other_columns_is_refused(tmp_path) -> None:
    store = SampleStore(tmp_path)
    store.append("samples", 0, _rows(0, [1]))
    with pytest.raises(DataError, match="was made with other settings"):
        store.append("samples", 1, [{"question_id": 2, "batch": 1, "other": 0}])


def test_json_round_trip_and_missing_table(tmp_path) -> None:
    store = SampleStore(tmp_path)
    assert store.read_json("plan") is None
    store.write_json("plan", {"layer": 3})
    assert store.read_json("plan") == {"layer": 3}
    with pytest.raises(DataError, match="does not exist; run the per-sample pass first"):
        store.read("interventions")
