"""Serve follows a training run in one Ray cluster: training (on the actors) adds a durable checkpoint while a
client streams, the served step advances within seconds, and no request fails."""

from __future__ import annotations

import threading
import time

import pytest

from tests.stream_helpers import small_config, small_data_dir, train_in_process, train_with_ray

pytestmark = pytest.mark.ray

TOKEN = "follow-token"
SETTINGS = dict(save_every=2, checkpoint__durable_flush_every=2, validate_every=0)


def _served_step(client) -> int | None:
    return client.models.retrieve("run").model_extra["step"]


def test_serve_follows_training_without_failing_a_request(tmp_path) -> None:
    import openai

    from deployments import launch
    from perkunas_ray.kvserve.registry import parse_registry

    data, run = small_data_dir(tmp_path / "data"), tmp_path / "run"
    assert train_in_process(small_config(data, run, max_steps=2, **SETTINGS)).step == 2
    registry = parse_registry({"models": {"run": {"source": str(run), "follow": True, "follow_poll_s": 0.5,
                                                  "num_cpus": 0, "kv_policy": {"num_blocks": 64}}}})
    with launch.serving(registry, f"test:{TOKEN}", num_cpus=2) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
        assert _served_step(client) == 2
        stop, failures, completed = threading.Event(), [], [0]

        def stream_continuously() -> None:
            while not stop.is_set():
                try:
                    pieces = list(client.completions.create(model="run", prompt="Once upon a time", max_tokens=8,
                                                            temperature=0.8, stream=True))
                    assert pieces[-1].choices[0].finish_reason in ("stop", "length")
                    completed[0] += 1
                except Exception as exc:  # noqa: BLE001 - every failure counts, whatever its kind
                    failures.append(repr(exc))

        streamer = threading.Thread(target=stream_continuously, daemon=True)
        streamer.start()
        try:
            while completed[0] < 3:  # the client is streaming before training resumes
                time.sleep(0.05)
            # Training resumes on the actors of the same Ray cluster that serves the run.
            assert train_with_ray(small_config(data, run, max_steps=4, **SETTINGS)).step == 4
            written = time.monotonic()
            while _served_step(client) != 4:
                assert time.monotonic() - written < 10, "the served step did not advance within 10 s"
                time.sleep(0.1)
            advanced_s = time.monotonic() - written
            before = completed[0]
            while completed[0] < before + 3:  # requests keep succeeding on the new checkpoint
                time.sleep(0.05)
        finally:
            stop.set()
            streamer.join(timeout=30)
        assert failures == [], failures[:3]
        print(f"served step 2 -> 4 in {advanced_s:.2f} s after the checkpoint; {completed[0]} requests, 0 failed")
