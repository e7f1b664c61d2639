"""The dashboard's web application (Starlette): two pages, their JSON, an event stream, /metrics.

Read-only by construction: every route is a GET and nothing here writes to the store or the broker.
The pages are static HTML and JavaScript from the package (``static/``, with the uPlot charting
library vendored, so no CDN is needed); they fetch ``/api/...`` and refetch when ``/api/events``
says something changed (server-sent events), which takes under a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

from anyio import to_thread
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import StoreError
from ..store import Store
from .auth import TokenMiddleware
from .live import LiveView
from .metrics import registry
from .queries import fingerprint, job_detail, jobs_overview

STATIC = Path(__file__).parent / "static"
POLL_S = 0.5  # how often the event stream looks for a change: pages update within a second
HEARTBEAT_S = 15.0
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"}


def create_app(store: Store, live: LiveView, token: str | None = None) -> Starlette:
    """The application for ``store`` and ``live``; with ``token``, every route wants it (auth.py)."""
    metrics = registry(store, live)

    async def page(request: Request) -> Response:
        name = "job.html" if "name" in request.path_params else "index.html"
        return FileResponse(STATIC / name, headers=SECURITY_HEADERS)

    async def api_jobs(request: Request) -> Response:
        jobs = await to_thread.run_sync(jobs_overview, store)
        for job in jobs:
            view = live.job(job["job"])
            job["live"] = None if view is None else {"online": view["online"], "round": view["round"]}
        return _json({"jobs": jobs, "broker": live.broker, "connected": live.connected, "now": time.time()})

    async def api_job(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            detail = await to_thread.run_sync(job_detail, store, name)
        except StoreError as exc:
            return _json({"error": exc.message}, status=404)
        return _json({**detail, "live": live.job(name), "broker": live.broker, "connected": live.connected,
                      "now": time.time()})

    async def events(request: Request) -> Response:
        return StreamingResponse(_changes(request, store, live), media_type="text/event-stream",
                                 headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"})

    async def prometheus(request: Request) -> Response:
        body = await to_thread.run_sync(generate_latest, metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", page),
        Route("/jobs/{name}", page),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/{name}", api_job),
        Route("/api/events", events),
        Route("/metrics", prometheus),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenMiddleware, token=token)])


async def _changes(request: Request, store: Store, live: LiveView) -> AsyncIterator[str]:
    """A ``change`` event whenever the store or the broker shows something new; a comment now and then
    keeps proxies from closing the stream."""
    seen = None
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        state = (live.version, await to_thread.run_sync(fingerprint, store))
        if state != seen:
            seen = state
            quiet_since = time.monotonic()
            yield f"event: change\ndata: {json.dumps({'version': live.version})}\n\n"
        elif time.monotonic() - quiet_since > HEARTBEAT_S:
            quiet_since = time.monotonic()
            yield ": still here\n\n"
        await asyncio.sleep(POLL_S)


def _json(data: object, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status, headers=SECURITY_HEADERS)
