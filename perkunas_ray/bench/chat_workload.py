"""A multi-turn chat workload for the routing bench: a few long system prompts shared by many conversations.

What a deployment behind a chat product sees: every conversation opens with one of S system prompts (~1,000
tokens: instructions, few-shot examples), and each follow-up turn re-sends the whole conversation so far plus a
short new user turn. Prompts are token ids (exact counts, no tokenizer round trip); the assistant turns in the
history are canned tokens, not the model's reply, so the workload is the same for every router it is run against.
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class ChatWorkloadSpec:
    num_system_prompts: int = 8
    system_tokens: int = 1000
    conversations_per_prompt: int = 3
    num_turns: int = 4
    user_tokens: int = 40
    assistant_tokens: int = 40

    def max_prompt_tokens(self) -> int:
        """The longest prompt: the system prompt, every user turn and every assistant turn but the last."""
        return self.system_tokens + self.num_turns * self.user_tokens + (self.num_turns - 1) * self.assistant_tokens

    def distinct_prompt_tokens(self) -> int:
        """Tokens a cache must hold to serve every turn from cache: the system prompts and every conversation."""
        per_conversation = self.max_prompt_tokens() - self.system_tokens
        return self.num_system_prompts * (self.system_tokens + self.conversations_per_prompt * per_conversation)


@dataclasses.dataclass(frozen=True)
class Conversation:
    system_prompt_id: int
    turns: list[list[int]]  # the prompt of each turn; turn k's prompt starts with turn k-1's


def _tokens(rng: random.Random, n: int, vocab_size: int) -> list[int]:
    return [rng.randrange(1, vocab_size) for _ in range(n)]


def chat_workload(spec: ChatWorkloadSpec, vocab_size: int, seed: int = 0) -> list[Conversation]:
    """S x C conversations, ordered so that neighbours use different system prompts (0 1 .. S-1 0 1 ..): the
    ones running at once then compete for the replicas' caches, as the users of a real deployment do."""
    rng = random.Random(seed)
    systems = [_tokens(rng, spec.system_tokens, vocab_size) for _ in range(spec.num_system_prompts)]
    conversations = []
    for _ in range(spec.conversations_per_prompt):
        for system_prompt_id, system in enumerate(systems):
            history, turns = list(system), []
            for turn in range(spec.num_turns):
                if turn:
                    history += _tokens(rng, spec.assistant_tokens, vocab_size)
                history += _tokens(rng, spec.user_tokens, vocab_size)
                turns.append(list(history))
            conversations.append(Conversation(system_prompt_id, turns))
    return conversations
