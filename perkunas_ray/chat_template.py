"""The chat format shared by SFT, export (tokenizer_config.json) and serving: role tokens, `<|end|>` closes a turn."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

# A Jinja template in the form transformers' apply_chat_template and vLLM read.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                template: str = CHAT_TEMPLATE) -> str:
    """Render messages with a Jinja chat template (sandboxed, as transformers does)."""
    return _compiled(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt)


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    """Compiled once per template: SFT renders every record's turns, and compiling dominates a render."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
