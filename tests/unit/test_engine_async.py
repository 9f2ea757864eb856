"""The async side: concurrent streams interleave, deltas add up, aborts and dropped consumers free blocks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from perkunas_ray.engine import Engine, RequestOutput, SamplingParams
from perkunas_ray.engine.native import NativeEngine
from perkunas_ray.errors import ConfigError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]





def assert_all_blocks_free(engine: NativeEngine) -> None:
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_blocks_used) == (0, 0, 0)
    assert stats.num_blocks_free == stats.num_blocks_total


async def collect(engine: NativeEngine, request_id: str, prompt: Any, params: SamplingParams,
                  log: list[tuple[str, int]]) -> list[RequestOutput]:
    outs = []
    async for out in engine.stream(request_id, prompt, params):
        log.append((request_id, len(out.outputs[0].token_ids)))
        outs.append(out)
    return outs


def test_engine_satisfies_the_protocol(engine: NativeEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.max_model_len == 128 and engine.block_size == 4 and engine.eos_token_id == 0


def test_concurrent_streams_interleave_and_deltas_add_up(engine: NativeEngine) -> None:
    prompts = ["Once upon a time", "The cat sat on the mat and", "Lily"]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (12, 20, 8)]
    log: list[tuple[str, int]] = []

    async def main() -> list[list[RequestOutput]]:
        return await asyncio.gather(*(collect(engine, f"r{i}", p, sp, log)
                                      for i, (p, sp) in enumerate(zip(prompts, params, strict=True))))

    results = asyncio.run(main())
    # Continuous batching: every request produced tokens before the first one finished.
    first_done = next(i for i, (rid, n) in enumerate(log) if n == 8 and rid == "r2")
    assert {rid for rid, _ in log[:first_done]} == {"r0", "r1", "r2"}
    expected = engine.generate(prompts, params)
    for outs, want in zip(results, expected, strict=True):
        final = outs[-1]
        assert final.finished and all(not o.finished for o in outs[:-1])
        seq = final.outputs[0]
        assert seq.token_ids == want.outputs[0].token_ids
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == seq.token_ids
        assert "".join(o.outputs[0].delta_text for o in outs) == seq.text == want.outputs[0].text
    assert_all_blocks_free(engine)


def test_final_only_streams_yield_one_finished_output_equal_to_generate(engine: NativeEngine) -> None:
    """A whole reply's stream (`final_only`) hands over one output, all of it in the delta, beside a per-step stream
    of the same request; a stop string still ends it."""
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    want = engine.generate(["Once upon a time"], params)[0].outputs[0]
    stop = want.text[8:11]

    async def main() -> tuple[list[RequestOutput], list[RequestOutput], list[RequestOutput]]:
        final_only = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, final_only=True)
        stopped = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, final_only=True, stop=[stop])
        return await asyncio.gather(collect(engine, "whole", "Once upon a time", final_only, []),
                                    collect(engine, "steps", "Once upon a time", params, []),
                                    collect(engine, "stop", "Once upon a time", stopped, []))

    whole, steps, stopped = asyncio.run(main())
    assert len(whole) == 1 and whole[0].finished and len(steps) == 20
    (seq,) = whole[0].outputs
    assert seq.delta_token_ids == seq.token_ids == want.token_ids and seq.delta_text == seq.text == want.text
    assert len(stopped) == 1 and stopped[0].outputs[0].text == want.text[:want.text.index(stop)]
    assert stopped[0].outputs[0].finish_reason == "stop"
    assert_all_blocks_free(engine)


def test_stream_holds_back_text_that_may_become_a_stop_string(engine: NativeEngine) -> None:
    base = engine.generate(["Once upon a time"], SamplingParams(max_tokens=30, temperature=0))[0].outputs[0].text
    stop = next(base[i:i + 4] for i in range(10, len(base) - 4) if "\ufffd" not in base[i:i + 4])

    async def main() -> list[RequestOutput]:
        return await collect(engine, "s", "Once upon a time", SamplingParams(max_tokens=30, temperature=0,
                                                                             stop=[stop]), [])

    outs = asyncio.run(main())
    streamed = "".join(o.outputs[0].delta_text for o in outs)
    assert streamed == outs[-1].outputs[0].text == base[:base.index(stop)]
    assert all(stop not in o.outputs[0].text for o in outs)
    assert outs[-1].outputs[0].finish_reason == "stop"


def test_abort_and_dropped_consumers_free_their_blocks(engine: NativeEngine) -> None:
    long = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)

    async def aborted() -> RequestOutput:
        last = None
        async for out in engine.stream("a", "Once upon a time there was", long):
            last = out
            if len(out.outputs[0].token_ids) == 3:
                await engine.abort("a")
        return last

    async def dropped() -> int:
        n = 0
        async for _ in engine.stream("b", "The little dog", long):
            n += 1
            if n == 2:
                break
        return n

    async def cancelled() -> None:
        async for _ in engine.stream("c", "A big red ball", long):
            await asyncio.sleep(10)

    async def main() -> tuple[RequestOutput, int, list[int]]:
        task = asyncio.create_task(cancelled())
        a, b = await asyncio.gather(aborted(), dropped())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # let the engine apply the aborts
        await engine.abort("never-existed")  # a no-op
        return a, b, [engine.stats().num_blocks_used]

    last, n, _ = asyncio.run(main())
    assert last.finished and last.outputs[0].finish_reason == "abort"
    assert len(last.outputs[0].token_ids) < 60 and n == 2
    assert_all_blocks_free(engine)
    # The engine keeps working afterwards, also in a new event loop.
    out = engine.generate(["Once"], SamplingParams(max_tokens=3, temperature=0))[0]
    assert len(out.outputs[0].token_ids) == 3
    assert_all_blocks_free(engine)


def test_stream_of_n_completions_and_duplicate_ids(engine: NativeEngine) -> None:
    async def main() -> list[RequestOutput]:
        stream = engine.stream("multi", "Once upon", SamplingParams(n=2, max_tokens=5, seed=1))
        # Holding the step lock keeps the first request live while the duplicate arrives: without it, a busy
        # machine's consumer can see the first output only after the engine thread has finished all 5 tokens.
        with engine.core._step_lock:
            first = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)  # the first request is added
            with pytest.raises(ConfigError, match="already live"):
                async for _ in engine.stream("multi", "x", SamplingParams()):
                    pass
        outs = [await first]
        outs += [out async for out in stream]
        return outs

    outs = asyncio.run(main())
    final = outs[-1]
    assert final.finished and [c.index for c in final.outputs] == [0, 1]
    assert all(len(c.token_ids) == 5 and c.finish_reason == "length" for c in final.outputs)
    for i in range(2):
        assert [t for o in outs for t in o.outputs[i].delta_token_ids] == final.outputs[i].token_ids
    assert_all_blocks_free(engine)
