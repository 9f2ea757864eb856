"""The vLLM engine loads safetensors only: a model dir's pickled weights (.bin, .pt) are never unpickled."""

from __future__ import annotations

import pytest

from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.engine.vllm_engine import vllm_engine_args

pytestmark = pytest.mark.unit


def test_vllm_loads_safetensors_only() -> None:
    assert vllm_engine_args("/models/m", KVPolicy())["load_format"] == "safetensors"
