"""A conversation -> token ids and the label mask: the assistant's content and its end token are trained."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from perkunas_ray.chat_template import CHAT_TEMPLATE, ROLES, render_chat
from perkunas_ray.errors import DataError


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def render_sample(messages: list[dict[str, str]], tokenizer: Tokenizer, where: str,
                  template: str = CHAT_TEMPLATE) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, trained) of the rendered conversation. An assistant turn's trained tokens are exactly what
    the model must generate after the template's generation prompt: the render of the conversation up to
    and including the turn, less the render of the turns before it plus the generation prompt. Role tokens,
    system and user turns stay untrained."""
    for message in messages:
        role = message["role"]
        if role not in ROLES or tokenizer.token_to_id(f"<|{role}|>") is None:
            raise DataError(f"{where}: role {role!r} is not one the chat template knows ({', '.join(ROLES)})")
    ids = _encode(tokenizer, render_chat(messages, add_generation_prompt=False, template=template))
    trained = np.zeros(len(ids), dtype=bool)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _encode(tokenizer, render_chat(messages[:turn], add_generation_prompt=True, template=template))
        upto = _encode(tokenizer, render_chat(messages[:turn + 1], add_generation_prompt=False, template=template))
        if ids[:len(upto)] != upto or upto[:len(prompt)] != prompt:  # role tokens split the text, so it holds
            raise DataError(f"{where}: turn {turn} does not tokenize as a prefix of the conversation; "
                            f"the template or tokenizer splits turns across role tokens")
        trained[len(prompt):len(upto)] = True
    return np.asarray(ids, dtype=np.int64), trained
