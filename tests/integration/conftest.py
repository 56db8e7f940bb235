"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster(request):
    """A local 2-CPU Ray instance for one test module, whose classes the actors get by value
    (they cannot import a test module)."""
    import ray  # the test extra installs it
    ray.cloudpickle.register_pickle_by_value(request.module)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
