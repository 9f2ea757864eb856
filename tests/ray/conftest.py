"""Shared fixtures of the Ray tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """A local Ray for one test module (2 CPUs, no dashboard), shut down when the module ends."""
    ray.init(num_cpus=2, include_dashboard=False, namespace="perkunas")
    yield
    ray.shutdown()
