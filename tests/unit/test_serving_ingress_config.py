"""Where the routes run (ingress.mode), the pacing that follows from it, and the ingress's admission count."""

from __future__ import annotations

import gc

import pytest

from perkunas_ray.errors import ConfigError
from perkunas_ray.kvserve.admission import Admission, registry_admission
from perkunas_ray.kvserve.errors import APIError
from perkunas_ray.kvserve.registry import parse_registry
from perkunas_ray.kvserve.serve_options import ADMISSION_HEADROOM, combined_options, ingress_options


def _registry(models: dict, ingress: dict | None = None):
    return parse_registry({"models": models, **({"ingress": ingress} if ingress else {})})


ONE = {"a": {"source": "/runs/a"}}


@pytest.mark.parametrize(("models", "ingress", "combined"), [
    (ONE, None, True),
    (ONE, {"mode": "separate"}, False),
    ({"a": {"source": "/runs/a", "num_replicas": 2}}, None, False),
    ({"a": {"source": "/runs/a", "autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}}, None, False),
    ({"a": {"source": "/runs/a"}, "b": {"source": "/runs/b"}}, None, False),
    (ONE, {"num_replicas": 2}, False),
])
def test_auto_combines_one_model_on_one_replica_only(models, ingress, combined) -> None:
    assert _registry(models, ingress).combined is combined


def test_combined_refuses_what_needs_a_separate_ingress() -> None:
    with pytest.raises(ConfigError, match="ingress.mode: combined .* one model"):
        _registry({"a": {"source": "/runs/a", "num_replicas": 2}}, {"mode": "combined"})
    with pytest.raises(ConfigError, match="ingress.mode"):
        _registry(ONE, {"mode": "fused"})


def test_pacing_defaults_follow_where_the_routes_run() -> None:
    spec = _registry(ONE).models["a"]
    assert spec.pacing(combined=True) == (0.0, 0.0), "each engine step goes out as it comes"
    assert spec.pacing(combined=False) == (0.05, 100.0), "coalesced behind a separate ingress"
    spec = _registry({"a": {"source": "/runs/a", "stream_interval_ms": 20, "stream_messages_per_s": 50}}).models["a"]
    assert spec.pacing(combined=True) == (0.02, 50), "explicit fields win"


def test_admission_limits_follow_the_mode() -> None:
    reg = _registry({"a": {"source": "/runs/a", "max_ongoing_requests": 3, "max_queued_requests": 4,
                           "retry_after_s": 7}})
    admission = registry_admission(reg)
    assert (admission.limit, admission.retry_after_s) == (7, 7)
    assert combined_options(reg.models["a"])["max_ongoing_requests"] == 7 + ADMISSION_HEADROOM
    assert combined_options(reg.models["a"])["max_queued_requests"] == -1, "Serve never rejects in plain text"
    env = combined_options(reg.models["a"])["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}, "the routes run on Serve's own loop"
    reg = _registry(ONE, {"mode": "separate", "max_ongoing_requests": 5, "retry_after_s": 2})
    assert registry_admission(reg).limit == 5
    assert ingress_options(reg.ingress)["max_ongoing_requests"] == 5 + ADMISSION_HEADROOM
    unbounded = _registry({"a": {"source": "/runs/a", "max_queued_requests": -1}})
    assert registry_admission(unbounded).limit == 0


def test_admission_refuses_past_its_limit_and_a_dropped_slot_comes_back() -> None:
    admission = Admission(2, 3.0, "busy")
    first, second = admission.enter(), admission.enter()
    with pytest.raises(APIError) as refused:
        admission.enter()
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "3"}
    first.release()
    first.release()  # once only
    assert admission.in_flight == 1
    del second  # a stream whose generator never ran: no finally, the slot still comes back
    gc.collect()
    assert admission.in_flight == 0
