"""A request as the scheduler and KV manager see it: token ids, progress, status; no tensors."""

from __future__ import annotations

import enum
from typing import Any

from perkunas_ray.engine.block_hash import ROOT_PARENT_HASH, hash_block
from perkunas_ray.engine.interface import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_ABORTED)


class Request:
    """One sequence to generate. `n > 1` completions of a prompt are `n` Requests sharing `group_id`."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | None = None,
                 group_id: str | None = None, index: int = 0, share_prefix_with: str | None = None,
                 generator: Any = None) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r} has an empty prompt")
        self.request_id = request_id
        self.group_id = request_id if group_id is None else group_id
        self.index = index  # which of the group's n completions
        self.params = params if params is not None else SamplingParams()
        self.prompt_token_ids = list(prompt_token_ids)
        self.all_token_ids = list(prompt_token_ids)  # prompt + output, grows as tokens are sampled
        self.num_prompt_tokens = len(prompt_token_ids)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose KV is in (or being written to) the cache
        self.num_cached_tokens = -1  # prompt tokens served by the prefix cache, set on first schedule
        self.num_preemptions = 0
        # A sibling whose blocks this one may share when prefix caching is off (n > 1 completions).
        self.share_prefix_with = share_prefix_with
        self.generator = generator  # the sampler's per-request torch.Generator
        self.has_pruned = False  # once sink+window pruning dropped blocks, later blocks are not cacheable
        self.block_hashes: list[int] = []

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)

    def update_block_hashes(self, block_size: int) -> list[int]:
        """Extend the chained hashes to every full block of `all_token_ids`; returns them all."""
        num_full = len(self.all_token_ids) // block_size
        parent = self.block_hashes[-1] if self.block_hashes else ROOT_PARENT_HASH
        for j in range(len(self.block_hashes), num_full):
            parent = hash_block(parent, self.all_token_ids[j * block_size:(j + 1) * block_size])
            self.block_hashes.append(parent)
        return self.block_hashes

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
                f"status={self.status.value})")
