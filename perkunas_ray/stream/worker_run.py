"""One data-parallel worker's share of a run: (re)open it at its newest durable checkpoint, log a restart, train.

Ray Train calls this (through actors/worker.py) on every worker at every (re)start of the group.
Rank 0 ends what a failed attempt left (actors, half-written files), opens the newest durable
checkpoint, starts the run's helper actors (the store loads that checkpoint) and shares the run's
state; then every worker runs the same TrainLoop over the global batches (num_workers x accumulation
micro-batches per step) on a RayBackend, which computes the worker's slice. Only rank 0 writes the
run's log; the others log to a scratch dir.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from perkunas_ray.config import RunConfig
from perkunas_ray.run_setup import open_datasets
from perkunas_ray.stream.build import TrainRun, clean_crashed_writes, open_run, train_loop
from perkunas_ray.stream.grad_reduce import gather_rows
from perkunas_ray.stream.loop import TrainLoop
from perkunas_ray.stream.node_check import check_paths_here
from perkunas_ray.stream.ray_backend import RayBackend, end_actors
from perkunas_ray.stream.session import fetch_run_files, resolve_paths
from perkunas_ray.telemetry.schema import TRAIN_LOG, read_log

START_EVENTS = ("start", "restart")  # train_log.jsonl events: an attempt of the worker group began


@dataclasses.dataclass
class WorkerJob:
    """What the driver hands every worker; plain data, as it travels in Ray Train's train_loop_config."""

    cfg: dict[str, Any]  # the run's config (to_dict), with absolute local paths
    run_name: str
    launch_id: str  # one per driver invocation: a second start under the same id is a restart
    target_step: int  # train until this step (absolute, so a restarted attempt stops where the first would)
    verbose: bool = True
    helper_node_id: str = ""  # the Ray node the helper actors should live on (the driver's); empty: anywhere


ActorStarter = Callable[[TrainRun], dict[str, Any]]  # rank 0: start the run's helper actors, role -> handle
ActorFinder = Callable[[RunConfig, str], dict[str, Any]]  # the run's helper actors that exist now, by name


def attempt_number(log_file: Path, launch_id: str) -> int:
    """How many attempts of this launch the run's log records (0: this is the first)."""
    if not log_file.is_file():
        return 0
    return sum(1 for r in read_log(log_file) if r.get("event") in START_EVENTS and r.get("launch_id") == launch_id)


def broadcast_from_rank0(value: Any, device: torch.device) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def open_on_rank0(cfg: RunConfig, job: WorkerJob, start_actors: ActorStarter,
                  find_actors: ActorFinder) -> tuple[TrainRun, dict[str, Any]]:
    """End a failed attempt's actors, clear its half-written files, open the newest durable checkpoint and
    start fresh helper actors on it."""
    end_actors(cfg, job.run_name, find_actors(cfg, job.run_name))
    clean_crashed_writes(resolve_paths(cfg))
    fetch_run_files(resolve_paths(cfg))
    run = open_run(cfg, init=False, write=False, name=job.run_name)  # the driver holds the run dir's lock
    return run, start_actors(run)


def run_worker(job: WorkerJob, rank: int, world: int, device: torch.device, start_actors: ActorStarter,
               find_actors: ActorFinder, node: str = "") -> None:
    """`node`: this worker's Ray node id; given, a node without the data dir or the run dir fails here."""
    cfg = RunConfig.from_mapping(job.cfg).validate()
    if node:
        check_paths_here(cfg, node, f"data-parallel worker {rank}")
    paths = resolve_paths(cfg)
    actors: dict[str, Any] = {}
    if rank == 0:
        run, actors = open_on_rank0(cfg, job, start_actors, find_actors)
        train_data, val_data, state = run.train_data, run.val_data, run.state
    else:
        (train_data, val_data), state = open_datasets(cfg), None
    state = broadcast_from_rank0(state, device)  # once it arrives, rank 0's actors exist
    if rank != 0:
        actors = find_actors(cfg, job.run_name)
    backend = RayBackend(cfg, actors, paths, int(state["step"]), job.run_name, device, rank, world)
    pids = [int(row[0]) for row in gather_rows([float(os.getpid())], device)]
    nodes: list[Any] = [None] * world
    dist.all_gather_object(nodes, node)  # where each rank runs: the start record names the nodes
    with tempfile.TemporaryDirectory(prefix=f"perkunas-worker{rank}-") as scratch:
        log_dir = paths.log_dir if rank == 0 else Path(scratch)
        attempt = attempt_number(log_dir / TRAIN_LOG, job.launch_id) if rank == 0 else 0
        try:
            loop = train_loop(cfg, backend, train_data, val_data, log_dir, state, job.verbose and rank == 0,
                              num_workers=world)
            if rank == 0:
                log_start(loop, cfg, job, attempt, pids, nodes, backend.helper_node)
            loop.run(max(0, job.target_step - loop.step))
        finally:
            backend.close()


def log_start(loop: TrainLoop, cfg: RunConfig, job: WorkerJob, attempt: int, pids: list[int],
              nodes: list[str], helper_node: str) -> None:
    """A "start" record, or a "restart" record and a line on stderr when an earlier attempt of this launch died.
    `pids`, `nodes`: each worker's process id and Ray node id, in rank order; `helper_node`: the host tier's."""
    loop.log.write("restart" if attempt else "start", step=loop.step, attempt=attempt, num_workers=len(pids),
                   worker_pids=pids, worker_nodes=nodes, helper_node=helper_node, launch_id=job.launch_id,
                   max_failures=cfg.ray.max_failures)
    if attempt:
        print(f"perkunas: restart {attempt} of this run (at most {cfg.ray.max_failures}): the worker group "
              f"resumes from the durable checkpoint at step {loop.step}", file=sys.stderr, flush=True)
