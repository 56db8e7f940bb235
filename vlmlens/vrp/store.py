"""The per-sample store of a VRP run: CSV tables appended batch by batch, plus feature shards.

A run's folder holds ``samples.csv`` (one row per question, phase 1), ``interventions.csv``
(one row per question, phase 2), ``features/batch_XXXXX.npz`` (arrays per batch) and
``plan.json`` (the phase-2 plan). Batches are fixed by dataset order; a batch counts as done
only when all its rows are in the table, and its feature shard is written before its rows,
so a run killed at any point resumes by redoing only the unfinished batches.

Examples:
    >>> import tempfile
    >>> store = SampleStore(Path(tempfile.mkdtemp()))
    >>> store.append("samples", 0, [{"question_id": 1, "batch": 0, "x": 0.5}])
    >>> store.done_batches("samples", {0: 1, 1: 1})
    {0}
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlmlens.errors import DataError

__all__ = ["SampleStore"]


class SampleStore:
    """Reads and appends the per-sample files of one model's run.

    Args:
        folder: The run's folder (created on first write).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    # ------------------------------------------------------------------ tables
    def table_path(self, table: str) -> Path:
        """Path of a table's CSV file."""
        return self.folder / f"{table}.csv"

    def exists(self, table: str) -> bool:
        """Whether a table has been started."""
        return self.table_path(table).exists()

    def done_batches(self, table: str, expected: Mapping[int, int]) -> set[int]:
        """Batches whose rows are all in ``table``; drops the rows of unfinished batches.

        Args:
            table: ``"samples"`` or ``"interventions"``.
            expected: Batch index -> number of questions in it.

        Returns:
            The indices of finished batches.
        """
        path = self.table_path(table)
        if not path.exists():
            return set()
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = [r for r in reader if r.get("batch") not in (None, "")]
        counts: dict[int, int] = {}
        for row in rows:
            counts[int(row["batch"])] = counts.get(int(row["batch"]), 0) + 1
        done = {b for b, n in counts.items() if expected.get(b) == n}
        kept = [r for r in rows if int(r["batch"]) in done]
        if len(kept) != len(rows) or not fields:
            self._rewrite(path, fields, kept)
        return done

    def _rewrite(self, path: Path, fields: Sequence[str], rows: list[dict[str, Any]]) -> None:
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            if fields:
                writer = csv.DictWriter(f, fieldnames=list(fields))
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp, path)

    def append(self, table: str, batch: int, rows: Sequence[Mapping[str, Any]],
               arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Append one batch: its feature shard first (atomically), then its rows.

        Raises:
            DataError: if the rows' columns differ from the table's header.
        """
        if not rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if arrays is not None:
            self.write_shard(batch, arrays)
        path = self.table_path(table)
        fields = list(rows[0])
        header = None
        if path.exists() and path.stat().st_size:
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
        if header is not None and header != fields:
            raise DataError(
                f"{path} has columns {header[:6]}... but this run writes {fields[:6]}...; it was made with "
                "other settings or another vlmlens version. Use another --out, or delete the folder."
            )
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if header is None:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()

    def read(self, table: str, order: Sequence[int] | None = None) -> pd.DataFrame:
        """A table as a DataFrame, rows in ``order`` of question ids if given.

        Raises:
            DataError: if the table is missing, or lacks a question of ``order``.
        """
        path = self.table_path(table)
        if not path.exists():
            raise DataError(f"{path} does not exist; run the per-sample pass first.")
        frame = pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN"])
        if order is None:
            return frame.reset_index(drop=True)
        frame = frame.set_index("question_id", drop=False)
        missing = [q for q in order if q not in frame.index]
        if missing:
            raise DataError(f"{path} lacks questions {missing[:5]}; resume the run to finish it.")
        return frame.loc[list(order)].reset_index(drop=True)

    # ---------------------------------------------------------------- features
    def shard_path(self, batch: int) -> Path:
        """Path of one batch's feature shard."""
        return self.folder / "features" / f"batch_{batch:05d}.npz"

    def write_shard(self, batch: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write one batch's feature shard atomically (a batch counts as done only once its
        rows follow, so a shard is safe to write again)."""
        shard = self.shard_path(batch)
        shard.parent.mkdir(parents=True, exist_ok=True)
        tmp = shard.with_name(shard.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, shard)

    def features(self, name: str, question_ids: Sequence[int]) -> np.ndarray:
        """Stack feature ``name`` of the given questions, in their order.

        Raises:
            DataError: if a question has no stored features.
        """
        index = {int(q): i for i, q in enumerate(question_ids)}
        out: np.ndarray | None = None
        found = np.zeros(len(index), dtype=bool)
        for shard in sorted((self.folder / "features").glob("batch_*.npz")):
            with np.load(shard) as data:
                if name not in data:
                    raise DataError(f"{shard} has no feature {name!r}; it holds {sorted(data.files)}.")
                values = data[name]
                for qid, vec in zip(data["question_id"].tolist(), values):
                    if qid in index:
                        if out is None:
                            out = np.zeros((len(index), *values.shape[1:]), dtype=values.dtype)
                        out[index[qid]] = vec
                        found[index[qid]] = True
        if out is None or not found.all():
            missing = [q for q, i in index.items() if not found[i]]
            raise DataError(f"no stored {name!r} features for questions {missing[:5]} in {self.folder / 'features'}.")
        return out

    # -------------------------------------------------------------------- json
    def read_json(self, name: str) -> Any:
        """A JSON file of the run, or ``None`` if absent."""
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, name: str, value: Any) -> None:
        """Write a JSON file of the run atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1))
        os.replace(tmp, path)
