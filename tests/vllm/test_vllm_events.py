"""vLLM's KV events (its own event classes) become our KVEvents keyed by the hashes the router computes from a prompt."""

from __future__ import annotations

from perkunas_ray.engine.block_hash import block_hashes
from perkunas_ray.engine.vllm_events import KVEventTranslator

BLOCK = 4


def stored(hashes: list[bytes], parent: bytes | None, token_ids: list[int], block_size: int = BLOCK):  # type: ignore[no-untyped-def]
    from vllm.distributed.kv_events import BlockStored

    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=token_ids, block_size=block_size,
                       lora_id=None, medium="GPU", lora_name=None)


def removed(hashes: list[bytes]):  # type: ignore[no-untyped-def]
    from vllm.distributed.kv_events import BlockRemoved

    return BlockRemoved(block_hashes=hashes, medium="GPU")


def test_stored_blocks_get_the_routers_hashes_across_events() -> None:
    """A prompt stored in two events (a prefix, then the rest chained on its last block) keys as the whole prompt."""
    prompt = list(range(100, 112))  # three blocks
    t = KVEventTranslator(BLOCK)
    first = t.translate([stored([b"a", b"b"], None, prompt[:8])])
    second = t.translate([stored([b"c"], b"b", prompt[8:])])
    assert [e.kind for e in first + second] == ["stored", "stored"]
    assert first[0].block_hashes + second[0].block_hashes == block_hashes(prompt, BLOCK)


def test_removals_and_clear_translate_through_the_map() -> None:
    from vllm.distributed.kv_events import AllBlocksCleared, KVEventBatch

    prompt = list(range(1, 9))
    ours = block_hashes(prompt, BLOCK)
    t = KVEventTranslator(BLOCK)
    # A batch as the subscriber decodes it: the events go through in order.
    batch = KVEventBatch(ts=0.0, events=[stored([b"x", b"y"], None, prompt), removed([b"y", b"unknown"])])
    events = t.translate(batch.events)
    assert [(e.kind, e.block_hashes) for e in events] == [("stored", ours), ("removed", [ours[1]])]
    assert t.translate([removed([b"y"])]) == []  # already gone: nothing to tell
    # A child of an evicted (unknown) parent cannot be keyed: skipped, not guessed.
    assert t.translate([stored([b"z"], b"y", [9, 9, 9, 9])]) == []
    assert t.num_skipped == 1
    assert [e.kind for e in t.translate([AllBlocksCleared()])] == ["cleared"]
    assert t.ours == {} and t.translate([removed([b"x"])]) == []


def test_a_block_cached_twice_leaves_with_its_last_copy() -> None:
    prompt = [7, 7, 7, 7]
    t = KVEventTranslator(BLOCK)
    t.translate([stored([b"h"], None, prompt), stored([b"h"], None, prompt)])  # two requests computed it at once
    assert t.translate([removed([b"h"])]) == []
    assert [(e.kind, e.block_hashes) for e in t.translate([removed([b"h"])])] == [("removed", block_hashes(prompt, 4))]


def test_blocks_of_another_size_or_medium_are_ignored() -> None:
    t = KVEventTranslator(BLOCK)
    assert t.translate([stored([b"q"], None, list(range(8)), block_size=8)]) == []
    from vllm.distributed.kv_events import BlockStored

    offloaded = BlockStored(block_hashes=[b"r"], parent_block_hash=None, token_ids=[1, 2, 3, 4], block_size=BLOCK,
                            lora_id=None, medium="CPU", lora_name=None)
    assert t.translate([offloaded]) == [] and t.ours == {}
