"""KVAwareRequestRouter: a Serve custom request router over the plain `RoutingPolicy` + `PrefixIndex`.

Cache contents come from each replica's `record_routing_stats` (its KV-event mirror), which Serve's
controller polls and broadcasts; `update_replicas` receives them with the replica list. Load is the
number of requests this router has in flight per replica (`on_send_request` / `on_request_completed`).
Nothing here blocks: choose_replicas only reads local state.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict, defaultdict
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from perkunas_ray.engine.block_hash import block_hashes
from perkunas_ray.kvserve.metrics import RouterMetrics
from perkunas_ray.kvserve.routing import PrefixIndex, RoutingPolicy

ROUTED_METHODS = ("stream", "complete")  # the calls that carry a prompt


def router_views(deployment: str) -> list[dict[str, Any]]:
    """The views of this process's KV routers of `deployment` (the ingress shows them in /kvserve/stats)."""
    return [r.view() for r in list(LIVE_ROUTERS) if r._deployment_id.name == deployment]


class KVAwareRequestRouter(RequestRouter):
    """Serve makes one per DeploymentHandle in the caller's process (here: the ingress)."""

    def initialize_state(self, imbalance_threshold: int = 4, optimistic_ttl_s: float = 3.0, block_size: int = 16,
                         **_: Any) -> None:
        self.policy = RoutingPolicy(imbalance_threshold)
        self.index = PrefixIndex(optimistic_ttl_s)
        self.block_size = block_size
        self.inflight: defaultdict[str, int] = defaultdict(int)
        self.metrics = RouterMetrics(deployment=self._deployment_id.name)
        self._counted: OrderedDict[str, None] = OrderedDict()
        self.num_decisions: defaultdict[str, int] = defaultdict(int)
        # Serve hands this class to the caller pickled by value: its globals are a copy of this module's, so the
        # instance registers in the module the ingress imports.
        import deployments.router as home

        home.LIVE_ROUTERS.add(self)

    def _ensure_state(self) -> None:
        if not hasattr(self, "index"):  # initialize_state not called (no kwargs): defaults
            self.initialize_state()

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._ensure_state()
        for replica in replicas:
            stats = replica.routing_stats or {}
            if "kv_hashes" in stats:
                self.index.update_snapshot(replica.replica_id.unique_id, stats["kv_hashes"], stats.get("kv_seq"))
                self.block_size = int(stats.get("block_size", self.block_size))
        self.index.retain(r.replica_id.unique_id for r in replicas)

    def on_replica_actor_died(self, replica_id: Any) -> None:
        """A replica gone (its node lost, say): forget its cached blocks and load now, not at the controller's
        next broadcast, so no prompt is steered to a replica that holds nothing anymore."""
        super().on_replica_actor_died(replica_id)
        self._ensure_state()
        self.index.remove_replica(replica_id.unique_id)
        self.inflight.pop(replica_id.unique_id, None)

    def view(self) -> dict[str, Any]:
        """What this router knows now: the replicas it routes to and the cached blocks it holds for each."""
        self._ensure_state()
        return {"replicas": sorted(r.unique_id for r in self.curr_replicas),
                "cached_blocks": {r: self.index.num_blocks(r) for r in self.index.replicas()}}

    def on_send_request(self, replica_id: Any) -> None:
        super().on_send_request(replica_id)
        self._ensure_state()
        self.inflight[replica_id.unique_id] += 1

    def on_request_completed(self, replica_id: Any, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self._ensure_state()
        key = replica_id.unique_id
        self.inflight[key] = max(0, self.inflight[key] - 1)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        self._ensure_state()
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        token_ids = None
        routed = pending_request is not None and pending_request.metadata.call_method in ROUTED_METHODS
        if routed:
            token_ids = pending_request.kwargs.get("prompt_token_ids")
        hashes = block_hashes(token_ids, self.block_size) if token_ids else []
        decision = self.policy.choose(hashes, list(by_id), self.inflight, self.index)
        if routed:
            request_key = pending_request.metadata.internal_request_id
            if request_key not in self._counted:  # choose_replicas repeats while replicas are full
                self._counted[request_key] = None
                if len(self._counted) > 10_000:
                    self._counted.popitem(last=False)
                self.metrics.decision(decision.kind, self._deployment_id.name)
                self.num_decisions[decision.kind] += 1
            if hashes:
                self.index.note_routed(decision.replica_id, hashes)
        return [[by_id[r]] for r in decision.ranked]


LIVE_ROUTERS: weakref.WeakSet[KVAwareRequestRouter] = weakref.WeakSet()  # this process's routers, for router_views
