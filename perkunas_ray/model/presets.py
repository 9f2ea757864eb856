"""Named model presets (Pion's sizes, tiny-lm's TinyStories tiers, our tiny default), shipped as YAML."""

from __future__ import annotations

from importlib import resources

from perkunas_ray.config import ModelConfig, from_dict, load_mapping
from perkunas_ray.errors import ConfigError


def _preset_dir():  # type: ignore[no-untyped-def]
    return resources.files("perkunas_ray") / "configs" / "models"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, **overrides: object) -> ModelConfig:
    """The ModelConfig of preset `name`, with field overrides (e.g. vocab_size from a tokenizer)."""
    path = _preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model preset {name!r} does not exist; known presets: {', '.join(preset_names())}")
    data = load_mapping(str(path))
    data.pop("description", None)
    data.update(overrides)
    return from_dict(ModelConfig, data, f"preset {name}").validate()


def preset_description(name: str) -> str:
    return str(load_mapping(str(_preset_dir() / f"{name}.yaml")).get("description", ""))
