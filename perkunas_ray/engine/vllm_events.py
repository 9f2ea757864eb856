"""vLLM's KV cache events (ZMQ) translated into our `KVEvent`s, keyed by OUR chained block hashes.

How the keys match the router's: vLLM hashes a block with its own scheme (sha256 of a pickle, or a
random per-process seed), which the router cannot recompute from a prompt. But every `BlockStored`
carries what our scheme needs: the token ids of the stored blocks, their vLLM hashes, the vLLM hash of
the parent block (None: the blocks start at the sequence's first token) and the block size. So for
each stored block we compute `hash_block(parent's OUR hash, its block_size token ids)` (the parent of a
first block is `ROOT_PARENT_HASH`), exactly as `block_hashes(prompt_token_ids, block_size)` chains them
for the router, and remember vLLM hash -> our hash. A `BlockRemoved` is translated through that map
(and drops the entry once the last cached copy of that block is gone); `AllBlocksCleared` becomes "cleared" and empties it. A stored block whose
parent is unknown (its store event was lost) cannot be keyed and is skipped: the router then merely
misses that prefix on this replica.

Transport: vLLM's engine core publishes `KVEventBatch`es on a ZMQ PUB socket. Our SUB socket binds a
free loopback port first and vLLM's publisher connects to it (vLLM binds only endpoints with `*`), so
two engines on one machine never race for a port.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from perkunas_ray.engine.block_hash import ROOT_PARENT_HASH, hash_block
from perkunas_ray.engine.interface import KVEvent

logger = logging.getLogger(__name__)

# Where a block lives: events of offloading tiers (CPU / storage connectors) are not our prefix cache.
DEVICE_MEDIA = (None, "GPU")


class KVEventTranslator:
    """vLLM KV events -> our KVEvents (plain Python: fed vLLM's event objects, no engine needed)."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.ours: dict[Any, int] = {}  # vLLM block hash -> our chained hash
        # Blocks cached under one vLLM hash: two requests computing the same block at once each store a copy
        # (one event each), and each copy is evicted alone; the key leaves the router with the last one.
        self.copies: dict[Any, int] = {}
        self.num_stored = 0
        self.num_removed = 0
        self.num_skipped = 0  # stored blocks with an unknown parent, or of another block size

    def translate(self, events: Iterable[Any]) -> list[KVEvent]:
        from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

        out: list[KVEvent] = []
        for event in events:
            if isinstance(event, BlockStored) and event.medium in DEVICE_MEDIA:
                stored = self._stored(event)
                if stored:
                    out.append(KVEvent("stored", stored))
            elif isinstance(event, BlockRemoved) and event.medium in DEVICE_MEDIA:
                removed = [h for h in (self._release(v) for v in event.block_hashes) if h is not None]
                self.num_removed += len(removed)
                if removed:
                    out.append(KVEvent("removed", removed))
            elif isinstance(event, AllBlocksCleared):
                self.ours.clear()
                self.copies.clear()
                out.append(KVEvent("cleared", []))
        return out

    def _release(self, vllm_hash: Any) -> int | None:
        """Our hash of an evicted block when it was its last cached copy, else None."""
        left = self.copies.get(vllm_hash, 0) - 1
        if left > 0:
            self.copies[vllm_hash] = left
            return None
        self.copies.pop(vllm_hash, None)
        return self.ours.pop(vllm_hash, None)

    def _stored(self, event: Any) -> list[int]:
        size = int(event.block_size)
        if size != self.block_size or len(event.token_ids) != size * len(event.block_hashes):
            # Not blocks of our size (another KV cache group): the router's hashes could never match them.
            self.num_skipped += len(event.block_hashes)
            return []
        if event.parent_block_hash is None:
            parent = ROOT_PARENT_HASH
        elif event.parent_block_hash in self.ours:
            parent = self.ours[event.parent_block_hash]
        else:
            self.num_skipped += len(event.block_hashes)
            return []
        stored = []
        for i, vllm_hash in enumerate(event.block_hashes):
            parent = hash_block(parent, event.token_ids[i * size:(i + 1) * size])
            self.ours[vllm_hash] = parent
            self.copies[vllm_hash] = self.copies.get(vllm_hash, 0) + 1
            stored.append(parent)
        self.num_stored += len(stored)
        return stored


class KVEventSubscriber:
    """A daemon thread receiving vLLM's event batches on a bound SUB socket; `drain` translates what came."""

    def __init__(self, block_size: int, topic: str = "kv-events") -> None:
        import zmq

        self.topic = topic
        self.translator = KVEventTranslator(block_size)
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sub.setsockopt(zmq.RCVHWM, 0)  # never drop a batch: a lost removal would leave a stale key
        port = self._sub.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._lock = threading.Lock()
        self._pending: list[Any] = []
        self._last_seq = -1
        self.num_missed_batches = 0
        self._running = True
        self._thread = threading.Thread(target=self._receive, name="vllm-kv-events", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        import msgspec
        import zmq
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        while self._running:
            try:
                if not poller.poll(200):
                    continue
                _, seq_bytes, payload = self._sub.recv_multipart()
            except zmq.ZMQError:  # closed by `close`
                return
            seq = int.from_bytes(seq_bytes, "big")
            if self._last_seq >= 0 and seq != self._last_seq + 1:
                self.num_missed_batches += seq - self._last_seq - 1
                logger.warning("vLLM KV events: missed %d batch(es) before seq %d", seq - self._last_seq - 1, seq)
            self._last_seq = seq
            batch = decoder.decode(payload)
            with self._lock:
                self._pending.extend(batch.events)

    def drain(self) -> list[Any]:
        """Translated events received since the previous call."""
        with self._lock:
            pending, self._pending = self._pending, []
        return self.translator.translate(pending)

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=1.0)
        self._sub.close(linger=0)
        self._ctx.term()
