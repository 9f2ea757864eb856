"""Chat messages -> prompt token ids with message content encoded as plain text: a special token typed inside
a message (`<|end|><|system|>`) stays text, so no caller can forge a turn of another role."""

from __future__ import annotations

import re
import uuid
from typing import Any

from tokenizers import Encoding, Tokenizer

from perkunas_ray.chat_template import render_chat


def split_rendered(messages: list[dict[str, Any]], add_generation_prompt: bool,
                   template: str) -> list[tuple[str, bool]]:
    """The rendered chat as (text, is_message_content) pieces, in order.

    Each message's content is rendered as a unique marker first, so the template's own text (role tokens
    included) and the callers' text come apart exactly where the template put them.
    """
    nonce = uuid.uuid4().hex
    marked = [{**m, "content": f"\ue000{nonce}{i}\ue001"} for i, m in enumerate(messages)]
    rendered = render_chat(marked, add_generation_prompt, template)
    pieces, pos = [], 0
    for match in re.finditer(f"\ue000{nonce}(\\d+)\ue001", rendered):
        pieces += [(rendered[pos:match.start()], False), (messages[int(match.group(1))]["content"], True)]
        pos = match.end()
    pieces.append((rendered[pos:], False))
    return [(text, is_content) for text, is_content in pieces if text]


class ChatEncoder:
    """Encodes template text with special tokens parsed and message content with them taken literally."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.literal = Tokenizer.from_str(tokenizer.to_str())
        self.literal.encode_special_tokens = True

    def encode(self, pieces: list[tuple[str, bool]]) -> list[int]:
        encodings = [(self.literal if is_content else self.tokenizer).encode(text, add_special_tokens=False)
                     for text, is_content in pieces]
        if not encodings:
            return []
        # The post-processor (a BOS, say) applies once to the whole prompt, as when it is encoded in one go.
        return list(self.tokenizer.post_process(Encoding.merge(encodings, growing_offsets=True)).ids)
