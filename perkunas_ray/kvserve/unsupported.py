"""Request fields this server does not implement: sent with an effect, they are a 400 naming the field (a
silent 200 would hand back output the caller did not ask for)."""

from __future__ import annotations

from typing import Any

from perkunas_ray.kvserve.errors import bad_request

# field -> the values that change nothing (accepted, as a client may always send them)
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    # OpenAI
    "logit_bias": (None, {}), "best_of": (None, 1), "suffix": (None, ""),
    "response_format": (None, {"type": "text"}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "functions": (None, []), "function_call": (None, "none", "auto"), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "web_search_options": (None,),
    # vLLM extras
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "guided_grammar": (None,),
    "structured_outputs": (None,), "min_tokens": (None, 0), "use_beam_search": (None, False),
    "length_penalty": (None, 1.0), "prompt_logprobs": (None,), "allowed_token_ids": (None,),
    "bad_words": (None, []), "truncate_prompt_tokens": (None,), "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True), "spaces_between_special_tokens": (None, True),
}


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (JSON true is not 1)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def check_supported(body: dict[str, Any]) -> None:
    """400 for the first unsupported field sent with a value that would change the output."""
    for field, neutral in UNSUPPORTED.items():
        if field not in body:
            continue
        value = body[field]
        if any(_same(value, ok) for ok in neutral) or (field == "best_of" and _same(value, body.get("n", 1))):
            continue
        raise bad_request(f"{field} is not supported by this server (send it unset or null)", param=field,
                          code="unsupported_parameter")
