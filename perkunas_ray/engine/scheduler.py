"""Continuous batching under a token budget: running requests first, then waiting ones, chunked prefill,
preemption by recompute when blocks run out; emits a `SchedulerOutput` per step.
"""

from __future__ import annotations

import dataclasses
from collections import deque

from perkunas_ray.engine.interface import KVPolicy
from perkunas_ray.engine.kv_cache_manager import KVCacheManager
from perkunas_ray.engine.request import Request, RequestStatus


@dataclasses.dataclass
class ScheduledRequest:
    """One request's share of a step: compute `num_new_tokens` tokens after `num_computed_tokens`."""

    request: Request
    num_computed_tokens: int
    num_new_tokens: int
    block_ids: list[int]  # the block table after allocation (NULL_BLOCK_ID where pruned)

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so its logits give the next token."""
        return self.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclasses.dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_batched_tokens: int
    preempted_request_ids: list[str]

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, policy: KVPolicy, kv_manager: KVCacheManager) -> None:
        self.policy = policy
        self.kv_manager = kv_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already live")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        budget = self.policy.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        kv = self.kv_manager

        # 1. Running requests (decodes, and prefills already under way) keep their place.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while kv.allocate_slots(request, num_new) is None:
                victim = self.running.pop()  # the latest admitted, never one already scheduled this step
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    break
            else:
                scheduled.append(ScheduledRequest(request, request.num_computed_tokens, num_new,
                                                  list(kv.block_ids(request.request_id))))
                budget -= num_new
                i += 1

        # 2. Waiting requests, oldest (and preempted ones) first, unless this step had to preempt.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.policy.max_num_seqs:
            request = self.waiting[0]
            hit_block_ids, num_hit_tokens = kv.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_hit_tokens, budget)
            if kv.allocate_slots(request, num_new, hit_block_ids) is None:
                break
            kv.record_prefix_lookup(request.num_tokens, num_hit_tokens)
            self.waiting.popleft()
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            request.num_computed_tokens = num_hit_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(ScheduledRequest(request, num_hit_tokens, num_new,
                                              list(kv.block_ids(request.request_id))))
            budget -= num_new

        return SchedulerOutput(scheduled, self.policy.max_num_batched_tokens - budget, preempted)

    def _preempt(self, request: Request) -> None:
        """Preemption by recompute: drop the KV, keep the tokens, queue it first in line."""
        self.kv_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def update_from_output(self, output: SchedulerOutput) -> None:
        """Advance each scheduled request past the tokens just computed; prune when the policy says so."""
        prune = self.policy.pruning == "sink_window"
        for item in output.scheduled:
            request = item.request
            request.num_computed_tokens = item.num_computed_tokens + item.num_new_tokens
            if prune:
                self.kv_manager.prune(request, self.policy.sink_tokens, self.policy.window_tokens)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """Stop a request (stopped, length or aborted) and give its blocks back. Unknown ids are ignored."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        request.status = status
        self.kv_manager.free(request)
        return request
