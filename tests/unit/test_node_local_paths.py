"""What a helper on another node opens: the flusher publishes the run files its writer sends (not its own node's
copies), and the store's checkpoint is this node's copy of the durable one (fetched when the durable dir is a URI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perkunas_ray.checkpoint.durable import DurableDir
from perkunas_ray.checkpoint.flush import CheckpointFlusher
from perkunas_ray.checkpoint.format import CHECKPOINTS, checkpoint_dir_name, load_shard, write_checkpoint
from perkunas_ray.checkpoint.resume import local_checkpoint

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
