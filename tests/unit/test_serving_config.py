"""Serving bounds live in the registry: request limits, engine queue bounds (Serve options), the rate limiter."""

from __future__ import annotations

import pytest

from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.errors import APIError
from perkunas_ray.kvserve.rate_limit import RateLimiter
from perkunas_ray.kvserve.registry import RequestLimits, parse_registry
from perkunas_ray.kvserve.serve_options import engine_options

pytestmark = pytest.mark.unit


def _registry(**top):
    return parse_registry({"models": {"m": {"source": "/x", **top.pop("model", {})}}, **top})


def test_defaults_are_bounded() -> None:
    registry = _registry()
    assert registry.limits.max_n == 16 and registry.limits.max_total_tokens == 65536
    options = engine_options(registry.models["m"])
    assert options["max_queued_requests"] == 64
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}


@pytest.mark.parametrize("top, named", [({"limits": {"max_n": 0}}, "limits.max_n"),
                                        ({"limits": {"max_stops": 3}}, "max_stops"),
                                        ({"limits": {"requests_per_minute": -1}}, "limits.requests_per_minute"),
                                        ({"model": {"max_queued_requests": 0}}, "max_queued_requests"),
                                        ({"model": {"retry_after_s": -2}}, "retry_after_s")])
def test_bad_bounds_are_named(top, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _registry(**top)


def test_rate_limiter_refills_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(RequestLimits(requests_per_minute=60, burst=2), clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(APIError) as info:
        limiter.check("a")
    assert info.value.status_code == 429 and info.value.headers["Retry-After"] == "1"
    limiter.check("b")  # another key has its own bucket
    now[0] = 1.0  # one request per second comes back
    limiter.check("a")


def test_rate_limiter_off_by_default() -> None:
    limiter = RateLimiter(RequestLimits())
    for _ in range(1000):
        limiter.check("a")
