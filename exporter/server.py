"""The exporter's HTTP side: /metrics renders the current snapshot, nothing more.

The running parts (config, connections, collectors) are one `Collecting` value, replaced whole
when the configuration is reloaded (SIGHUP, or `POST /-/reload` with `--web.enable-lifecycle`).
"""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.collectors import build_all
from exporter.config import ExporterConfig
from exporter.runtime import Runtime
from exporter.snapshot import Snapshot, concatenate
from taskmedic import __version__
from taskmedic.config import load
from taskmedic.connections import Connections
from taskmedic.reload import RELOADER, Reloader, reload_response
from taskmedic.selfmetrics import self_registry

log = logging.getLogger("taskmedic.exporter")


@dataclass
class Collecting:
    config: ExporterConfig
    connections: Connections
    runtime: Runtime

    @classmethod
    def start(cls, config: ExporterConfig, previous: Snapshot | None = None) -> Collecting:
        connections = Connections("taskmedic-exporter")
        runtime = Runtime(build_all(config, connections), previous)
        runtime.start()
        return cls(config, connections, runtime)

    async def stop(self) -> None:
        await self.runtime.stop()
        await self.connections.close()


@dataclass
class ExporterState:
    current: Collecting | None = None


STATE = web.AppKey("state", ExporterState)
SELF = web.AppKey("self_metrics", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.current is not None
    accept = request.headers.get("Accept")
    body, content_type = state.current.runtime.snapshot.render(accept)
    own = choose_encoder(accept or "")[0](request.app[SELF])  # process metrics: fresh at every scrape
    return web.Response(body=concatenate([body, own], content_type), headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.current is not None
    results = state.current.runtime.snapshot.results
    return web.json_response({"status": "ok", "version": __version__,
                              "collectors": {n: {"up": r.up, "error": r.error} for n, r in results.items()}})


async def index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.current is not None
    items = "".join(f"<li>{html.escape(n)} ({html.escape(s.profile or 'custom')})</li>"
                    for n, s in state.current.config.systems.items())
    page = (f"<!doctype html><html><head><title>taskmedic exporter</title></head><body>"
            f"<h1>taskmedic exporter {html.escape(__version__)}</h1>"
            f"<h2>Systems</h2><ul>{items or '<li>none</li>'}</ul>"
            f"<p><a href='metrics'>/metrics</a> &middot; <a href='healthz'>/healthz</a></p></body></html>")
    return web.Response(text=page, content_type="text/html")


async def post_reload(request: web.Request) -> web.Response:
    return await reload_response(request.app[RELOADER])


def make_app(config: ExporterConfig, path: str | None = None, lifecycle: bool = False) -> web.Application:
    """The exporter app. With `path`, SIGHUP reloads that file; with `lifecycle` too, so does
    `POST /-/reload` (off by default, as in Prometheus: the exporter has no credentials of its own)."""
    app = web.Application()
    state = ExporterState()
    app[STATE] = state

    async def apply(new: ExporterConfig) -> None:
        old = state.current
        assert old is not None
        if new.exporter.listen != old.config.exporter.listen:
            log.warning("reload: exporter.listen changed; the new address takes effect at the next restart")
        state.current = Collecting.start(new, old.runtime.snapshot)
        await old.stop()

    reloader = Reloader(path or "", lambda p: load(ExporterConfig, p), apply)
    app[RELOADER] = reloader
    app[SELF] = self_registry(lambda: reloader.status)

    async def collecting(app: web.Application) -> AsyncIterator[None]:
        state.current = Collecting.start(config)
        yield
        await state.current.stop()

    app.cleanup_ctx.append(collecting)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    if path is not None and lifecycle:
        app.router.add_post("/-/reload", post_reload)
    return app
