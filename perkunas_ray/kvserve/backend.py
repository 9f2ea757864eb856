"""What the HTTP app talks to: per-model frontends (tokenizer, limits, template) and streams of `OutputDelta`s.

`LocalServingBackend` runs `EngineService`s in-process (tests, tools); the Serve ingress implements the same
methods over deployment handles (deployments/ingress.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tokenizers import Tokenizer

from perkunas_ray.data.tokenizer import END_TOKEN
from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.kvserve.chat_input import ChatEncoder, split_rendered
from perkunas_ray.kvserve.errors import APIError, model_not_found
from perkunas_ray.kvserve.registry import Registry
from perkunas_ray.kvserve.service import EngineService
from perkunas_ray.kvserve.wire import ModelInfo, OutputDelta


class ModelFrontend:
    """The ingress-side view of one model: its tokenizer, context limit and chat template."""

    def __init__(self, info: ModelInfo) -> None:
        self.model_id = info.model_id
        self.max_model_len = info.max_model_len
        self.chat_template = info.chat_template
        self.vocab_size = info.vocab_size
        self.step = info.step
        self.tokenizer = Tokenizer.from_str(info.tokenizer_json)
        end = self.tokenizer.token_to_id(END_TOKEN)
        self.end_of_turn_ids = [] if end is None else [end]  # a chat reply ends where the template ends a turn
        self.chat_encoder = ChatEncoder(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """The chat's prompt token ids; message content is encoded as text (see chat_input)."""
        try:
            pieces = split_rendered(messages, add_generation_prompt, self.chat_template)
        except Exception as exc:  # noqa: BLE001 - a template error is the request's fault (its messages)
            raise APIError(400, f"cannot render the chat template: {exc}", param="messages") from None
        return self.chat_encoder.encode(pieces)


class ServingBackend:
    """Frontends cached per model; subclasses fetch engine info and stream requests."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.created = int(time.time())
        self._frontends: dict[str, ModelFrontend] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._steps: dict[str, int | None] = {}  # followed models: the step an engine replica last reported

    def model_ids(self) -> list[str]:
        return list(self.registry.models)

    def model_card(self, model_id: str) -> dict[str, Any]:
        spec = self.registry.models.get(model_id)
        if spec is None:
            raise model_not_found(model_id)
        frontend = self._frontends.get(model_id)
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "perkunas",
                "root": model_id, "parent": None, "engine": spec.engine,  # never the source path
                "max_model_len": frontend.max_model_len if frontend else spec.max_model_len,
                "kv_policy": spec.policy_dict(),
                "replicas": spec.autoscaling_config or spec.num_replicas,
                "step": self._steps.get(model_id, frontend.step if frontend else None), "follow": spec.follow}

    async def refresh(self, model_id: str) -> None:
        """Make sure the model's frontend is loaded and, for a model that follows a run, its served step is fresh."""
        await self.frontend(model_id)
        if self.registry.models[model_id].follow:
            self._steps[model_id] = (await self.stats(model_id)).get("step")

    async def frontend(self, model_id: str) -> ModelFrontend:
        if model_id not in self.registry.models:
            raise model_not_found(model_id)
        frontend = self._frontends.get(model_id)
        if frontend is None:
            lock = self._locks.setdefault(model_id, asyncio.Lock())
            async with lock:
                frontend = self._frontends.get(model_id)
                if frontend is None:
                    frontend = ModelFrontend(await self.fetch_info(model_id))
                    self._frontends[model_id] = frontend
        return frontend

    async def fetch_info(self, model_id: str) -> ModelInfo:
        raise NotImplementedError

    def stream(self, model_id: str, request_id: str, prompt_token_ids: list[int],
               params: SamplingParams) -> AsyncIterator[OutputDelta]:
        raise NotImplementedError

    async def complete(self, model_id: str, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> OutputDelta:
        """The whole request as one delta."""
        raise NotImplementedError

    async def stats(self, model_id: str) -> dict[str, Any]:
        raise NotImplementedError


class LocalServingBackend(ServingBackend):
    """Engines in this process (one EngineService per model)."""

    def __init__(self, registry: Registry, services: dict[str, EngineService]) -> None:
        super().__init__(registry)
        self.services = services

    async def fetch_info(self, model_id: str) -> ModelInfo:
        return self.services[model_id].info()

    def stream(self, model_id: str, request_id: str, prompt_token_ids: list[int],
               params: SamplingParams) -> AsyncIterator[OutputDelta]:
        return self.services[model_id].stream(request_id, prompt_token_ids, params)

    async def complete(self, model_id: str, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> OutputDelta:
        return await self.services[model_id].complete(request_id, prompt_token_ids, params)

    async def stats(self, model_id: str) -> dict[str, Any]:
        return await self.services[model_id].stats()
