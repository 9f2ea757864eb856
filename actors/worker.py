"""The function Ray Train runs on each data-parallel worker: a thin shell over perkunas_ray.stream.worker_run."""

from __future__ import annotations

from typing import Any

import ray.train
import ray.train.torch
import torch

from actors.helpers import build_actors, find_actors
from perkunas_ray.device import resolve_device
from perkunas_ray.stream.node_check import this_node
from perkunas_ray.stream.worker_process import prepare_worker_process
from perkunas_ray.stream.worker_run import WorkerJob, run_worker


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: `config` is a WorkerJob as a dict."""
    job = WorkerJob(**config)
    prepare_worker_process(int(job.cfg["ray"]["compute_threads"]))
    context = ray.train.get_context()
    device = resolve_device(job.cfg["train"]["device"])
    if device.type == "cuda":
        device = ray.train.torch.get_device()  # the GPU Ray Train gave this worker
        torch.cuda.set_device(device)
    run_worker(job, context.get_world_rank(), context.get_world_size(), device,
               lambda run: build_actors(run, job.helper_node_id), find_actors, this_node())
