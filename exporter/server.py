"""The exporter's HTTP side: /metrics renders the current snapshot, nothing more."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator

from aiohttp import web

from exporter.collectors import build_all
from exporter.config import ExporterConfig
from exporter.runtime import Runtime
from taskmedic import __version__
from taskmedic.connections import Connections

CONFIG = web.AppKey("config", ExporterConfig)
RUNTIME = web.AppKey("runtime", Runtime)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[RUNTIME].snapshot.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    results = request.app[RUNTIME].snapshot.results
    return web.json_response({"status": "ok", "version": __version__,
                              "collectors": {n: {"up": r.up, "error": r.error} for n, r in results.items()}})


async def index(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    items = "".join(f"<li>{html.escape(n)} ({html.escape(s.profile or 'custom')})</li>"
                    for n, s in config.systems.items())
    page = (f"<!doctype html><html><head><title>taskmedic exporter</title></head><body>"
            f"<h1>taskmedic exporter {html.escape(__version__)}</h1>"
            f"<h2>Systems</h2><ul>{items or '<li>none</li>'}</ul>"
            f"<p><a href='metrics'>/metrics</a> &middot; <a href='healthz'>/healthz</a></p></body></html>")
    return web.Response(text=page, content_type="text/html")


def make_app(config: ExporterConfig) -> web.Application:
    app = web.Application()
    app[CONFIG] = config

    async def collecting(app: web.Application) -> AsyncIterator[None]:
        connections = Connections("taskmedic-exporter")
        runtime = Runtime(build_all(config, connections))
        app[RUNTIME] = runtime
        runtime.start()
        yield
        await runtime.stop()
        await connections.close()

    app.cleanup_ctx.append(collecting)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    return app
