"""/metrics, /health and the HTTP side of the audit trail and metrics.

`ops_routes()` adds /metrics (Prometheus text format, built on a thread) and
/health (readiness: 200 or 503 with a JSON body; /health/live: 200 whenever the
loop answers) to the DICOMweb app, or to a small app of their own on the
`[metrics]` port when the web server is off (`build_ops_app`).  They lie outside
the DICOMweb base path; AuthMiddleware lets loopback clients reach them without
credentials and asks everyone else for the configured ones.

`RequestMetrics` (ASGI middleware, outermost) counts every request by route
template, method and status and times it.  `WebOps` carries what the endpoints
need to write audit records: the sink, our AE title, the web user that
AuthMiddleware put in the request scope.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from engine.ops import audit as a
from engine.ops.audit_log import AuditSink, NullAudit
from engine.ops.health import HealthChecker
from engine.ops.metrics import CONTENT_TYPE, Metrics

#: The request-scope key AuthMiddleware sets: who made the request ("anonymous",
#: the Basic user name, or "token:" and the first 12 hex digits of the token's SHA-256).
WEB_USER = "pacs.web_user"
OPS_PATHS = frozenset({"/metrics", "/health", "/health/live"})


@dataclass
class WebOps:
    """The operations side of the web server; every part may be absent."""

    audit: AuditSink | None = None
    metrics: Metrics | None = None
    health: HealthChecker | None = None
    ae_title: str = "PACS"
    #: Serve /metrics (MetricsConfig.enabled).
    metrics_route: bool = True

    def __post_init__(self) -> None:
        if self.audit is None:
            self.audit = NullAudit()

    @property
    def auditing(self) -> bool:
        return self.audit.enabled

    def requestor(self, request: Request, role: dict | None = None) -> dict:
        client = request.client
        return a.participant(request.scope.get(WEB_USER, "anonymous"), True, role,
                             client.host if client else "")

    def us(self, request: Request, role: dict | None = None) -> dict:
        return a.participant(self.ae_title, False, role,
                             (request.url.hostname or "") if request is not None else "")

    def emit(self, event: str, event_id: dict, action: str, outcome: int, participants,
             objects=(), **kw) -> None:
        self.audit.emit(a.record(event, event_id, action, outcome, participants, objects,
                                 source_id=self.ae_title, **kw))


def ops_routes(ops: WebOps) -> list[Route]:
    routes = []
    if ops.metrics is not None and ops.metrics_route:
        metrics = ops.metrics

        async def metrics_endpoint(request: Request) -> Response:
            body = await asyncio.to_thread(metrics.exposition)
            return Response(body, 200, media_type=CONTENT_TYPE,
                            headers={"Cache-Control": "no-store"})

        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    if ops.health is not None:
        health = ops.health

        async def health_endpoint(request: Request) -> Response:
            ready, body = await health.check()
            return JSONResponse(body, 200 if ready else 503,
                                headers={"Cache-Control": "no-store"})

        async def live_endpoint(request: Request) -> Response:
            return JSONResponse({"status": "ok", "live": True},
                                headers={"Cache-Control": "no-store"})

        routes.append(Route("/health", health_endpoint, methods=["GET"]))
        routes.append(Route("/health/live", live_endpoint, methods=["GET"]))
    return routes


class RequestMetrics:
    """ASGI middleware: pacs_web_requests_total and pacs_web_request_seconds per route."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        box = [500, None]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                box[0], box[1] = message["status"], time.monotonic()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ended = box[1] if box[1] is not None else time.monotonic()
            self.metrics.web_request(route_label(scope), scope.get("method", ""), box[0],
                                     ended - started)


def route_label(scope) -> str:
    """The route template a request matched (bounded label values), or "unmatched"."""
    app = scope.get("app")
    partial = None
    probe = {"type": "http", "path": scope.get("path", ""), "method": scope.get("method", ""),
             "root_path": scope.get("root_path", "")}
    for route in getattr(app, "routes", ()):
        try:
            match, _ = route.matches(probe)
        except Exception:  # noqa: BLE001 - a route that cannot judge this path
            continue
        if match is Match.FULL:
            return getattr(route, "path", "") or "?"
        if match is Match.PARTIAL and partial is None:
            partial = getattr(route, "path", "") or "?"
    return partial or "unmatched"


def build_ops_app(ops: WebOps) -> Starlette:
    """/metrics and /health alone (the [metrics] port, when [web] is disabled)."""
    middleware = [Middleware(RequestMetrics, metrics=ops.metrics)] if ops.metrics else []
    return Starlette(routes=ops_routes(ops), middleware=middleware)


__all__ = ["OPS_PATHS", "RequestMetrics", "WEB_USER", "WebOps", "build_ops_app", "ops_routes",
           "route_label"]
