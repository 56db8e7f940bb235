"""vlmlens.ray_pool on a local 2-CPU Ray: tasks run once each, a closed pool is refused, an
abandoned map leaves the pool usable."""

from __future__ import annotations

import time

import pytest

from vlmlens.errors import InputError
from vlmlens.ray_pool import ActorPool, RayConfig, ray_session

pytestmark = pytest.mark.slow


def make_model() -> dict:
    return {"name": "stand-in"}  # the pool only needs a picklable factory


def task(model: dict, value: int, *, offset: int = 0, pause: float = 0.0) -> tuple[str, int]:
    time.sleep(pause)
    return model["name"], value + offset


def test_every_task_runs_once_and_the_pool_survives_an_abandoned_map(cluster):
    import ray

    config = RayConfig(workers=2)
    with ray_session(ray, 2, config) as fit, ActorPool(ray, make_model, config, size=fit) as pool:
        assert fit == 2
        results = dict(pool.map(task, [(i, (i,)) for i in range(7)], {"offset": 100}))
        assert results == {i: ("stand-in", i + 100) for i in range(7)}  # each key once, shared kwargs applied
        assert pool.call(task, 5) == ("stand-in", 5)
        before = list(pool.actors)
        slow = pool.map(task, [(i, (i,)) for i in range(4)], {"pause": 0.5})
        next(slow)  # one result, then the caller walks away from the rest
        slow.close()
        assert pool.actors != before  # the actor still busy with an abandoned task was replaced
        assert dict(pool.map(task, [(i, (i,)) for i in range(3)])) == {i: ("stand-in", i) for i in range(3)}
    with pytest.raises(InputError, match="has no actors"):
        next(pool.map(task, [(0, (0,))]))


def test_a_pool_bigger_than_the_cluster_is_capped(cluster, caplog):
    import ray

    config = RayConfig(workers=5)
    with ray_session(ray, 5, config) as fit:
        assert fit == 2  # 2 CPUs, 1 per actor: 5 actors would leave 3 waiting on idle ones forever
    assert "holds 2 of the 5 actors" in caplog.text
    with (pytest.raises(InputError, match="asks for 3 CPUs but the Ray cluster has 2"),
          ray_session(ray, 1, RayConfig(workers=1, cpus_per_worker=3))):
        pass
