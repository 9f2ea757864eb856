"""What a process on another node opens: the flusher publishes the run files its writer sends (not its own node's
copies), the store's checkpoint is this node's copy of the durable one (fetched when the durable dir is a URI), and
a rank 0 on a new node starts from the durable copies of the run files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name, load_shard, write_checkpoint
from perkunas_ray.checkpoint.resume import local_checkpoint
from perkunas_ray.stream.session import RunPaths, fetch_run_files

pytestmark = pytest.mark.unit


def _write(active: Path, step: int) -> Path:
    return write_checkpoint(active / CHECKPOINTS / checkpoint_dir_name(step), {"s0": {"w": torch.full((4,), 1.0)}},
                            {"s0": {}}, {"step": step, "tokens_seen": 0})


def test_the_flusher_publishes_the_run_files_its_writer_sent(tmp_path) -> None:
    active, durable = tmp_path / "flusher-node-active", tmp_path / "durable"
    _write(active, 2)
    (active / "train_log.jsonl").write_text("stale copy on the flusher's node\n")
    flusher = CheckpointFlusher(str(durable), active, keep_last=2, run_files=("train_log.jsonl",))
    assert flusher.flush(2, run_files={"train_log.jsonl": b"rank 0's log\n"}) == 2
    assert (durable / "train_log.jsonl").read_bytes() == b"rank 0's log\n"
    assert DurableDir(str(durable)).list_checkpoints() == [2]


def test_the_store_reads_its_own_nodes_copy_of_the_checkpoint(tmp_path) -> None:
    written = _write(tmp_path / "writer", 2)
    in_place = DurableDir(str(tmp_path / "durable"))
    in_place.upload_checkpoint(written, 2)
    assert local_checkpoint(in_place, 2, tmp_path / "a") == tmp_path / "durable" / CHECKPOINTS / checkpoint_dir_name(2)
    remote = DurableDir("mock:///durable")  # a URI: fetched into the store's node's active dir
    remote.upload_checkpoint(written, 2)
    copy = local_checkpoint(remote, 2, tmp_path / "store-node-active")
    assert copy == tmp_path / "store-node-active" / CHECKPOINTS / checkpoint_dir_name(2)
    assert torch.equal(load_shard(copy, "s0")["w"], torch.full((4,), 1.0))


def test_a_rank_0_on_a_new_node_starts_from_the_durable_run_files(tmp_path) -> None:
    (tmp_path / "remote").mkdir()  # stands for a remote durable dir: the log dir is this node's active dir
    DurableDir(f"file://{tmp_path / 'remote'}").write_bytes("train_log.jsonl", b'{"event": "start"}\n')
    new_node = RunPaths(f"file://{tmp_path / 'remote'}", tmp_path / "active", tmp_path / "active")
    new_node.active.mkdir()
    assert fetch_run_files(new_node) == ["train_log.jsonl"]
    assert (new_node.log_dir / "train_log.jsonl").read_bytes() == b'{"event": "start"}\n'
    (new_node.log_dir / "train_log.jsonl").write_bytes(b"newer, here\n")
    assert fetch_run_files(new_node) == []  # this node's own copy is the newer one
    local = RunPaths(str(tmp_path / "run"), tmp_path / "run" / "active", tmp_path / "run")
    assert fetch_run_files(local) == []  # a path run dir is the log dir itself
