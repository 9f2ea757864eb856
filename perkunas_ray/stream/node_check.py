"""A process of a run on another node checks, at its start, that the local paths it will open are there.

On a cluster, the data dir and a run dir given as a path must exist on every node that runs a training worker
or the shard store (a shared filesystem, or a copy at the same path); a run dir can be a pyarrow URI instead,
which every node reaches. A node without them fails here, naming the path and the node, before its first step
rather than somewhere in the middle of one.
"""

from __future__ import annotations

from pathlib import Path

from perkunas_ray.checkpoint.durable import is_uri
from perkunas_ray.config import RunConfig
from perkunas_ray.errors import CheckpointError, DataError

MANIFEST = "manifest.json"  # a prepared data dir's manifest (perkunas prepare writes it last)
FIX = ("every node that runs it needs the same path: a shared filesystem, or a copy there (cluster.yaml's "
       "file_mounts); or place it with ray.worker_resources / ray.helper_resources on nodes that have it")


def this_node() -> str:
    """This Ray process's node id (the dashboard's Cluster view shows it beside the node's address)."""
    import ray  # only Ray's processes ask

    return str(ray.get_runtime_context().get_node_id())


def check_paths_here(cfg: RunConfig, node: str, role: str, data: bool = True) -> None:
    """DataError / CheckpointError naming the path and `node` (a Ray node id) unless this node has the data dirs
    (`data`) and a run dir given as a path. `role`: what runs here, for the message."""
    if data:
        for field in ("data_dir", "val_data_dir"):
            path = getattr(cfg.train, field)
            if path and not (Path(path) / MANIFEST).is_file():
                found = "the dir exists without manifest.json" if Path(path).is_dir() else "no such dir"
                raise DataError(f"train.{field} {path} is not on node {node}, where {role} runs ({found}); {FIX}")
    run_dir = cfg.checkpoint.run_dir  # a URI other than file:// is reached over the network from any node
    local = Path(run_dir.removeprefix("file://")) if run_dir and (not is_uri(run_dir) or run_dir.startswith(
        "file://")) else None
    if local is not None and not local.is_dir():
        raise CheckpointError(f"checkpoint.run_dir {local} is not on node {node}, where {role} runs; {FIX}, or give "
                              f"the run dir as a URI every node reaches (s3://, gs://)")
