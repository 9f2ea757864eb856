"""`perkunas chat SOURCE`: an interactive chat with the native engine, streamed, with /commands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from perkunas_ray.chat_template import CHAT_TEMPLATE
from perkunas_ray.cli.generate import (
    add_engine_arguments,
    add_sampling_arguments,
    load_engine,
    sampling_from_args,
    stream_to,
)
from perkunas_ray.engine.interface import SamplingParams
from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.chat_input import ChatEncoder, split_rendered

HELP = ("commands: /temp X  /topk N  /topp X  /tokens N  /system TEXT  /reset  /settings  /help  /quit\n"
        "anything else is your next message")
END_OF_TURN = "<|end|>"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="chat interactively with a model (native engine, streamed)")
    add_engine_arguments(p)
    add_sampling_arguments(p, max_new_tokens=256)
    p.add_argument("--system", default="", help="a system message to start the conversation with")
    p.set_defaults(func=run)


class ChatSession:
    """The conversation and the sampling settings that the /commands change."""

    def __init__(self, engine: Any, params: SamplingParams, system: str = "") -> None:
        self.engine = engine
        self.params = params
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.num_turns = 0
        end_id = engine.tokenizer.token_to_id(END_OF_TURN)
        self.stop_token_ids = [end_id] if end_id is not None else []
        self.encoder = ChatEncoder(engine.tokenizer)

    def command(self, line: str) -> str | None:
        """Apply a /command; return a message to show, or None to quit."""
        name, _, value = line[1:].partition(" ")
        value = value.strip()
        setters = {"temp": ("temperature", float), "topk": ("top_k", int), "topp": ("top_p", float),
                   "tokens": ("max_tokens", int)}
        if name == "quit":
            return None
        if name == "help":
            return HELP
        if name == "reset":
            self.messages = []
            return "(conversation cleared)"
        if name == "system":
            self.system = value
            return f"(system message set: {value!r})"
        if name == "settings":
            p = self.params
            return f"(temp {p.temperature}, topk {p.top_k}, topp {p.top_p}, tokens {p.max_tokens})"
        if name in setters:
            field, kind = setters[name]
            try:
                new = dataclasses.replace(self.params, **{field: kind(value)})
            except (ValueError, ConfigError) as exc:
                return f"(not changed: {exc})"
            self.params = new
            return f"({field} = {getattr(new, field)})"
        return f"(unknown command /{name}; {HELP})"

    def prompt_token_ids(self) -> list[int]:
        """The conversation through the chat template; what the user typed stays text (a typed `<|system|>` is
        never a control token), as on the HTTP chat route."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        pieces = split_rendered(messages, True, self.engine.chat_template or CHAT_TEMPLATE)
        return self.encoder.encode(pieces)

    def reply(self, user_text: str, out: Any) -> str:
        """Send a user message, stream the assistant's answer to `out`, keep both in the history."""
        self.messages.append({"role": "user", "content": user_text})
        params = dataclasses.replace(self.params, stop_token_ids=self.stop_token_ids + list(self.params.stop_token_ids),
                                     stop=list(self.params.stop) + [END_OF_TURN])
        self.num_turns += 1
        final = asyncio.run(stream_to(self.engine, f"chat-{self.num_turns}", self.prompt_token_ids(), params, out))
        text = final.outputs[0].text
        self.messages.append({"role": "assistant", "content": text})
        return text


def run(args: argparse.Namespace) -> int:
    params = sampling_from_args(args)
    engine = load_engine(args)
    session = ChatSession(engine, params, args.system)
    print(f"chatting with {engine.name} ({HELP.splitlines()[0]})", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            message = session.command(line)
            if message is None:
                return 0
            print(message)
            continue
        sys.stdout.write("bot> ")
        session.reply(line, sys.stdout)
        sys.stdout.write("\n")
