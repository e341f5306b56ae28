"""Prometheus metrics with one registry per application, so tests and apps never share counters."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from services.api.errors import Handler


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "taskreaper_http_requests", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "taskreaper_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.submitted = Counter(
            "taskreaper_tasks_submitted", "Tasks accepted by the API", ["actor"],
            registry=self.registry)
        self.cancels = Counter(
            "taskreaper_cancel_requests", "Cancel requests that changed something",
            ["scope", "forced"], registry=self.registry)
        self.cancelled_tasks = Counter(
            "taskreaper_cancelled_tasks", "Tasks touched by cancel requests, by what happened",
            ["effect"], registry=self.registry)
        self.resumed = Counter(
            "taskreaper_tasks_resumed", "Tasks resumed through the API", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(request: web.Request) -> str:
    """The route's template, never the raw path: ids must not become label values."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = route_label(request)
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)

    return middleware


def metrics_handler(metrics: Metrics) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
