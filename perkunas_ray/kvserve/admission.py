"""Admission of generation requests into one ingress replica: past its limit, an OpenAI-shaped 503 at once.

Serve's own queue limit (a deployment's max_queued_requests) rejects in Serve's proxy with a plain-text body,
which OpenAI clients cannot parse; so the ingress deployments are given room past this limit in Serve
(`serve_options.ADMISSION_HEADROOM`) and the limit is kept here, where the reply is ours.
"""

from __future__ import annotations

from perkunas_ray.kvserve.errors import overloaded
from perkunas_ray.kvserve.registry import Registry


class Slot:
    """One admitted request's place; given back once, by `release` or when the slot is dropped (a stream whose
    SSE generator was never started, because its client left first, runs no `finally`)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        if self._admission is not None:
            self._admission.in_flight -= 1
            self._admission = None

    def __del__(self) -> None:
        self.release()


class Admission:
    """Counts the generation requests in flight (a stream until its last event); `limit` 0: no limit."""

    def __init__(self, limit: int, retry_after_s: float, what: str) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.what = what
        self.in_flight = 0

    def enter(self) -> Slot:
        """Take a slot, or raise the 503 (with Retry-After) that tells the client to come back."""
        if self.limit and self.in_flight >= self.limit:
            raise overloaded(self.retry_after_s, self.what)
        self.in_flight += 1
        return Slot(self)

def registry_admission(registry: Registry) -> Admission:
    """The limit of one ingress replica: with the routes in the engine replica (`registry.combined`), the model's
    max_ongoing_requests + max_queued_requests (what its own deployment would take; -1 queued: no limit); else
    ingress.max_ongoing_requests."""
    if registry.combined:
        spec = next(iter(registry.models.values()))
        limit = 0 if spec.max_queued_requests == -1 else spec.max_ongoing_requests + spec.max_queued_requests
        return Admission(limit, spec.retry_after_s, "the model's engine replica is busy")
    ingress = registry.ingress
    return Admission(ingress.max_ongoing_requests, ingress.retry_after_s,
                     f"{ingress.max_ongoing_requests} requests in flight at this ingress replica")
