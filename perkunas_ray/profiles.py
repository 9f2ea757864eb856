"""Training profiles: a model preset plus train/stream/checkpoint settings, shipped as YAML."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from perkunas_ray.config import RunConfig, load_mapping
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.presets import load_preset


def profile_names() -> list[str]:
    root = resources.files("perkunas_ray") / "configs" / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def run_config_from_mapping(data: dict, where: str) -> RunConfig:
    """A RunConfig from a mapping that may name a `model_preset` and override its fields under `model`."""
    data = dict(data)
    preset = data.pop("model_preset", None)
    model_overrides = data.pop("model", None) or {}
    cfg = RunConfig.from_mapping(data)
    if preset is not None:
        cfg.model = load_preset(str(preset), **model_overrides)
    elif model_overrides:
        cfg.model = RunConfig.from_mapping({"model": model_overrides}).model
    else:
        raise ConfigError(f"{where} must give `model_preset` or a `model` section")
    return cfg


def load_run_config_file(name_or_path: str) -> RunConfig:
    """A profile by name (`tiny`) or a YAML/JSON config file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        packaged = resources.files("perkunas_ray") / "configs" / "profiles" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            raise ConfigError(f"config {name_or_path!r} is neither a file nor a profile; profiles: "
                              f"{', '.join(profile_names())}")
        path = Path(str(packaged))
    return run_config_from_mapping(load_mapping(path), str(path))
