"""The data-parallel pieces without Ray: batch split, the ref board, the shard reducer (one-process gloo group),
and the report's workers table."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
import torch.distributed as dist

from perkunas_ray.stream.batch import count_trained_targets, mask_untrained
from perkunas_ray.stream.grad_reduce import ShardReducer, gather_chunks
from perkunas_ray.stream.memory import MemoryTracker
from perkunas_ray.stream.ray_backend import split_sizes
from perkunas_ray.stream.ref_board import RefBoard
from perkunas_ray.telemetry.report_workers import workers_html


def test_each_worker_takes_a_fixed_run_of_the_global_batch():
    assert split_sizes(4, 2) == [2, 2]
    assert split_sizes(3, 2) == [2, 1]
    assert split_sizes(1, 3) == [1, 0, 0]


def test_trained_targets_are_counted_as_split_batch_decodes_them():
    blocks = np.stack([mask_untrained(np.arange(5), np.array([1, 0, 1, 1, 0], dtype=bool))] * 2)
    assert count_trained_targets(blocks) == 2 * 2  # targets are positions 1..4: trained at 2 and 3
    assert count_trained_targets(np.zeros((3, 2, 9), dtype=np.int64)) == 3 * 2 * 8


def test_a_worker_waits_on_the_board_for_the_version_it_needs():
    async def scenario() -> list:
        board = RefBoard()
        waiting = asyncio.ensure_future(board.fetch(1))
        await board.publish(0, {"embed": "v0"})
        await asyncio.sleep(0.01)
        assert not waiting.done()  # version 0 is older than the one asked for
        await board.publish(2, {"embed": "v2"})  # a newer one serves the wait too
        await board.publish(1, {"embed": "stale"})  # and is never replaced by an older one
        return [await waiting, await board.fetch(0)]

    assert asyncio.run(scenario()) == [(2, {"embed": "v2"}), (2, {"embed": "v2"})]


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_reducer_hands_on_each_shard_after_the_next_one_arrives(one_process_group):
    handed: list[tuple[str, dict, list]] = []
    tracker = MemoryTracker(torch.device("cpu"))
    reducer = ShardReducer(lambda name, grads, norms: handed.append((name, grads, norms)), tracker)
    reducer.start_step()
    head = {"w": torch.full((2, 3), 2.0), "b": torch.tensor([3.0, 4.0])}
    reducer("head", head, [0.0, 0.0])
    assert handed == [] and tracker.live_bytes() == 8 * 4  # in flight while the next shard replays
    reducer("embed", {"e": torch.ones(4)}, [0.0])
    assert [name for name, _, _ in handed] == ["head"]
    reducer.drain()
    assert [name for name, _, _ in handed] == ["head", "embed"] and tracker.live_bytes() == 0
    name, grads, norms = handed[0]
    assert torch.equal(grads["w"], head["w"]) and torch.equal(grads["b"], head["b"])
    assert norms == pytest.approx([float(head["w"].norm()), 5.0]) and reducer.norms["embed"] == [2.0]
    seed = reducer.tied_grad_seed(torch.ones(3))
    assert torch.equal(seed(), torch.ones(3))  # rank 0 seeds the embedding with the summed head share
    assert gather_chunks([1.5, 2.5], [2], torch.device("cpu")) == [1.5, 2.5]


def test_the_report_shows_each_worker_and_the_restarts():
    workers = [{"event": "worker", "step": s, "worker": w, "tokens_per_s": 1000.0 * (w + 1), "step_time_s": 0.5,
                "reduce_s": 0.1, "wait_s": 0.05} for s in (1, 2) for w in (0, 1)]
    starts = [{"event": "start", "step": 0, "attempt": 0}, {"event": "restart", "step": 2, "attempt": 1}]
    page = workers_html(workers, starts)
    assert "<h2>Workers</h2>" in page and "2,000" in page and "20.0%" in page
    assert "attempt 1 from step 2" in page
    assert workers_html([], starts) == ""


@pytest.mark.parametrize("text", ["0", "1,x", ","])
def test_bench_train_names_bad_worker_counts(text, capsys):
    from perkunas_ray.cli import main

    assert main(["bench", "train", "--num-workers", text]) == 2
    assert "--num-workers" in capsys.readouterr().err
