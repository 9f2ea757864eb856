"""Training on a cluster of three nodes (one machine): 2 workers on 2 nodes and the store on a third (placed by
custom resources) equal 1 worker x 2; a worker's node and the store's node lost mid-run: the run goes on by itself
and ends as the uninterrupted run, bit for bit; a worker on a node without the data dir fails at start naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from perkunas_ray.checkpoint.format import latest_checkpoint, load_model_state, read_state
from perkunas_ray.errors import DataError
from perkunas_ray.telemetry.schema import read_log
from tests.ray.multinode import NodeWithoutPath, add_node, can_hide_paths, remove_node, start_cluster
from tests.ray.test_restarts import Training
from tests.stream_helpers import (
    max_relative_difference,
    small_config,
    small_data_dir,
    train_in_process,
    train_with_ray,
)

pytestmark = pytest.mark.ray

TRAIN, HOST = "perkunas_train", "perkunas_host"  # the custom resources of worker nodes and of the host-tier node
STEPS = 12
SETTINGS = dict(max_steps=STEPS, save_every=2, checkpoint__durable_flush_every=2, gradient_accumulation_steps=1,
                ray__num_workers=2, ray__compute_threads=1, ray__max_failures=3,
                ray__worker_resources={TRAIN: 1}, ray__helper_resources={HOST: 1})


@pytest.fixture(scope="module")
def cluster():
    """Head (the driver; a worker slot), a second worker node, the host-tier node: 1 CPU each."""
    cluster = start_cluster({TRAIN: 1})
    nodes = {"worker": add_node(cluster, {TRAIN: 1}), "host": add_node(cluster, {HOST: 1})}
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Under a dir of its own, so that one node's processes can be kept from seeing it.
    return small_data_dir(tmp_path_factory.mktemp("shared") / "data")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted runs, by accumulation: one in-process worker with N x accumulation is what N workers
    must equal."""
    runs: dict[int, Path] = {}

    def run_dir(accumulation: int) -> Path:
        if accumulation not in runs:
            runs[accumulation] = tmp_path_factory.mktemp(f"straight{accumulation}") / "run"
            result = train_in_process(small_config(data, runs[accumulation], **{
                **SETTINGS, "gradient_accumulation_steps": accumulation, "ray__num_workers": 1}))
            assert result.step == STEPS
        return runs[accumulation]

    return run_dir


def assert_equals_straight(run_dir: Path, straight_dir: Path) -> float:
    final = latest_checkpoint(run_dir)
    assert read_state(final)["step"] == STEPS
    assert read_state(final)["cursor"] == read_state(latest_checkpoint(straight_dir))["cursor"]
    diff = max_relative_difference(load_model_state(latest_checkpoint(straight_dir)), load_model_state(final))
    assert diff == 0.0, diff  # bit for bit: one micro-batch per worker sums as one worker accumulates
    steps = [r["step"] for r in read_log(run_dir / "train_log.jsonl") if r["event"] == "step"]
    assert steps == list(range(1, STEPS + 1))  # the log reads as one run
    return diff


def placements(run_dir: Path) -> list[tuple[set[str], str]]:
    """(the workers' nodes, the host tier's node) of each attempt, from its start / restart record."""
    return [(set(r["worker_nodes"]), r["helper_node"]) for r in read_log(run_dir / "train_log.jsonl")
            if r["event"] in ("start", "restart")]


def test_two_workers_on_two_nodes_lose_one_and_end_as_one_worker_with_double_accumulation(
        cluster, data, straight, tmp_path):
    """Workers on the head and a second node, the store on a third: equal to 1 worker x 2 accumulation, even
    when the second worker's node dies mid-run and another joins (Ray Train restarts the group from the
    newest durable checkpoint once the new node offers the workers' resource)."""
    head, nodes = cluster
    run = Training(small_config(data, tmp_path / "run", **SETTINGS))
    run.wait_for_durable_step(4)
    lost = nodes.pop("worker")
    remove_node(head, lost)
    nodes["worker"] = add_node(head, {TRAIN: 1})
    result = run.finish()
    assert result.step == STEPS
    restarts = run.records("restart")
    assert [r["attempt"] for r in restarts] == [1] and restarts[0]["step"] >= 4, restarts
    host = nodes["host"].node_id
    assert placements(tmp_path / "run") == [({head.head_node.node_id, lost.node_id}, host),
                                            ({head.head_node.node_id, nodes["worker"].node_id}, host)]
    print("max relative difference, 2 workers on 2 nodes (one lost) vs 1 worker x 2:",
          assert_equals_straight(tmp_path / "run", straight(2)))


def test_the_store_node_lost_and_one_added_back(cluster, data, straight, tmp_path):
    """One worker (on the head or the worker node), the store on the host node, which dies mid-run."""
    head, nodes = cluster
    run = Training(small_config(data, tmp_path / "run", **{**SETTINGS, "ray__num_workers": 1}))
    run.wait_for_durable_step(4)
    lost = nodes.pop("host")
    remove_node(head, lost)
    nodes["host"] = add_node(head, {HOST: 1})
    result = run.finish()
    assert result.step == STEPS
    restarts = run.records("restart")
    assert [r["attempt"] for r in restarts] == [1] and restarts[0]["step"] >= 4, restarts
    assert [host for _, host in placements(tmp_path / "run")] == [lost.node_id, nodes["host"].node_id]
    print("max relative difference after losing the store's node:",
          assert_equals_straight(tmp_path / "run", straight(1)))


@pytest.mark.skipif(not can_hide_paths(), reason="needs unshare -m to hide the data dir from one node")
def test_a_worker_on_a_node_without_the_data_dir_fails_at_start_naming_it(cluster, data, tmp_path):
    head, _ = cluster
    node = NodeWithoutPath(head.address, data.parent, {"perkunas_nodata": 1})
    try:
        cfg = small_config(data, tmp_path / "run", **{**SETTINGS, "ray__num_workers": 1, "ray__max_failures": 0,
                                                      "ray__worker_resources": {"perkunas_nodata": 1}})
        with pytest.raises(DataError) as failure:
            train_with_ray(cfg)
    finally:
        node.stop()
    message = str(failure.value)
    print("the worker's error:", message)
    assert f"train.data_dir {data} is not on node {node.node_id}" in message
    assert not (tmp_path / "run" / "train_log.jsonl").is_file() or not [
        r for r in read_log(tmp_path / "run" / "train_log.jsonl") if r["event"] == "step"]  # it failed at start
