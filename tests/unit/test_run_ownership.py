"""Who owns a run dir: one trainer at a time, Ray names unique per run dir, warnings for risky retention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perkunas_ray.checkpoint.lock import RunDirLockedError
from perkunas_ray.stream.actor_options import actor_options
from perkunas_ray.stream.build import open_run, run_name
from tests.stream_helpers import small_config, small_data_dir

pytestmark = pytest.mark.unit


def test_a_second_trainer_on_the_same_run_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    cfg = small_config(small_data_dir(tmp_path / "d"), tmp_path / "run", checkpoint__durable_flush_every=10)
    with open_run(cfg, init=True) as first:
        with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()}"):
            open_run(cfg, init=False)
        assert first.state["step"] == 0
    with open_run(cfg, init=False) as again:  # released: the next trainer may take it
        assert again.checkpoint_dir.name == first.checkpoint_dir.name


def test_reading_a_run_does_not_take_it(tmp_path: Path) -> None:
    cfg = small_config(small_data_dir(tmp_path / "d"), tmp_path / "run", checkpoint__durable_flush_every=10)
    with open_run(cfg, init=True), open_run(cfg, init=False, write=False) as reader:
        assert reader.lock is None


def test_runs_with_the_same_basename_get_different_ray_names(tmp_path: Path) -> None:
    names = {run_name(str(tmp_path / parent / "r1")) for parent in ("a", "b")}
    assert len(names) == 2 and all(n.startswith("r1-") for n in names)
    cfg = small_config(tmp_path / "unused", tmp_path / "a" / "r1")
    actor_names = {actor_options(cfg, name, "compute")["name"] for name in names}
    assert len(actor_names) == 2


def test_durable_flush_every_zero_warns_that_a_crash_loses_the_run(tmp_path: Path) -> None:
    cfg = small_config(small_data_dir(tmp_path / "d"), tmp_path / "run")  # durable_flush_every=0
    with pytest.warns(UserWarning, match="durable_flush_every=0 .* loses every step since the start"), \
            open_run(cfg, init=True):
        pass
