"""Incremental detokenisation: streaming decodes only the new token, and the text equals a full decode."""

from __future__ import annotations

import pytest

from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.engine.output_processor import OutputProcessor, RequestState, SequenceState
from perkunas_ray.engine.request import Request

TEXTS = ["Hello émoji 🦙 ünïcode 日本語 end", "🦙🦙🦙", "plain ascii text", "ß", "a<|endoftext|>b"]


def _stream(tokenizer, token_ids: list[int], stop: list[str] | None = None) -> tuple[SequenceState, list[str]]:
    """Feed `token_ids` through the output processor as the engine does while streaming; the deltas it emits."""
    params = SamplingParams(max_tokens=len(token_ids), ignore_eos=True, stop=stop or [])
    seq = SequenceState(Request("r", [1, 2, 3], params))
    state = RequestState("r", [1, 2, 3], params, [seq])
    processor = OutputProcessor(tokenizer, eos_token_id=0, max_model_len=4096)
    deltas = []
    for token_id in token_ids:
        processor.append_token(seq, token_id, None, incremental_text=True)
        deltas.append(processor.make_output(state).outputs[0].delta_text)
        if seq.finish_reason is not None:
            break
    return seq, deltas


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_a_full_decode(tokenizer, text):
    token_ids = tokenizer.encode(text).ids
    seq, deltas = _stream(tokenizer, token_ids)
    full = tokenizer.decode(token_ids, skip_special_tokens=True)
    assert "".join(deltas) == full
    assert seq.text == full


def test_multibyte_character_split_across_tokens_is_held_back_until_complete(tokenizer):
    token_ids = tokenizer.encode("🦙").ids
    assert len(token_ids) > 1, "the toy tokenizer splits the emoji's 4 UTF-8 bytes across tokens"
    seq, deltas = _stream(tokenizer, token_ids)
    # No replacement character ever goes out: nothing until the last byte arrives, then the whole character.
    assert deltas[:-1] == [""] * (len(token_ids) - 1)
    assert deltas[-1] == "🦙"


def test_each_step_decodes_only_the_new_token(tokenizer, monkeypatch):
    """Streaming never re-decodes the whole output (only a finished sequence's text is decoded whole, once)."""
    token_ids = tokenizer.encode("a long enough line of plain words to stream " * 3).ids
    full_decodes: list[int] = []
    real = OutputProcessor.detokenize
    monkeypatch.setattr(OutputProcessor, "detokenize", lambda self, seq: full_decodes.append(1) or real(self, seq))
    seq, deltas = _stream(tokenizer, token_ids + [tokenizer.encode("x").ids[0]])
    assert len(full_decodes) == 1, "one full decode, when the sequence finishes"
    assert "".join(deltas) == seq.text == tokenizer.decode(token_ids, skip_special_tokens=True) + "x"


def test_stop_string_found_in_incrementally_decoded_text(tokenizer):
    token_ids = tokenizer.encode("once upon a time there was a llama 🦙 in the hills").ids
    seq, deltas = _stream(tokenizer, token_ids, stop=["🦙"])
    assert seq.finish_reason == "stop" and seq.stop_reason == "🦙"
    assert "".join(deltas) == "once upon a time there was a llama "
