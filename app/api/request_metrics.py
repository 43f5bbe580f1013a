"""Request count and latency for Prometheus, by method, route template and status.

The route is the template the router matched (`/images/{image_id}`), never the raw path,
so ids do not become labels; a request no route matched is counted under "other".
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router records the route it matched in the (shared) scope.
            route = getattr(scope.get("route"), "path_format", None) or OTHER
            method = scope["method"] if scope["method"] in _METHODS else OTHER
            self.metrics.observe_request(method, route, status, time.perf_counter() - started)
