"""Zoo v2 training that survives a kill: snapshots of a run, and resuming from one.

A training run (:func:`vlmlens.zoo.fusion.train_fusion`) keeps a snapshot in its output
folder, ``OUT/.train-state.pt``: the weights, the position in the recipe (stage and step),
the optimiser, schedule and example-order state of the stage in progress, the losses so
far, torch's random state and the seconds already spent. It is written (atomically) after
the tower's pre-training, every ``snapshot_every`` steps and at each stage's end, and
removed once the checkpoint and its ``zoo.json`` are saved. Started again with the same
arguments, the run continues from the snapshot and ends with the weights an uninterrupted
run gives, bit for bit; started with other arguments, it refuses
(:class:`~vlmlens.zoo.errors.ZooError`) rather than mix two runs.

Examples:
    >>> from vlmlens.zoo.resume import STATE_FILE
    >>> STATE_FILE
    '.train-state.pt'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.pretrain import PretrainResult
from vlmlens.zoo.stages import StageResult, StageState

#: The snapshot's file name inside a run's output folder.
STATE_FILE = ".train-state.pt"

#: The layout of the snapshot's contents; part of every run's key.
SNAPSHOT_FORMAT = 2


@dataclass(frozen=True, kw_only=True)
class RunState:
    """Where a training run stands.

    Attributes:
        key: What identifies the run (snapshot format, family, seed, recipe, threads,
            library versions); a snapshot is resumed only by a run with the same key.
        stage: Index of the next stage to run or to continue.
        done: Results of the finished stages.
        current: State of stage ``stage`` if it was interrupted mid-way, else ``None``.
        model: The model's weights.
        pretrain: Result of the tower pre-training, if any.
        torch_rng: torch's global random state.
        seconds: Wall-clock seconds spent before the snapshot outside the stages (data
            preparation and tower pre-training).
    """

    key: dict[str, Any]
    stage: int
    done: tuple[StageResult, ...]
    current: StageState | None
    model: dict[str, torch.Tensor]
    pretrain: PretrainResult | None
    torch_rng: torch.Tensor
    seconds: float


def state_path(out: str | Path) -> Path:
    """The snapshot file of the run writing to ``out``."""
    return Path(out) / STATE_FILE


def save_state(path: Path, state: RunState) -> None:
    """Write a snapshot atomically and durably (a kill or a crash while writing leaves the
    previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": state.key,
        "stage": state.stage,
        "done": [dataclasses.asdict(r) for r in state.done],
        "current": dataclasses.asdict(state.current) if state.current is not None else None,
        "model": state.model,
        "pretrain": dataclasses.asdict(state.pretrain) if state.pretrain is not None else None,
        "torch_rng": state.torch_rng,
        "seconds": state.seconds,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def load_state(path: Path, key: dict[str, Any]) -> RunState | None:
    """The snapshot at ``path``, or ``None`` if there is none.

    Raises:
        ZooError: If the snapshot belongs to a run with another key (other snapshot format,
            family, seed, recipe, threads or library versions), or cannot be read.
    """
    if not path.exists():
        return None
    restart = "delete it (CLI: --restart; API: restart=True) to start the run over"
    try:
        payload = torch.load(path, weights_only=True)
        saved = dict(payload["key"])
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ZooError(f"Cannot read the training snapshot {path} ({type(exc).__name__}: {reason}); {restart}.") from exc
    differs = sorted(k for k in key.keys() | saved.keys() if key.get(k) != saved.get(k))
    if differs:
        raise ZooError(
            f"{path} is the snapshot of another training run (it differs in: {', '.join(differs)}); "
            f"rerun with the arguments it was started with to resume it, or {restart}."
        )
    try:
        return _state(payload)
    except Exception as exc:
        raise ZooError(f"The training snapshot {path} is incomplete ({exc!r}); {restart}.") from exc


def _state(payload: dict[str, Any]) -> RunState:
    current = payload["current"]
    return RunState(
        key=payload["key"],
        stage=payload["stage"],
        done=tuple(StageResult(**{**r, "losses": tuple(r["losses"])}) for r in payload["done"]),
        current=StageState(**{**current, "losses": tuple(current["losses"])}) if current is not None else None,
        model=payload["model"],
        pretrain=PretrainResult(**payload["pretrain"]) if payload["pretrain"] is not None else None,
        torch_rng=payload["torch_rng"],
        seconds=payload["seconds"],
    )
