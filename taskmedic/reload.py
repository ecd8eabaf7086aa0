"""Reloading a running process's configuration, as Prometheus and Alertmanager do: on SIGHUP or
an (authenticated) `POST /-/reload`, the file is read and validated again; a new configuration
that does not load leaves the running one in place, logs why, and says so in
`taskmedic_config_last_reload_successful 0` until a reload succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from taskmedic.config.loader import ConfigError

T = TypeVar("T")
log = logging.getLogger("taskmedic.reload")


@dataclass(frozen=True)
class ReloadStatus:
    successful: bool
    last_success: float  # unix time of the last successful load (start-up counts)
    error: str | None = None


class Reloader(Generic[T]):
    """Loads `path` with `load` and hands a valid result to `apply`; one reload at a time."""

    def __init__(self, path: str, load: Callable[[str], T], apply: Callable[[T], Awaitable[None]]) -> None:
        self.path = path
        self._load = load
        self._apply = apply
        self._lock = asyncio.Lock()
        self.status = ReloadStatus(successful=True, last_success=time.time())

    async def reload(self) -> ReloadStatus:
        async with self._lock:
            try:
                # Loading reads files (config, playbooks, secrets): off the event loop.
                loaded = await asyncio.to_thread(self._load, self.path)
            except ConfigError as e:
                return self._failed("; ".join(e.problems))
            try:
                await self._apply(loaded)
            except Exception as e:  # the new config could not be put in place; the old one keeps running
                log.exception("reload: applying the new configuration failed")
                return self._failed(f"{type(e).__name__}: {e}")
            self.status = ReloadStatus(successful=True, last_success=time.time())
            log.info("configuration reloaded", extra={"config": self.path})
            return self.status

    def _failed(self, error: str) -> ReloadStatus:
        self.status = ReloadStatus(successful=False, last_success=self.status.last_success, error=error)
        log.error("reload failed; the running configuration stays in place",
                  extra={"config": self.path, "error": error})
        return self.status


RELOADER = web.AppKey("reloader", Reloader[Any])


async def reload_response(reloader: Reloader[Any]) -> web.Response:
    """The answer to `POST /-/reload`: 200 when the new configuration is in place, 500 (with the
    problems) when it is not — Prometheus answers the same way."""
    status = await reloader.reload()
    if status.successful:
        return web.json_response({"status": "reloaded"})
    return web.json_response({"status": "failed", "error": status.error}, status=500)
