"""Ray actors that each hold one model replica and run tasks on it, replaced when they die.

The data-parallel paths (:func:`vlmlens.ops.write_store_ray`, :func:`vlmlens.vrp.run_ray`)
share this: :class:`RayConfig` says how many actors and what each reserves;
:func:`ray_session` starts a local Ray instance for a call when none is running;
:class:`ActorPool` builds one model per actor from a picklable zero-argument factory and runs
``fn(model, *args, **shared)`` tasks on whichever actor is free, yielding results as they
finish. A task whose actor dies (a crash, ``ray.kill``, a lost node) is run again on a
fresh actor, up to ``max_restarts`` times per task; every task must therefore be safe to
run twice (the callers' tasks resume or overwrite atomically). Ray is an optional extra
(``pip install vlmlens[ray]``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vlmlens.errors import DataError, InputError

__all__ = ["ActorPool", "RayConfig", "import_ray", "ray_session"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """How work is spread over Ray actors.

    Attributes:
        workers: actors, each holding one model replica.
        gpus_per_worker: GPUs Ray reserves per actor (1 on a GPU machine; 0 on CPU).
        cpus_per_worker: CPUs Ray reserves per actor.
        threads: torch threads in each actor (``None``: torch's default).
        max_restarts: times one task may be run again after its actor died, before the call fails.
    """

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    threads: int | None = 1
    max_restarts: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"RayConfig.workers must be an int >= 1, got {self.workers!r}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise InputError(f"RayConfig needs gpus_per_worker and cpus_per_worker >= 0, got "
                             f"{self.gpus_per_worker} and {self.cpus_per_worker}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"RayConfig.threads must be >= 1 or None, got {self.threads}")
        if self.max_restarts < 0:
            raise InputError(f"RayConfig.max_restarts must be >= 0, got {self.max_restarts}")


def import_ray(caller: str) -> ModuleType:
    """The ``ray`` module, or an :class:`InputError` naming ``caller`` and how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"{caller} needs Ray: pip install 'vlmlens[ray]'") from None
    return ray


@contextmanager
def ray_session(ray: ModuleType, actors: int, config: RayConfig) -> Iterator[int]:
    """Ray for one call, yielding how many of ``actors`` actors the cluster can hold at once.

    A running Ray instance is used as it is; otherwise a local one with CPUs for ``actors``
    actors is started and shut down afterwards. An actor that could never be placed is
    refused up front, and a pool is capped at what the cluster holds (an actor waiting for
    resources that the pool's own idle actors hold would wait forever). Actors wait, as Ray's
    do, for resources that other jobs on a shared cluster hold.

    Raises:
        InputError: if one actor asks for more CPUs or GPUs than the cluster has.
    """
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(1, math.ceil(actors * config.cpus_per_worker)), include_dashboard=False,
                 log_to_driver=False)
    try:
        have = ray.cluster_resources()
        fit = actors
        for name, need in (("CPU", config.cpus_per_worker), ("GPU", config.gpus_per_worker)):
            if need > have.get(name, 0):
                raise InputError(f"each actor asks for {need} {name}s but the Ray cluster has {have.get(name, 0)}; "
                                 f"lower {name.lower()}s_per_worker or start Ray with more")
            if need > 0:  # the cluster's total, not what is free now (a pool just closed frees its share late)
                fit = min(fit, int(have[name] / need + 1e-9))
        if fit < actors:
            logger.warning("the Ray cluster holds %d of the %d actors asked for at once; running %d", fit, actors, fit)
        yield fit
    finally:
        if started:
            ray.shutdown()


class _Replica:
    """A Ray actor's body: one model, built once, on which tasks run."""

    def __init__(self, model_factory: Callable[[], Any], threads: int | None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model_factory()

    def run(self, fn: Callable[..., Any], shared: Mapping[str, Any], args: Sequence[Any]) -> Any:
        return fn(self.model, *args, **shared)


class ActorPool:
    """``size`` actors, each with a model from ``model_factory`` (see the module docs).

    Use as a context manager, inside :func:`ray_session`; leaving it kills the actors.

    Args:
        ray: The ``ray`` module (:func:`import_ray`).
        model_factory: Builds the model inside each actor (picklable, no arguments).
        config: Resources per actor, threads and ``max_restarts``.
        size: Actors to start (default ``config.workers``).
    """

    def __init__(self, ray: ModuleType, model_factory: Callable[[], Any], config: RayConfig,
                 size: int | None = None) -> None:
        self.ray, self.factory, self.config = ray, model_factory, config
        self._class = ray.remote(num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker)(_Replica)
        self.actors = [self._new() for _ in range(size or config.workers)]

    def _new(self) -> Any:
        return self._class.remote(self.factory, self.config.threads)

    def __enter__(self) -> ActorPool:  # noqa: PYI034 -- beartype refuses typing.Self outside @beartype classes
        return self

    def __exit__(self, *exc: object) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(model, *args)`` on one actor (e.g. to read the model's shape or tokenizer)."""
        ((_, result),) = self.map(fn, [(None, args)])
        return result

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple[Hashable, Sequence[Any]]],
            shared: Mapping[str, Any] | None = None) -> Iterator[tuple[Hashable, Any]]:
        """Run ``fn(model, *args, **shared)`` for each ``(key, args)`` of ``tasks``; yield
        ``(key, result)`` in the order they finish.

        ``shared`` is sent to the object store once, not once per task. At most one task
        runs on an actor at a time, so a fast actor takes more tasks than a slow one.

        Raises:
            DataError: if one task's actor died more than ``max_restarts`` times (the tasks that
                finished have been yielded; run the caller again to resume).
            Exception: whatever ``fn`` raised, at once (the other actors' tasks are abandoned).
        """
        ray = self.ray
        if not self.actors:
            raise InputError("this ActorPool has no actors (it was closed); make a new one")
        shared_ref = ray.put(dict(shared or {}))
        queue = list(reversed(tasks))  # popped from the end: tasks start in the given order
        deaths: dict[Hashable, int] = {}
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, Hashable, Sequence[Any]]] = {}

        def submit() -> None:
            while idle and queue:
                slot, (key, args) = idle.pop(), queue.pop()
                running[self.actors[slot].run.remote(fn, shared_ref, list(args))] = (slot, key, args)

        submit()
        try:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                slot, key, args = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    # Dead or unreachable: kill it before any replacement, so that an actor that was only
                    # unreachable cannot go on writing beside the task's new run.
                    ray.kill(self.actors[slot])
                    self.actors[slot] = self._new()
                    deaths[key] = deaths.get(key, 0) + 1
                    if deaths[key] > self.config.max_restarts:
                        raise DataError(f"the actor running task {key!r} died {deaths[key]} times "
                                        f"(max_restarts={self.config.max_restarts}); the last: {err}. The finished "
                                        "work is kept: run the same call again to resume") from None
                    logger.warning("the actor running task %r died (%s); running it again on a new actor", key, err)
                    queue.append((key, args))
                else:
                    yield key, result
                idle.append(slot)
                submit()
        finally:
            for slot, *_ in running.values():  # abandoned (an error, or the caller stopped early): a fresh actor
                ray.kill(self.actors[slot])
                self.actors[slot] = self._new()
