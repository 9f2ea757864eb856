"""Command-line flags for every config field (seed 000's flag names), and applying the ones a user gave.

Flags are generated from the config dataclasses, so a new config field gets its flag for free:
`train.micro_batch_size` -> `--micro-batch-size`, booleans get `--x/--no-x`, tuples take "1.0,0.5",
resource maps "perkunas_host=0.01" (or a JSON object).
Only flags the user gave override the config file, profile or run dir's config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from perkunas_ray.config import SECTIONS, RunConfig
from perkunas_ray.errors import ConfigError
from perkunas_ray.model.presets import load_preset
from perkunas_ray.profiles import load_run_config_file, profile_names

# Seed 000 spells devices "gpu"; our configs say "device".
ALIASES = {"gpu": "device", "secondary-gpu": "secondary-device", "cuda": "device"}
ALIASED_FIELDS = {("stream", "trace_storage"), ("stream", "prefetch_shards")}
_UNSET = object()


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _resource_map(text: str) -> dict[str, float]:
    """`name=amount,name=amount` (or a JSON object, as `ray start --resources` takes it) -> {name: amount}."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a JSON object of resource amounts, got {text!r}") from exc
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object of resource amounts, got {text!r}")
        return value
    out: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, amount = item.partition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected name=amount[,name=amount...], got {text!r}")
    return out


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help=f"YAML/JSON run config file, or a profile name ({', '.join(profile_names())})")
    parser.add_argument("--model-preset", default=None, help="model preset name (see `perkunas model-info`)")
    seen: set[str] = set()
    for section, kind in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for field in dataclasses.fields(kind):
            flag = "--" + field.name.replace("_", "-")
            if flag in seen:
                continue
            seen.add(flag)
            default = getattr(kind(), field.name)
            dest = f"cfg__{section}__{field.name}"
            if isinstance(default, bool):
                group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=_UNSET)
            elif isinstance(default, tuple):
                group.add_argument(flag, dest=dest, type=_float_list, default=_UNSET, metavar="X,Y,...")
            elif isinstance(default, dict):
                group.add_argument(flag, dest=dest, type=_resource_map, default=_UNSET, metavar="NAME=N,...")
            else:
                group.add_argument(flag, dest=dest, type=type(default), default=_UNSET,
                                   metavar=field.name.upper())


def config_from_args(args: argparse.Namespace, default_profile: str | None = "tiny") -> RunConfig:
    """Profile/config file first, then --model-preset, then every flag the user gave."""
    source = args.config or default_profile
    if source is None:
        raise ConfigError("give --config FILE (or a profile name)")
    return apply_flags(load_run_config_file(source), args)


def apply_flags(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """`cfg` with --model-preset and every config flag the user gave applied, validated."""
    if args.model_preset:
        cfg.model = load_preset(args.model_preset)
    for key, value in flag_overrides(args).items():
        section, name = key.split(".")
        if (section, name) in ALIASED_FIELDS:
            value = ALIASES.get(value, value)
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The section.field -> value pairs the user set on the command line."""
    return {k[5:].replace("__", "."): v for k, v in vars(args).items() if k.startswith("cfg__") and v is not _UNSET}
