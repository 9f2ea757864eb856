"""Serving follows a run, without Ray: the engine swap, requests in flight, the routing mirror, bad checkpoints."""

from __future__ import annotations

import asyncio
import time

import pytest

from perkunas_ray.engine.interface import SamplingParams

pytestmark = pytest.mark.unit

PROMPT = "Once upon a time there was a little girl named Lily. She liked to play with her toys."
H = {"Authorization": "Bearer unit-token"}


def _add_checkpoint(run_dir, step: int, seed: int) -> None:
    """A newer checkpoint of the same run (other weights), as training would publish it."""
    from perkunas_ray.checkpoint.format import write_model_run_dir
    from perkunas_ray.engine.toy import sample_lines, toy_tokenizer
    from perkunas_ray.kvserve.toy import tiny_model_config
    from perkunas_ray.model import build_model

    cfg = tiny_model_config()
    write_model_run_dir(run_dir, cfg, build_model(cfg, seed=seed).state_dict(),
                        toy_tokenizer(sample_lines(300), vocab_size=512), step=step)


@pytest.fixture
def run_dir(tmp_path):
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    return make_tiny_run_dir(tmp_path / "tiny")  # step 1


def _service(run_dir, **fields):
    from perkunas_ray.kvserve.registry import single_model_registry
    from perkunas_ray.kvserve.service import EngineService

    spec = single_model_registry(run_dir, follow=True, kv_policy={"num_blocks": 64}, **fields).models["tiny"]
    return EngineService(spec, metrics=False)


def _prompt_ids(service) -> list[int]:
    return list(service.engine.tokenizer.encode(PROMPT).ids)


def test_swap_keeps_requests_in_flight_and_resets_the_routing_mirror(run_dir) -> None:
    service = _service(run_dir)
    assert service.step == 1 and service.info().step == 1
    ids = _prompt_ids(service)
    greedy = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)

    async def main():
        old_engine = service.engine
        async for _ in service.stream("warm", ids, SamplingParams(max_tokens=2, temperature=0.0)):
            pass
        assert (await service.routing_stats())["kv_hashes"]  # the prompt's blocks are cached
        in_flight = service.stream("long", ids, greedy)
        first = await in_flight.__anext__()
        _add_checkpoint(run_dir, step=5, seed=7)
        assert await service.follow_once() == 5
        assert service.step == 5 and service.info().step == 5 and service.engine is not old_engine
        routing = await service.routing_stats()
        assert routing["kv_hashes"] == []  # the new engine's cache is empty, and the router is told so
        rest = [delta async for delta in in_flight]  # the request in flight finishes on the old engine
        tokens = len(first.choices[0].token_ids) + sum(len(d.choices[0].token_ids) for d in rest)
        assert rest[-1].finished and rest[-1].choices[0].finish_reason == "length" and tokens == 40
        async for _ in service.stream("new", ids, SamplingParams(max_tokens=3, temperature=0.0)):
            pass
        assert service.engine.stats().num_finished == 1  # the new request ran on the new engine
        assert (await service.stats())["step"] == 5
        assert await service.follow_once() is None  # nothing newer
        await service.close()

    asyncio.run(main())


def test_incomplete_and_corrupt_checkpoints_are_not_served(run_dir) -> None:
    service = _service(run_dir)

    async def main():
        _add_checkpoint(run_dir, step=3, seed=3)
        (run_dir / "checkpoints" / "step_00000003" / "manifest.json").unlink()  # still being written
        assert await service.follow_once() is None and service.step == 1
        _add_checkpoint(run_dir, step=4, seed=4)
        shard = next((run_dir / "checkpoints" / "step_00000004" / "shards").iterdir())
        shard.write_bytes(shard.read_bytes()[:-8] + b"garbage!")
        assert await service.follow_once() is None and service.step == 1  # corrupt: skipped, kept serving
        assert 4 in service.follower.skipped
        _add_checkpoint(run_dir, step=6, seed=6)
        assert await service.follow_once() == 6

    asyncio.run(main())


def test_poll_advances_the_model_card_step(run_dir) -> None:
    """Over HTTP: the poll runs on the app's loop and /v1/models shows the new step within a few polls."""
    from fastapi.testclient import TestClient

    from perkunas_ray.kvserve.api import create_app
    from perkunas_ray.kvserve.auth import TokenAuth
    from perkunas_ray.kvserve.backend import LocalServingBackend

    service = _service(run_dir, follow_poll_s=0.05)
    backend = LocalServingBackend(service_registry(run_dir), {"tiny": service})
    with TestClient(create_app(backend, TokenAuth({"unit": "unit-token"}))) as client:
        card = client.get("/v1/models/tiny", headers=H).json()
        assert card["step"] == 1 and card["follow"] is True
        _add_checkpoint(run_dir, step=8, seed=8)
        deadline = time.monotonic() + 10
        while client.get("/v1/models", headers=H).json()["data"][0]["step"] != 8:
            assert time.monotonic() < deadline, "the served step did not advance"
            time.sleep(0.05)
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
        assert client.post("/v1/completions", headers=H, json=body).status_code == 200


def service_registry(run_dir):
    from perkunas_ray.kvserve.registry import single_model_registry

    return single_model_registry(run_dir, follow=True, follow_poll_s=0.05, kv_policy={"num_blocks": 64})


def test_follow_fields_are_checked(tmp_path, run_dir) -> None:
    from perkunas_ray.errors import ConfigError, PerkunasError
    from perkunas_ray.kvserve.registry import parse_registry
    from perkunas_ray.kvserve.service import check_engine_available

    with pytest.raises(ConfigError, match="model 'm': follow must be false for engine vllm"):
        parse_registry({"models": {"m": {"source": str(run_dir), "engine": "vllm", "follow": True}}})
    with pytest.raises(ConfigError, match="follow_poll_s must be a number > 0"):
        parse_registry({"models": {"m": {"source": str(run_dir), "follow": True, "follow_poll_s": 0}}})
    with pytest.raises(ConfigError, match="follow must be true or false"):
        parse_registry({"models": {"m": {"source": str(run_dir), "follow": "yes"}}})
    package = tmp_path / "package"
    package.mkdir()
    spec = parse_registry({"models": {"m": {"source": str(package), "follow": True}}}).models["m"]
    with pytest.raises(PerkunasError, match="follow needs a training run dir"):
        check_engine_available(spec)


def test_follow_flag_goes_with_model_dir(tmp_path, capsys) -> None:
    from perkunas_ray.cli import main

    assert main(["serve", "--registry", str(tmp_path / "registry.yaml"), "--follow"]) == 2
    assert "--follow go with --model-dir" in capsys.readouterr().err
