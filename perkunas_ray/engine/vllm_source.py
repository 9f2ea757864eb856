"""The model dir vLLM loads for a source: a Hugging Face package as is, a run dir via a cached fp32 export beside it.

A run dir's newest verified checkpoint is exported (`export_hf`, fp32) to
`<run dir's parent>/.perkunas-hf-cache/<run name>-<digest of its path>/step-<N>/`: beside the run, never
inside it (a run dir holds what training writes, and the export must not be pruned or copied with it).
An export whose manifest names the same run, step and dtype, with every file it lists present at its
size, is reused; a newer step gets a new export. `export_hf` writes into a temp dir and renames it into
place, so two replicas starting at once never see half an export: the loser of the race finds the
winner's and uses it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from perkunas_ray.errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_DIR = ".perkunas-hf-cache"
EXPORT_DTYPE = "fp32"  # what the native engine serves by default: the two engines then run the same weights


def is_run_dir(path: Path) -> bool:
    return (path / "checkpoints").is_dir()


def export_cache_dir(run_dir: Path) -> Path:
    """Where the exports of `run_dir` go: its parent's cache, one folder per run (by name and path digest)."""
    run_dir = run_dir.resolve()
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    return run_dir.parent / CACHE_DIR / f"{run_dir.name}-{digest}"


def export_matches(out_dir: Path, run_dir: Path, step: int) -> bool:
    """Whether `out_dir` is a complete fp32 export of `run_dir` at `step` (by its manifest)."""
    from perkunas_ray.export.manifest import EXPORT_MANIFEST, read_export_manifest

    if not (out_dir / EXPORT_MANIFEST).is_file():
        return False
    try:
        manifest: dict[str, Any] = read_export_manifest(out_dir)
        source = manifest["source"]
        if (manifest.get("kind") != "huggingface" or manifest.get("dtype") != EXPORT_DTYPE
                or int(source["step"]) != step or Path(source["run_dir"]) != run_dir.resolve()):
            return False
        return all((out_dir / name).is_file() and (out_dir / name).stat().st_size == entry["num_bytes"]
                   for name, entry in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError):  # unreadable or of another format: export again
        return False


def exported_run_dir(run_dir: Path) -> Path:
    """The Hugging Face export of the run's newest verified checkpoint, made if missing or stale."""
    from perkunas_ray.checkpoint.format import latest_checkpoint, read_state
    from perkunas_ray.export.errors import ExportError
    from perkunas_ray.export.hf import export_hf

    step = int(read_state(latest_checkpoint(run_dir))["step"])
    out = export_cache_dir(run_dir) / f"step-{step}"
    if export_matches(out, run_dir, step):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = out.exists()  # a broken or foreign export at our path: replace it
    logger.info("vllm: exporting %s step %d to %s", run_dir, step, out)
    try:
        export_hf(run_dir, out, dtype=EXPORT_DTYPE, overwrite=stale, step=step)
    except ExportError:
        if not export_matches(out, run_dir, step):  # not a racing replica's finished export: a real failure
            raise
    return out


def exported_step(model_dir: Path) -> int | None:
    """The run's checkpoint step an export in our cache holds; None for a Hugging Face package of its own."""
    from perkunas_ray.export.manifest import read_export_manifest

    if model_dir.parent.parent.name != CACHE_DIR:
        return None
    return int(read_export_manifest(model_dir)["source"]["step"])


def vllm_model_dir(source: str | Path) -> Path:
    """The directory vLLM loads for a registry `source` (a run dir, or a Hugging Face package with safetensors)."""
    from perkunas_ray.model_source import is_hf_package

    path = Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError(f"source {path} does not exist (expected a run dir or a Hugging Face package dir)")
    if is_hf_package(path):
        if not any(path.glob("*.safetensors")):
            raise ConfigError(f"source {path}: engine 'vllm' loads safetensors only, and the package has no "
                              f"*.safetensors (pickled .bin/.pt weights are never loaded)")
        return path
    if is_run_dir(path):
        return exported_run_dir(path)
    raise ConfigError(f"source {path} is neither a run dir (with checkpoints/) nor a Hugging Face package "
                      f"(config.json with model_type)")
