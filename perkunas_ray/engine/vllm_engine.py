"""VLLMEngine: the Engine interface on vLLM's AsyncLLM (GPU; needs the `vllm` extra, imported lazily)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from perkunas_ray.data.tokenizer import eos_token_id
from perkunas_ray.engine.block_hash import block_hashes
from perkunas_ray.engine.interface import (
    CompletionOutput,
    EngineStats,
    KVEvent,
    KVPolicy,
    RequestOutput,
    SamplingParams,
    params_per_prompt,
)
from perkunas_ray.errors import ConfigError, PerkunasError

VLLM_MISSING = "engine 'vllm' needs the vllm extra and a GPU (pip install 'perkunas-ray[vllm]')"


def vllm_engine_args(model_path: str, policy: KVPolicy, *, max_model_len: int | None = None, dtype: str = "auto",
                     gpu_memory_utilization: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """AsyncEngineArgs keywords for a KV policy.

    vLLM has no int8 KV cache: kv_dtype=int8 maps to kv_cache_dtype="fp8" (also 1 byte per value,
    per-tensor scales instead of our per-block-per-head ones). Sink+window pruning has no vLLM
    counterpart and is refused.
    """
    policy.validate()
    if policy.pruning != "none":
        raise ConfigError("kv_policy.pruning must be none for engine 'vllm' (vLLM has no sink+window pruning), "
                          f"got {policy.pruning!r}")
    args: dict[str, Any] = {
        "model": model_path, "tokenizer": model_path, "dtype": dtype, "seed": seed,
        "load_format": "safetensors",  # never unpickle weights a user handed us (.bin / .pt)
        "block_size": policy.block_size, "enable_prefix_caching": policy.enable_prefix_caching,
        "kv_cache_dtype": "fp8" if policy.kv_dtype == "int8" else "auto",
        "gpu_memory_utilization": gpu_memory_utilization, "max_num_seqs": policy.max_num_seqs,
        "max_num_batched_tokens": policy.max_num_batched_tokens, "enable_chunked_prefill": True,
    }
    if policy.num_blocks:
        args["num_gpu_blocks_override"] = policy.num_blocks
    if policy.kv_budget_bytes:
        args["kv_cache_memory_bytes"] = policy.kv_budget_bytes
    if max_model_len:
        args["max_model_len"] = max_model_len
    return args


def vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vllm.SamplingParams keywords (plus output_kind=DELTA, set by the caller)."""
    return {"n": params.n, "max_tokens": params.max_tokens, "temperature": params.temperature,
            "top_k": params.top_k if params.top_k > 0 else -1, "top_p": params.top_p, "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty, "seed": params.seed, "stop": list(params.stop),
            "stop_token_ids": list(params.stop_token_ids), "ignore_eos": params.ignore_eos,
            "logprobs": params.logprobs, "prompt_logprobs": params.prompt_logprobs}


class VLLMEngine:
    """AsyncLLM runs on a private event loop in a daemon thread, so `generate` (blocking) and `stream`
    (from any event loop) can share one engine. KV block statistics and KV events are not exposed by
    AsyncLLM's Python API: `stats` reports request counts only and `drain_kv_events` returns nothing;
    `block_hashes` uses our scheme, so a router can still match prompts across replicas.
    """

    def __init__(self, model_path: str | Path, policy: KVPolicy | None = None, *, max_model_len: int | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.9, seed: int = 0) -> None:
        try:
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise PerkunasError(VLLM_MISSING) from exc
        import torch
        from tokenizers import Tokenizer

        if not torch.cuda.is_available():
            raise PerkunasError(VLLM_MISSING)
        self.policy = (policy or KVPolicy()).validate()
        self.block_size = self.policy.block_size
        path = Path(model_path)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.eos_token_id = eos_token_id(self.tokenizer)
        self._vllm, self._delta = vllm, RequestOutputKind.DELTA
        args = vllm_engine_args(str(path), self.policy, max_model_len=max_model_len, dtype=dtype,
                                gpu_memory_utilization=gpu_memory_utilization, seed=seed)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True).start()

        async def make() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        self._llm = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self._num_live = 0
        self._ids = 0

    def _prompt(self, prompt: str | list[int]) -> Any:
        return prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}

    async def _pump(self, request_id: str, prompt: str | list[int], params: SamplingParams, sink: Any) -> None:
        """Runs on the private loop: forward AsyncLLM's delta outputs, made cumulative, to `sink`."""
        sp = self._vllm.SamplingParams(**vllm_sampling_kwargs(params), output_kind=self._delta)
        tokens: dict[int, list[int]] = {}
        texts: dict[int, str] = {}
        logprobs: dict[int, list[dict[int, float]]] = {}
        self._num_live += 1
        try:
            async for out in self._llm.generate(self._prompt(prompt), sp, request_id):
                outputs = []
                for c in out.outputs:
                    tokens.setdefault(c.index, []).extend(c.token_ids)
                    texts[c.index] = texts.get(c.index, "") + c.text
                    if c.logprobs is not None:
                        logprobs.setdefault(c.index, []).extend(
                            {tid: lp.logprob for tid, lp in step.items()} for step in c.logprobs)
                    outputs.append(CompletionOutput(
                        index=c.index, token_ids=list(tokens[c.index]), text=texts[c.index],
                        finish_reason=c.finish_reason, logprobs=logprobs.get(c.index),
                        delta_token_ids=list(c.token_ids), delta_text=c.text, stop_reason=c.stop_reason))
                prompt_logprobs = None if out.prompt_logprobs is None else [
                    None if step is None else {tid: lp.logprob for tid, lp in step.items()}
                    for step in out.prompt_logprobs]
                sink(RequestOutput(request_id=request_id, prompt_token_ids=list(out.prompt_token_ids or []),
                                   num_cached_tokens=int(out.num_cached_tokens or 0), outputs=outputs,
                                   finished=out.finished, prompt_logprobs=prompt_logprobs))
        except BaseException as exc:  # cancellation included: the caller went away
            sink(exc)
            raise
        finally:
            self._num_live -= 1

    async def stream(self, request_id: str, prompt: str | list[int],
                     params: SamplingParams) -> AsyncIterator[RequestOutput]:
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        future = asyncio.run_coroutine_threadsafe(
            self._pump(request_id, prompt, params, lambda item: caller.call_soon_threadsafe(queue.put_nowait, item)),
            self._loop)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                future.cancel()  # AsyncLLM.generate aborts the request when cancelled

    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        params_list = params_per_prompt(params, len(prompts))

        async def run_all() -> list[RequestOutput]:
            results: list[Any] = [None] * len(prompts)

            async def one(i: int) -> None:
                def keep(item: Any) -> None:
                    if not isinstance(item, BaseException):
                        results[i] = item
                await self._pump(f"generate-{self._ids}-{i}", prompts[i], params_list[i], keep)

            self._ids += 1
            await asyncio.gather(*(one(i) for i in range(len(prompts))))
            return results

        return asyncio.run_coroutine_threadsafe(run_all(), self._loop).result()

    async def abort(self, request_id: str) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._llm.abort(request_id), self._loop))

    def stats(self) -> EngineStats:
        return EngineStats(num_running=self._num_live, num_waiting=0, num_blocks_total=0, num_blocks_used=0,
                           num_blocks_free=0, num_blocks_cached=0, prefix_cache_queries_tokens=0,
                           prefix_cache_hits_tokens=0, num_preemptions=0, block_size=self.block_size)

    def drain_kv_events(self) -> list[KVEvent]:
        return []

    def block_hashes(self, token_ids: list[int]) -> list[int]:
        return block_hashes(token_ids, self.block_size)
