"""Where the VRP's per-batch work runs: in this process, or spread over Ray actors.

Each VRP pass (per-sample measurements, ablations, identification) is a list of fixed
batches and a task ``fn(model, index, chunk, **shared)`` that measures one batch and
returns its rows (a module-level function, so that it reaches Ray actors by name); the
driver appends the rows to the run's store as each batch finishes, so a run killed anywhere
resumes from its finished batches. :class:`LocalBatches` runs the
tasks in order on one model; :class:`RayBatches` runs them on a pool of actors, one model
replica each (:mod:`vlmlens.ray_pool`), in whatever order they finish: the store reads
rows back by question id, so the tables are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmlens.progress import progress_bar
from vlmlens.ray_pool import ActorPool

__all__ = ["LocalBatches", "ModelInfo", "RayBatches", "as_batches", "model_info"]

Todo = Sequence[tuple[int, list[Any]]]
"""The batches still to run: ``(index, items)``."""


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the driver needs to know of the model (the analysis runs where no model is)."""

    family: str
    n_layers: int
    d_model: int


def model_info(model: Any) -> ModelInfo:
    """The :class:`ModelInfo` of a HookedVLM (a module-level function: tasks travel to Ray actors by name)."""
    return ModelInfo(family=model.family, n_layers=model.n_layers, d_model=model.d_model)


class LocalBatches:
    """Every task in this process, in order, on ``model`` (a HookedVLM)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.info = model_info(model)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(model, *args)``."""
        return fn(self.model, *args)

    def map(self, fn: Callable[..., Any], todo: Todo, shared: Mapping[str, Any], *, desc: str,
            progress: bool | None) -> Iterator[tuple[int, Any]]:
        """``(index, fn(model, index, chunk, **shared))`` for each batch, in order."""
        for index, chunk in progress_bar(todo, desc=desc, unit="batch", progress=progress):
            yield index, fn(self.model, index, chunk, **shared)


class RayBatches:
    """Every task on a pool of Ray actors (:class:`~vlmlens.ray_pool.ActorPool`), as they finish."""

    def __init__(self, pool: ActorPool) -> None:
        self.pool = pool
        self.info = pool.call(model_info)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(model, *args)`` on one actor."""
        return self.pool.call(fn, *args)

    def map(self, fn: Callable[..., Any], todo: Todo, shared: Mapping[str, Any], *, desc: str,
            progress: bool | None) -> Iterator[tuple[int, Any]]:
        """``(index, fn(model, index, chunk, **shared))`` for each batch, in the order they finish."""
        tasks = [(index, (index, chunk)) for index, chunk in todo]
        yield from progress_bar(self.pool.map(fn, tasks, shared), desc=desc, unit="batch", progress=progress,
                                total=len(tasks))


def as_batches(model: Any) -> LocalBatches | RayBatches:
    """``model`` itself if it already says where batches run, else :class:`LocalBatches` of it."""
    return model if isinstance(model, LocalBatches | RayBatches) else LocalBatches(model)
