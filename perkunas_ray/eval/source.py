"""The model to evaluate: a run dir (its newest checkpoint, or `step`) or a Hugging Face package dir."""

from __future__ import annotations

from pathlib import Path

from perkunas_ray.checkpoint.format import list_checkpoints, load_model_state
from perkunas_ray.errors import CheckpointError, ConfigError
from perkunas_ray.model_source import LoadedModel, load_inference_model


def load_eval_model(source: str | Path, step: int | None = None, device: str = "cpu",
                    dtype: str = "fp32") -> LoadedModel:
    """load_inference_model, then the weights of checkpoint `step` when one is asked for."""
    loaded = load_inference_model(source, device, dtype)
    if step is None or step == loaded.step:
        return loaded
    if loaded.step is None:
        raise ConfigError(f"--step selects a checkpoint of a run dir; {source} is a Hugging Face package")
    checkpoints = dict(list_checkpoints(Path(source)))
    if step not in checkpoints:
        raise CheckpointError(f"{source} has no complete checkpoint at step {step} "
                              f"(it has steps {', '.join(map(str, checkpoints))})")
    try:
        loaded.model.load_state_dict(load_model_state(checkpoints[step]))
    except RuntimeError as exc:  # load_state_dict reports missing / unexpected / mis-shaped tensors this way
        raise CheckpointError(f"{checkpoints[step]}: weights do not match the run's model config ({exc})") from exc
    loaded.step = step
    return loaded
