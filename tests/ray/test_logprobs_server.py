"""Log-probs from a real `perkunas serve` deployment (Ray Serve), read by the official openai client, equal within
1e-4 to the ones `perkunas eval`'s scorer computes in-process on the same model."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.ray.test_kvserve_server import PROMPT, TOKEN, client, server  # noqa: F401 - the served tiny model
from tests.unit.test_logprobs_http import eval_greedy_logprobs

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def same_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir equal to the served one: make_tiny_run_dir is deterministic (seeded weights, same tokenizer), and
    the server no longer shows its source path."""
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    return make_tiny_run_dir(tmp_path_factory.mktemp("same") / "tiny")


def server_tokens(server: str, **body: object) -> list[int]:  # noqa: F811
    resp = httpx.post(f"{server}/tokenize", json={"model": "tiny", **body},
                      headers={"Authorization": f"Bearer {TOKEN}"})
    resp.raise_for_status()
    return resp.json()["tokens"]


def test_completion_and_echo_logprobs_equal_eval(server, client, same_model: Path) -> None:  # noqa: F811
    prompt_ids = server_tokens(server, prompt=PROMPT)
    greedy, expected = eval_greedy_logprobs(same_model, prompt_ids, 4)
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kwargs).choices[0].logprobs
    assert np.allclose(plain.token_logprobs, expected[len(prompt_ids) - 1:], atol=1e-4)
    assert all(len(top) <= 3 for top in plain.top_logprobs)
    echoed = client.completions.create(echo=True, **kwargs).choices[0].logprobs
    assert echoed.token_logprobs[0] is None and len(echoed.tokens) == len(prompt_ids) + len(greedy)
    assert np.allclose(echoed.token_logprobs[1:], expected, atol=1e-4)
    pieces = list(client.completions.create(echo=True, stream=True, **kwargs))
    streamed = [lp for p in pieces if p.choices and p.choices[0].logprobs for lp in p.choices[0].logprobs.token_logprobs]
    assert streamed == echoed.token_logprobs


def test_chat_logprobs_equal_eval(server, client, same_model: Path) -> None:  # noqa: F811
    messages = [{"role": "user", "content": "Tell me a story about a cat."}]
    prompt_ids = server_tokens(server, messages=messages)
    greedy, expected = eval_greedy_logprobs(same_model, prompt_ids, 4)
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=2, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    assert len(content) == len(greedy)
    assert np.allclose([c.logprob for c in content], expected[len(prompt_ids) - 1:], atol=1e-4)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == c.logprob for c in content)  # greedy
