"""Listening on a hostile network: both processes serve HTTP through `listen`.

What aiohttp already bounds is configured, not rebuilt: its keep-alive timer starts when a
connection opens and closes the connection while no complete request head has arrived, so
`keepalive_timeout` is the header timeout (and the idle timeout); `lingering_time` bounds how
long an unread body is drained after the answer. aiohttp has no limit on the time a handler
waits for a body, nor on the number of connections, and asyncio logs every failed accept (file
descriptors exhausted) with a traceback: those three are added here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from taskmedic.config.model import HttpLimits

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
FILES_RESERVED = 64  # database and Redis pools, logs, the listening socket itself
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyTimeout(web.HTTPRequestTimeout):
    """The request body did not arrive within body_timeout; the connection is already closed."""


class RateLimitedLog:
    """At most one line per `interval` for each message, carrying how often it happened."""

    def __init__(self, log: logging.Logger, interval: float) -> None:
        self.log = log
        self.interval = interval
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def event(self, message: str, **fields: Any) -> None:
        count = self._counts.get(message, 0) + 1
        now = time.monotonic()
        last = self._last.get(message)
        if last is not None and now - last < self.interval:
            self._counts[message] = count
            return
        self._counts[message], self._last[message] = 0, now
        self.log.warning(message, extra={"occurrences": count, "per_seconds": self.interval, **fields})


def body_deadline(timeout: float) -> Any:
    """Middleware: a request whose body is not complete `timeout` seconds after its head is
    dropped (its handler's read raises BodyTimeout), so a slow sender cannot hold a handler."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.can_read_body:
            return await handler(request)
        timer = asyncio.get_running_loop().call_later(timeout, _expire, request, timeout)
        request.content.on_eof(timer.cancel)
        try:
            return await handler(request)
        finally:
            timer.cancel()

    return middleware


def _expire(request: web.Request, timeout: float) -> None:
    if request.content.is_eof():
        return
    request.content.set_exception(BodyTimeout(text=f"request body not received within {timeout:g} s"))
    if request.protocol is not None:
        request.protocol.force_close()


class _Busy(asyncio.Protocol):
    """A connection over the cap: a 503 and closed, before aiohttp ever sees it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_BUSY)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol, wrapped only to learn when the connection ends (aiohttp's server
    counts connections in connection_made, one loop step after accept: too late to refuse a burst)."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cap.open -= 1
        self._inner.connection_lost(exc)


class ConnectionCap:
    """Protocol factory: at most `limit` connections at once; the rest get a 503 and are closed."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int, refusals: RateLimitedLog) -> None:
        self.factory = factory
        self.limit = limit
        self.open = 0
        self._refusals = refusals

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self._refusals.event("connection refused: too many open connections", max_connections=self.limit)
            return _Busy()
        self.open += 1
        return _Counted(self.factory(), self)


def accept_errors_rate_limited(loop: asyncio.AbstractEventLoop, limited: RateLimitedLog) -> None:
    """asyncio (3.11) logs each accept() that fails for lack of file descriptors, with a traceback,
    and after one failure goes on calling accept() up to `backlog` times and schedules a retry for
    each: hundreds of log lines a second under a flood. Count them instead."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if "socket" in context and isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES:
            limited.event("cannot accept connections: out of file descriptors or memory; retrying",
                          error=error.strerror)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def runner(app: web.Application, limits: HttpLimits) -> web.AppRunner:
    app.middlewares.append(body_deadline(limits.body_timeout))
    return web.AppRunner(app, handle_signals=False, access_log=None,
                         keepalive_timeout=limits.header_timeout, lingering_time=limits.body_timeout)


async def listen(app_runner: web.AppRunner, host: str, port: int, limits: HttpLimits,
                 log: logging.Logger, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    """Serve the (set-up) runner's app on host:port within `limits`; close the returned server to stop.
    A TLS handshake gets `header_timeout` too (asyncio's default is 60 s)."""
    loop = asyncio.get_running_loop()
    limited = RateLimitedLog(log, limits.error_log_interval)
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files != resource.RLIM_INFINITY and limits.max_connections > open_files - FILES_RESERVED:
        log.warning("max_connections is above what the open-file limit leaves for connections: accept() will "
                    "fail before the cap refuses anything; raise the limit (LimitNOFILE=, ulimit -n) or lower "
                    "max_connections", extra={"max_connections": limits.max_connections, "open_files": open_files})
    accept_errors_rate_limited(loop, limited)
    server = app_runner.server
    assert server is not None, "runner.setup() first"
    return await loop.create_server(ConnectionCap(server, limits.max_connections, limited), host, port, ssl=tls,
                                    ssl_handshake_timeout=limits.header_timeout if tls is not None else None)
