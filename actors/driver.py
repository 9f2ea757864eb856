"""Training on Ray: a Ray Train TorchTrainer whose workers stream the model, and the run's helper actors.

    N workers (TorchTrainer; gloo on CPU, NCCL on GPU): forward + replay of their slice, gradients summed
        by torch.distributed; rank 0 hands the sums to
    ShardStoreActor (fp32 masters + optimizers: updates once) --shard versions (ObjectRefs)--> the workers
    PrefetchActor (reads versions ahead), CheckpointFlusherActor (active -> durable; the training gauges),
    RefBoardActor (where workers 1..N-1 find the current versions; not started for one worker)

Rank 0 starts the helpers (actors/helpers.py) on the driver's node at every (re)start of the worker group; Ray Train restarts
the group from the newest durable checkpoint when a worker or a helper dies (ray.max_failures times).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from actors.worker import train_worker
from perkunas_ray.checkpoint.durable import is_uri
from perkunas_ray.config import RunConfig as PerkunasConfig
from perkunas_ray.config import to_dict
from perkunas_ray.errors import PerkunasError
from perkunas_ray.stream.actor_options import worker_resources
from perkunas_ray.stream.build import TrainRun, training
from perkunas_ray.stream.interface import ActorFailure, TrainResult
from perkunas_ray.stream.run_result import launch_result


def absolute_paths(cfg: PerkunasConfig) -> PerkunasConfig:
    """The config with its local paths absolute: Ray Train's workers need not share the driver's cwd."""
    cfg = PerkunasConfig.from_mapping(to_dict(cfg))
    for section, name in (("train", "data_dir"), ("train", "val_data_dir"), ("checkpoint", "run_dir"),
                          ("checkpoint", "active_run_dir"), ("checkpoint", "parent_run_dir")):
        value = getattr(getattr(cfg, section), name)
        if value and not is_uri(value):
            setattr(getattr(cfg, section), name, os.path.abspath(value))
    return cfg.validate()


def torch_trainer(run: TrainRun, config: dict[str, Any], launch_id: str) -> TorchTrainer:
    """Workers, resources, backend and restarts from the run's `ray` config section."""
    cfg = run.cfg
    resources = worker_resources(cfg, ray.cluster_resources().get("GPU", 0))
    on_gpu = resources["GPU"] > 0
    storage = None if is_uri(run.paths.durable) else str(run.paths.active / "ray_train")
    return TorchTrainer(
        train_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=on_gpu,
                                     resources_per_worker={k: v for k, v in resources.items() if v}),
        torch_config=TorchConfig(backend="nccl" if on_gpu else "gloo"),
        run_config=RunConfig(name=f"{run.name}-{launch_id[:8]}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)))


def train_on_ray(run: TrainRun, verbose: bool = True, max_steps: int | None = None) -> TrainResult:
    """Train the opened run on the connected Ray cluster; the run dir is released when training ends.
    A failure beyond ray.max_failures restarts raises ActorFailure (or the PerkunasError a worker raised)."""
    start_step = int(run.state["step"])
    target = run.cfg.train.max_steps if max_steps is None else min(run.cfg.train.max_steps, start_step + max_steps)
    launch_id = uuid.uuid4().hex
    job = {"cfg": to_dict(absolute_paths(run.cfg)), "run_name": run.name, "launch_id": launch_id,
           "target_step": target, "verbose": verbose, "helper_node_id": ray.get_runtime_context().get_node_id()}
    with training(run):
        try:
            torch_trainer(run, job, launch_id).fit()
        except ray.train.TrainingFailedError as exc:
            raise training_failure(exc, run) from exc
    return launch_result(run.at_latest(), start_step)


def worker_error(failure: BaseException) -> BaseException:
    """What a worker raised, out of Ray's wrapper (a RayTaskError keeps it as `cause`)."""
    cause = getattr(failure, "cause", None)
    return cause if isinstance(cause, BaseException) else failure


def first_clause(error: BaseException) -> str:
    """The head of an error's message (an ActorFailure's own resume hint follows a semicolon)."""
    return (str(error).strip().splitlines() or [""])[0].split("; ")[0]


def training_failure(exc: Exception, run: TrainRun) -> Exception:
    """A worker's PerkunasError as it is (bad config or data fail on every attempt alike); else ActorFailure
    naming what failed and the durable checkpoint to resume from."""
    errors = {rank: worker_error(f) for rank, f in sorted((getattr(exc, "worker_failures", None) or {}).items())}
    for error in errors.values():
        if isinstance(error, PerkunasError):
            return error
    detail = ", ".join(f"worker {rank}: {type(e).__name__}: {first_clause(e)}" for rank, e in errors.items()) or str(exc)
    latest = run.at_latest()
    return ActorFailure(f"training failed after {run.cfg.ray.max_failures} restart(s) ({detail}); the durable "
                        f"checkpoint at step {latest.state['step']} in {run.paths.durable} is intact; resume with "
                        f"--train --run-dir {run.paths.durable}")
