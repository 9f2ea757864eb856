"""Bearer-token auth: tokens from config or `KV_API_TOKENS="name:token,..."`, checked in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from perkunas_ray.errors import ConfigError

ENV_VAR = "KV_API_TOKENS"


TokenSpec = str | Mapping[str, str] | list[str] | None


def parse_tokens(spec: TokenSpec) -> dict[str, str]:
    """`"name:token,name2:token2"` (a bare `token` is named after its position), a list, or a mapping."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        items = []
        for i, part in enumerate(parts):
            part = str(part).strip()
            if not part:
                continue
            name, sep, token = part.partition(":")
            items.append((name.strip(), token.strip()) if sep else (f"token{i}", name.strip()))
    tokens: dict[str, str] = {}
    for name, token in items:
        if not isinstance(token, str) or not token:
            raise ConfigError(f"api token {name!r} is empty (expected name:token)")
        tokens[str(name)] = token
    return tokens


def tokens_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    return parse_tokens((environ if environ is not None else os.environ).get(ENV_VAR))


def resolve_tokens(given: TokenSpec, configured: TokenSpec) -> dict[str, str]:
    """The tokens in force: those `given` (a flag, an app arg), else KV_API_TOKENS, else the `configured` ones
    (the registry's). Read where the ingress runs, so a cluster's environment counts."""
    if given not in (None, ""):
        return parse_tokens(given)
    return tokens_from_env() or parse_tokens(configured)


class TokenAuth:
    """Checks `Authorization: Bearer TOKEN`; with no tokens configured every request passes."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = [(name, token.encode()) for name, token in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def describe(self) -> str:
        if not self.enabled:
            return f"auth is OFF: no API tokens configured (set {ENV_VAR}=name:token or api_tokens); " \
                   "every request is accepted"
        return f"auth is on: {len(self._tokens)} bearer token(s) ({', '.join(n for n, _ in self._tokens)})"

    def check(self, authorization: str | None) -> str | None:
        """The matching token's name, or None. Compares against every token so timing leaks nothing."""
        if not self.enabled:
            return "anonymous"
        if not authorization:
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        candidate = presented.strip().encode()
        found = None
        for name, token in self._tokens:
            if hmac.compare_digest(candidate, token) and found is None:
                found = name
        return found
