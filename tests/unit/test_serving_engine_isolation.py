"""One request never fails others: unusable sampling values are refused or made safe, and a request that
fails inside the shared engine step fails alone (its blocks freed, the others served)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from perkunas_ray.engine import SamplingParams
from perkunas_ray.engine.interface import SEED_MAX, RequestFailedError
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.engine.request import Request
from perkunas_ray.engine.sampler import Sampler
from perkunas_ray.errors import ConfigError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]
PROMPT = "Once upon a time there was a little girl"




async def _run(engine: NativeEngine, request_id: str, params: SamplingParams) -> Any:
    """The request's last output, or the exception it ended with."""
    last = None
    try:
        async for out in engine.stream(request_id, PROMPT, params):
            last = out
    except Exception as exc:  # noqa: BLE001 - the test looks at which requests failed
        return exc
    return last


def _run_together(engine: NativeEngine, requests: dict[str, SamplingParams]) -> dict[str, Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(*(_run(engine, rid, p) for rid, p in requests.items()))

    return dict(zip(requests, asyncio.run(main()), strict=True))


def _assert_nothing_held(engine: NativeEngine) -> None:
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_blocks_used) == (0, 0, 0)


GOOD = SamplingParams(max_tokens=6, temperature=0.8, seed=1, ignore_eos=True)


def test_tiny_temperature_is_greedy_not_nan(engine: NativeEngine) -> None:
    """1e-40 overflowed the logits to NaN, and the sampler's exception failed every request in the step."""
    outs = _run_together(engine, {"tiny-temp": SamplingParams(max_tokens=6, temperature=1e-40, ignore_eos=True),
                                  "good": GOOD})
    greedy = engine.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    assert outs["tiny-temp"].outputs[0].token_ids == greedy.outputs[0].token_ids
    assert len(outs["good"].outputs[0].token_ids) == 6
    _assert_nothing_held(engine)


def test_extreme_penalty_samples_without_nan(engine: NativeEngine) -> None:
    params = SamplingParams(max_tokens=6, temperature=1.0, repetition_penalty=1e-300, ignore_eos=True)
    out = engine.generate([PROMPT], params)[0]
    assert len(out.outputs[0].token_ids) == 6


def test_sampler_falls_back_to_greedy_on_nan_logits() -> None:
    logits = torch.tensor([[0.0, float("nan"), 3.0, float("inf")], [1.0, 2.0, float("nan"), 0.5]])
    requests = [Request(f"r{i}", [1, 2], SamplingParams(temperature=t), generator=torch.Generator().manual_seed(0))
                for i, t in enumerate((1.0, 0.0))]
    out = Sampler()(logits, requests)
    assert out.token_ids == [3, 1] and not out.errors


@pytest.mark.parametrize("field, value", [("temperature", float("inf")), ("temperature", float("nan")),
                                          ("top_p", float("nan")), ("repetition_penalty", float("inf")),
                                          ("seed", SEED_MAX + 1), ("seed", 1 << 64)])
def test_unusable_values_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"sampling.{field}"):
        SamplingParams(**{field: value})


def test_largest_seed_with_n_siblings(engine: NativeEngine) -> None:
    out = engine.generate([PROMPT], SamplingParams(max_tokens=3, seed=SEED_MAX, n=3, ignore_eos=True))[0]
    assert [len(o.token_ids) for o in out.outputs] == [3, 3, 3]


class _PoisonSampler(Sampler):
    """Fails the rows of one request, as a bug in a sampling path would."""

    def __init__(self, victim: str = "poison") -> None:
        self.victim = victim

    def sample_row(self, logits: torch.Tensor, request: Request) -> int:
        if request.group_id.startswith(self.victim):
            raise RuntimeError("boom in the sampler")
        return super().sample_row(logits, request)


def test_a_failing_request_fails_alone(engine: NativeEngine) -> None:
    engine.core.sampler = _PoisonSampler()
    outs = _run_together(engine, {"poison": SamplingParams(max_tokens=50, n=2, ignore_eos=True), "good": GOOD,
                                  "greedy": SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)})
    assert isinstance(outs["poison"], RequestFailedError)
    assert len(outs["good"].outputs[0].token_ids) == 6 and len(outs["greedy"].outputs[0].token_ids) == 6
    assert engine.stats().num_failed == 1
    _assert_nothing_held(engine)


def test_generate_raises_a_failed_request_instead_of_hanging(engine: NativeEngine) -> None:
    engine.core.sampler = _PoisonSampler(victim="generate-")
    with pytest.raises(RequestFailedError, match="generate-"):
        engine.generate([PROMPT], SamplingParams(max_tokens=4, temperature=1.0))
    _assert_nothing_held(engine)


class _FlakyRunner:
    """The engine's runner, failing its next forward pass once (a device error, say)."""

    def __init__(self, runner: Any) -> None:
        self.runner, self.fail_next = runner, True

    def execute(self, scheduled: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("forward failed")
        return self.runner.execute(scheduled)


def test_a_failed_forward_fails_only_that_step(engine: NativeEngine) -> None:
    engine.core.runner = _FlakyRunner(engine.core.runner)
    first = _run_together(engine, {"in-bad-step": GOOD})
    assert isinstance(first["in-bad-step"], RequestFailedError)
    _assert_nothing_held(engine)
    after = _run_together(engine, {"next": GOOD})  # the engine still serves
    assert len(after["next"].outputs[0].token_ids) == 6
