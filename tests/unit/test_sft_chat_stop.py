"""A served chat reply stops at the template's end-of-turn token; a plain completion does not."""

from __future__ import annotations

import pytest

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.data.tokenizer import END_TOKEN
from perkunas_ray.kvserve import convert
from perkunas_ray.kvserve.backend import ModelFrontend
from perkunas_ray.kvserve.protocol import ChatCompletionRequest, CompletionRequest
from perkunas_ray.kvserve.registry import RequestLimits
from perkunas_ray.kvserve.wire import ModelInfo
from tests.unit.test_sft_data import small_tokenizer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def frontend(tmp_path_factory) -> ModelFrontend:
    tokenizer = small_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return ModelFrontend(ModelInfo("m", 64, 300, CHAT_TEMPLATE, tokenizer.read_text()))


def test_chat_stops_at_end_of_turn_and_completion_does_not(frontend):
    end_id = frontend.tokenizer.token_to_id(END_TOKEN)
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                 "stop_token_ids": [7]})
    prompt = convert.chat_prompt(chat, frontend)
    assert frontend.decode(prompt) == "<|user|>hi<|end|><|assistant|>"
    params = convert.sampling_params(chat, frontend, len(prompt), 8, RequestLimits())
    assert params.stop_token_ids == [7, end_id]
    plain = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert end_id not in convert.sampling_params(plain, frontend, 1, 8, RequestLimits()).stop_token_ids
