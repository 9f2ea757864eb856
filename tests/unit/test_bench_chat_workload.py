"""The routing bench's chat workload: shared system prompts, turns that extend the conversation, exact counts."""

from __future__ import annotations

import pytest

from perkunas_ray.bench.chat_workload import ChatWorkloadSpec, chat_workload
from perkunas_ray.bench.kvserve_chat import context_for

pytestmark = pytest.mark.unit


def test_conversations_share_system_prompts_and_extend_turn_by_turn() -> None:
    spec = ChatWorkloadSpec(num_system_prompts=3, system_tokens=50, conversations_per_prompt=2, num_turns=3,
                            user_tokens=7, assistant_tokens=5)
    conversations = chat_workload(spec, vocab_size=300, seed=1)
    assert len(conversations) == 6
    assert [c.system_prompt_id for c in conversations] == [0, 1, 2, 0, 1, 2]  # neighbours differ
    for c in conversations:
        assert [len(t) for t in c.turns] == [57, 69, 81]  # + assistant 5 + user 7 per turn
        for previous, turn in zip(c.turns, c.turns[1:], strict=False):
            assert turn[:len(previous)] == previous  # a follow-up re-sends the whole conversation
        assert all(0 < t < 300 for t in c.turns[-1])
    systems = {c.system_prompt_id: c.turns[0][:50] for c in conversations}
    assert len({tuple(s) for s in systems.values()}) == 3
    for c in conversations:
        assert c.turns[0][:50] == systems[c.system_prompt_id]
    # Conversations of one system prompt part right after it: their own turns are not shared.
    assert conversations[0].turns[0][50:] != conversations[3].turns[0][50:]
    assert spec.max_prompt_tokens() == 81
    assert spec.distinct_prompt_tokens() == 3 * (50 + 2 * 31)
    assert chat_workload(spec, 300, seed=1) == conversations  # seeded: every router gets the same workload


def test_default_workload_fits_the_widened_context() -> None:
    spec = ChatWorkloadSpec()
    assert spec.system_tokens == 1000 and spec.num_system_prompts == 8
    assert context_for(spec, 16) == 2048 >= spec.max_prompt_tokens() + 16
    assert context_for(ChatWorkloadSpec(1, 100, 1, 1, 10, 10), 16) == 256
