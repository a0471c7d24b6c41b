"""``GET /metrics``: Prometheus text, no API key (see :mod:`duly.engine.metrics` for the names)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from duly.engine.metrics import Metrics

router = APIRouter(tags=["health"])


def metrics_of(request: Request) -> Metrics:
    """The runtime's Metrics (the dispatcher's hooks), watching its database and thread."""
    rt = request.app.state.runtime
    m = getattr(rt, "metrics", None)
    if m is None:  # a runtime built without one: gauges only, from now on counters too
        m = getattr(request.app.state, "metrics", None)
        if m is None:
            m = request.app.state.metrics = Metrics()
            if getattr(rt.dispatcher, "metrics", None) is None:
                rt.dispatcher.metrics = m

    m.watch(rt.db, rt.engine.clock.now, rt.dispatcher_alive)
    m.watch_breakers(rt.dispatcher.breakers, rt.engine.clock.now)
    return m  # type: ignore[no-any-return]


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics: delivery outcomes, lateness, claim and send times (this process),
    pending deliveries and the due backlog (the database), and whether the dispatcher runs."""
    return Response(metrics_of(request).exposition(), media_type=CONTENT_TYPE_LATEST)
