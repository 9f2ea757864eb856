"""cluster.yaml is a well-formed Ray cluster launcher config with a CPU head and GPU workers, and offers the custom
resources, services and paths the code and its own training command ask for."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from perkunas_ray.run_flags import add_config_flags, config_from_args

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers() -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] <= cfg["max_workers"] for t in gpu_types)
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


def training_command() -> list[str]:
    """The flags of the training command cluster.yaml's header shows."""
    lines = [line[1:].strip() for line in CLUSTER.read_text().splitlines() if line.startswith("#")]
    text = " ".join(lines).replace("\\ ", " ")
    command = re.search(r"python -m perkunas_ray\.train (.*?--worker-resources \S+)", text)
    assert command, "cluster.yaml's header shows no training command"
    return shlex.split(command.group(1))


def test_the_training_command_places_on_the_nodes_that_offer_its_resources() -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["resources"]
    gpu = [t["resources"] for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    run = config_from_args(parser.parse_args(training_command()))
    assert run.ray.helper_resources and run.ray.worker_resources
    for name, amount in run.ray.helper_resources.items():  # the host tier on the head, one store per head
        assert head.get(name, 0) >= amount, (name, head)
    for name, amount in run.ray.worker_resources.items():  # one worker per GPU node
        assert all(r.get(name, 0) == amount * r["GPU"] for r in gpu), (name, gpu)
        assert head.get(name, 0) == 0
    assert run.checkpoint.run_dir.startswith(("s3://", "gs://"))  # a URI every node reaches
    mounts = cfg["file_mounts"]
    assert any(run.train.data_dir.startswith(remote + "/") for remote in mounts), (run.train.data_dir, mounts)


def test_the_registry_example_names_resources_the_cluster_offers() -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    offered = {name for t in cfg["available_node_types"].values() for name in t["resources"]}
    registry = (ROOT / "perkunas_ray" / "configs" / "serve" / "model_registry.yaml").read_text()
    named = set(re.findall(r"resources: \{(\w+):", registry))
    assert named and named <= offered, (named, offered)


def test_the_head_serves_the_dashboard_and_metrics_to_the_network() -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head and "--dashboard-port=8265" in head
    assert "--metrics-export-port=" in head
