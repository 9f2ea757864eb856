"""The vLLM engine's arguments: safetensors only, CPU defaults, and what vLLM lacks refused naming the field."""

from __future__ import annotations

import pytest

from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.engine.vllm_engine import DEFAULT_CPU_KV_BYTES, vllm_engine_args
from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.registry import single_model_registry

pytestmark = pytest.mark.unit


def test_vllm_loads_safetensors_only() -> None:
    assert vllm_engine_args("/models/m", KVPolicy(), on_cpu=False)["load_format"] == "safetensors"


def test_cpu_defaults_and_kv_size() -> None:
    args = vllm_engine_args("/m", KVPolicy(block_size=32), on_cpu=True)
    assert args["enforce_eager"] is True and args["kv_cache_memory_bytes"] == DEFAULT_CPU_KV_BYTES
    assert "gpu_memory_utilization" not in args
    args = vllm_engine_args("/m", KVPolicy(block_size=32, num_blocks=64), on_cpu=True)
    assert args["num_gpu_blocks_override"] == 64
    args = vllm_engine_args("/m", KVPolicy(block_size=32, kv_budget_bytes=1 << 26), on_cpu=True)
    assert args["kv_cache_memory_bytes"] == 1 << 26
    assert vllm_engine_args("/m", KVPolicy(), on_cpu=False)["enforce_eager"] is False


@pytest.mark.parametrize(("policy", "field"), [
    (KVPolicy(block_size=16), "kv_policy.block_size"),
    (KVPolicy(block_size=32, kv_dtype="int8"), "kv_policy.kv_dtype"),
    (KVPolicy(block_size=32, pruning="sink_window", window_tokens=64), "kv_policy.pruning"),
])
def test_what_vllm_lacks_is_refused(policy: KVPolicy, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        vllm_engine_args("/m", policy, on_cpu=True)


def test_registry_gives_vllm_on_cpu_blocks_of_32() -> None:
    assert single_model_registry("/runs/r", engine="vllm").models["r"].kv_policy.block_size == 32
    assert single_model_registry("/runs/r").models["r"].kv_policy.block_size == 16
    spec = single_model_registry("/runs/r", engine="vllm", kv_policy={"block_size": 64}).models["r"]
    assert spec.kv_policy.block_size == 64
