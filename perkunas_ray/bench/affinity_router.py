"""Ray Serve LLM's PrefixCacheAffinityRouter over our EngineServer deployments, for the routing bench.

Its prefix tree is fed the text of the request's first positional argument that has `.prompt` or `.messages`
(an OpenAI request object, as Ray Serve LLM's ingress passes it). Our ingress calls the engine with keywords
only (request_id, prompt_token_ids, params), so unchanged it never finds a prompt and silently degrades to
power of two choices. This subclass shows it the prompt's token ids instead, one character per token: its
character-prefix tree then matches token prefixes, which is what the engine's cache keys on. Its algorithm,
thresholds and prefix tree actor are Ray's, unchanged.
"""

from __future__ import annotations

import types
from typing import Any

from ray.serve.llm.request_router import PrefixCacheAffinityRouter

ROUTED_METHODS = ("stream", "complete")  # the calls that carry a prompt
CHAR_OFFSET = 0x100  # past ASCII and Latin-1, so no token id becomes a control character


def prompt_text(token_ids: list[int]) -> str:
    return "".join(chr(CHAR_OFFSET + t) for t in token_ids)


def _with_prompt_arg(pending_request: Any) -> Any:
    """A view of the request with the prompt where the router looks for it (no args: the request as it is)."""
    if pending_request is None or pending_request.metadata.call_method not in ROUTED_METHODS:
        return pending_request
    token_ids = pending_request.kwargs.get("prompt_token_ids")
    if not token_ids:
        return pending_request
    return types.SimpleNamespace(args=[types.SimpleNamespace(prompt=prompt_text(token_ids))],
                                 kwargs=pending_request.kwargs, metadata=pending_request.metadata)


class TokenPrefixAffinityRouter(PrefixCacheAffinityRouter):
    async def _prefix_match_best_replicas(self, pending_request: Any, candidate_replicas: list[Any]) -> list[Any]:
        return await super()._prefix_match_best_replicas(_with_prompt_arg(pending_request), candidate_replicas)

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        super().on_request_routed(_with_prompt_arg(pending_request), replica_id, result)
