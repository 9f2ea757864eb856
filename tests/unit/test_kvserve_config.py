"""Model registry validation, auth tokens, and the deploy-time engine check, without Ray."""

from __future__ import annotations

import json

import pytest

from perkunas_ray.errors import ConfigError, PerkunasError
from perkunas_ray.kvserve.auth import TokenAuth, parse_tokens, tokens_from_env
from perkunas_ray.kvserve.registry import load_registry, parse_registry, single_model_registry

pytestmark = pytest.mark.unit


def test_registry_yaml_and_json(tmp_path) -> None:
    (tmp_path / "r.yaml").write_text(
        "models:\n  tiny:\n    source: runs/tiny\n    num_replicas: 2\n    kv_policy: {block_size: 8, num_blocks: 64}\n"
        "router: {policy: pow2}\n")
    reg = load_registry(tmp_path / "r.yaml")
    spec = reg.models["tiny"]
    assert spec.source == str((tmp_path / "runs" / "tiny").resolve())  # relative to the registry file
    assert (spec.num_replicas, spec.kv_policy.block_size, spec.kv_policy.num_blocks) == (2, 8, 64)
    assert reg.router.policy == "pow2"
    (tmp_path / "r.json").write_text(json.dumps({"models": [{"id": "a", "source": "/x", "engine": "vllm",
                                                             "dtype": "auto"}]}))
    assert load_registry(tmp_path / "r.json").models["a"].engine == "vllm"


@pytest.mark.parametrize(("data", "needle"), [
    ({"models": {"m": {"source": "/x", "engine": "tgi"}}}, "model 'm': engine must be one of native, vllm"),
    ({"models": {"m": {"source": "/x", "kv_policy": {"block_size": 0}}}}, "model 'm': kv_policy.block_size"),
    ({"models": {"m": {"source": "/x", "kv_policy": {"blocks": 3}}}}, "model 'm': kv_policy has unknown field 'blocks'"),
    ({"models": {"m": {"source": "/x", "num_replicas": 0}}}, "model 'm': num_replicas"),
    ({"models": {"m": {"source": "/x", "colour": 1}}}, "model 'm': unknown field 'colour'"),
    ({"models": {"m": {"engine": "native"}}}, "model 'm': source is required"),
    ({"models": {"m": {"source": "/x", "num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}}},
     "not both"),
    ({"models": {"m": {"source": "/x", "dtype": "auto"}}}, "model 'm': dtype"),
    ({"models": {}}, "models is empty"),
    ({"modelz": {}}, "'models' key"),
    ({"models": {"m": {"source": "/x"}}, "router": {"policy": "random"}}, "router.policy"),
])
def test_registry_errors_name_model_and_field(data, needle) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_registry(data)
    assert needle in str(info.value)


def test_bad_registry_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_registry(tmp_path / "nope.yaml")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_registry(tmp_path / "bad.json")


def test_vllm_engine_fails_at_deploy_time_without_vllm(tmp_path) -> None:
    pytest.importorskip("ray")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    from deployments.app import build_app

    (tmp_path / "r.yaml").write_text("models:\n  big:\n    source: /models/big\n    engine: vllm\n    device: cuda\n")
    with pytest.raises(PerkunasError, match="model 'big' has engine 'vllm', but vllm is not installed"):
        build_app({"registry": str(tmp_path / "r.yaml")})
    with pytest.raises(ConfigError, match="exactly one of registry"):
        build_app({})


def test_single_model_registry(tmp_path) -> None:
    reg = single_model_registry(tmp_path / "myrun")
    assert list(reg.models) == ["myrun"] and reg.models["myrun"].engine == "native"


def test_tokens_parse_and_check() -> None:
    assert parse_tokens("dev:dev-token, ci:abc") == {"dev": "dev-token", "ci": "abc"}
    assert parse_tokens("solo") == {"token0": "solo"}
    assert parse_tokens(None) == {} and parse_tokens({"a": "b"}) == {"a": "b"}
    with pytest.raises(ConfigError, match="empty"):
        parse_tokens("dev:")
    assert tokens_from_env({"KV_API_TOKENS": "dev:x"}) == {"dev": "x"}
    auth = TokenAuth({"dev": "dev-token", "ci": "abc"})
    assert auth.check("Bearer abc") == "ci"
    assert auth.check("bearer dev-token") == "dev"
    assert auth.check("Bearer wrong") is None
    assert auth.check("Basic abc") is None
    assert auth.check(None) is None
    off = TokenAuth({})
    assert not off.enabled and off.check(None) == "anonymous"
    assert "auth is OFF" in off.describe()


def test_serve_options_come_from_the_registry() -> None:
    """Replicas, resources, concurrency, health checks and the router are registry values, and app args
    override the router, body limit and ingress CPUs in the core, before any Serve builder runs."""
    from perkunas_ray.kvserve.registry import apply_app_args
    from perkunas_ray.kvserve.serve_options import engine_options, ingress_options, request_router_options

    reg = parse_registry({"models": {"m/1": {"source": "/x", "device": "cuda", "num_replicas": 3, "num_cpus": 2,
                                             "max_ongoing_requests": 8, "health_check_period_s": 7}},
                          "ingress": {"num_cpus": 0.5, "max_ongoing_requests": 50}})
    options = engine_options(reg.models["m/1"])
    assert options["name"] == "engine_m_1" and options["num_replicas"] == 3
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1.0}
    assert (options["max_ongoing_requests"], options["health_check_period_s"]) == (8, 7)
    assert request_router_options(reg.models["m/1"], reg.router, "r:R")["request_router_class"] == "r:R"
    assert ingress_options(reg.ingress)["ray_actor_options"] == {"num_cpus": 0.5}
    apply_app_args(reg, {"router": "pow2", "max_body_bytes": 4096, "ingress_num_cpus": 1})
    assert (reg.router.policy, reg.max_body_bytes, reg.ingress.num_cpus) == ("pow2", 4096, 1)
    assert "request_router_class" not in request_router_options(reg.models["m/1"], reg.router, "r:R")
    with pytest.raises(ConfigError, match="router.policy"):
        apply_app_args(reg, {"router": "random"})
