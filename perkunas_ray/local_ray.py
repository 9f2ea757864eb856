"""Start a local Ray for one process's run (train, bench): the settings every local start needs."""

from __future__ import annotations

import os


def start_local_ray(namespace: str | None = None, num_cpus: int | None = None) -> None:
    """ray.init of a fresh single-node Ray. Its worker processes inherit this process's environment."""
    import ray

    # Ray Train routes a worker's print() through its logger and Ray forwards both: every line would reach
    # this console twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # The preemption watcher polls for cloud spot-instance notices, which a local Ray never gets; it would be one
    # more process waking 100 times a second beside the compute threads.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # address="local": never join a cluster someone else's `ray start` left in /tmp/ray by accident. The dashboard
    # serves the State API, which Ray Train's placement-group cleaner polls (without it, it warns every second).
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, namespace=namespace)
