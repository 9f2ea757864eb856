"""A Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster), and a node that lacks a path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from tests.ray.process_tree import kill_tree

# A lost node is noticed after health_check_failure_threshold missed checks (Ray's defaults: 5 x 3 s).
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def start_cluster(head: dict[str, float], namespace: str = "perkunas", **head_args: Any) -> Cluster:
    """A head with 1 CPU and custom resources `head`; this process's driver connected to it."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": head, "include_dashboard": False, "_system_config": FAST_NODE_DEATH,
        **head_args})
    ray.init(address=cluster.address, namespace=namespace)
    # Removing the driver's node would end this test's driver: the tests remove only other nodes.
    assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
    return cluster


def add_node(cluster: Cluster, resources: dict[str, float], num_cpus: float = 1) -> Any:
    node = cluster.add_node(num_cpus=num_cpus, resources=resources)
    cluster.wait_for_nodes()
    return node


def alive_nodes() -> dict[str, dict[str, float]]:
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}


def wait_until(what: str, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def remove_node(cluster: Cluster, node: Any) -> None:
    """Kill a node's raylet and every process on it, and wait until the cluster has seen it die."""
    node_id = node.node_id
    cluster.remove_node(node, allow_graceful=False)
    wait_until(f"node {node_id} to be seen dead", lambda: node_id not in alive_nodes())


def can_hide_paths() -> bool:
    """Whether this machine lets us start a process in a mount namespace of its own (unshare -m)."""
    if not shutil.which("unshare"):
        return False
    probe = ["unshare", "-m", "true"] if os.geteuid() == 0 else ["unshare", "-Urm", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


class NodeWithoutPath:
    """A Ray node whose processes do not see `hidden` (an empty tmpfs is mounted over it in their mount
    namespace): what a cluster node without a shared filesystem looks like, on one machine."""

    def __init__(self, address: str, hidden: Path, resources: dict[str, float], num_cpus: int = 1) -> None:
        before = set(alive_nodes())
        unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
        start = (f"mount -t tmpfs tmpfs {hidden} && exec ray start --address={address} --num-cpus={num_cpus} "
                 f"--resources='{json.dumps(resources)}' --block --disable-usage-stats")
        self.proc = subprocess.Popen([*unshare, "sh", "-c", start], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until("the node without the path to join", lambda: set(alive_nodes()) - before, timeout=60)
        (self.node_id,) = set(alive_nodes()) - before

    def stop(self) -> None:
        kill_tree(self.proc.pid)
        self.proc.wait(timeout=30)
        wait_until(f"node {self.node_id} to be seen dead", lambda: self.node_id not in alive_nodes())
