"""Placement on several nodes is config: ray.helper_resources / ray.worker_resources (checked, as flags too), and
a node without the data dir or the run dir is named with the path at a worker's start."""

from __future__ import annotations

import argparse

import pytest

from perkunas_ray.config import RunConfig
from perkunas_ray.errors import CheckpointError, ConfigError, DataError
from perkunas_ray.run_flags import add_config_flags, config_from_args
from perkunas_ray.stream.actor_options import helper_resources, worker_resources
from perkunas_ray.stream.node_check import check_paths_here

pytestmark = pytest.mark.unit


def parse(*flags: str) -> RunConfig:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(list(flags)))


def test_resource_flags_and_where_they_go() -> None:
    cfg = parse("--helper-resources", "perkunas_host=0.5", "--worker-resources", '{"perkunas_train": 1}')
    assert cfg.ray.helper_resources == {"perkunas_host": 0.5}
    assert worker_resources(cfg) == {"CPU": 1.0, "GPU": 0.0, "perkunas_train": 1}
    assert helper_resources(cfg, "shard_store") == {"perkunas_host": 0.5}
    assert helper_resources(cfg, "checkpoint_flusher") == {}  # it follows the store to its node
    again = RunConfig.from_mapping({"ray": {"helper_resources": {"perkunas_host": 1}}}).validate()
    assert again.ray.helper_resources == {"perkunas_host": 1}


@pytest.mark.parametrize(("section", "message"), [
    ({"worker_resources": {"GPU": 1}}, "ray.worker_resources.GPU must be a custom resource"),
    ({"helper_resources": {"perkunas_host": 0}}, "ray.helper_resources.perkunas_host must be a number > 0"),
    ({"helper_resources": {"perkunas_host": 1.5}}, "must be at most 1, or a whole number"),
    ({"worker_resources": {"perkunas_train": True}}, "must be a number > 0"),
    ({"worker_resources": ["perkunas_train"]}, "ray.worker_resources must be a mapping"),
    ({"worker_resources": {" x": 1}}, "ray.worker_resources must be keyed by non-empty resource names"),
])
def test_bad_resources_are_named(section, message) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        RunConfig.from_mapping({"ray": section}).validate()


def test_a_bad_resource_flag_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        parse("--worker-resources", "perkunas_train")
    assert "expected name=amount" in capsys.readouterr().err


def test_a_node_without_the_paths_is_named(tmp_path) -> None:
    cfg = RunConfig()
    cfg.train.data_dir, cfg.checkpoint.run_dir = str(tmp_path / "data"), str(tmp_path / "run")
    with pytest.raises(DataError, match=f"train.data_dir {tmp_path / 'data'} is not on node abc, where worker 1 "
                                        r"runs \(no such dir\)"):
        check_paths_here(cfg, "abc", "worker 1")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    with pytest.raises(CheckpointError, match=f"checkpoint.run_dir {tmp_path / 'run'} is not on node abc"):
        check_paths_here(cfg, "abc", "worker 1")
    (tmp_path / "run").mkdir()
    check_paths_here(cfg, "abc", "worker 1")
    cfg.checkpoint.run_dir = "s3://bucket/run"  # a URI: every node reaches it
    check_paths_here(cfg, "abc", "the shard store", data=False)
